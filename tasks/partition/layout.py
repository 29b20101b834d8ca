"""Layout stage: normalized features, labels and split in the partition's node order.

Cluster-GCN reads a batch's clusters as contiguous row ranges, so the node data is permuted once
(``new row r`` = snapshot node ``perm[r]``) and published as the ``node_data`` output: dense
features a slice of rows at a time into a memory-mapped array, sparse ones (CSR) a slice of rows
at a time into memory-mapped ``indices``/``data`` (memory: one slice, not the matrix).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from storage.arrays import X_SHIFT, ClusterGraph, CSRRows, has_sparse_x, new_csr, open_array, open_csr
from storage.fingerprint import fingerprint_value
from storage.snapshot import SPLIT_NAMES, read_nodes
from storage.store import FeaturesRef, NodeDataRef, PartitionRef, SnapshotRef, Store, output_at
from tasks.errors import InputError

if TYPE_CHECKING:
    from storage.outputs import Writer

log = logging.getLogger(__name__)

NODE_DATA_VERSION = 2  # 2: sparse features laid out as CSR
# Bytes of feature rows gathered per slice.
_LAYOUT_CHUNK_BYTES = 64 << 20


def node_data_fingerprint(partition: PartitionRef, features: FeaturesRef, snapshot: SnapshotRef) -> str:
    """Cache key of a node-data layout: the partition, the features, the snapshot, the format."""
    return fingerprint_value(
        partition.fingerprint, features.fingerprint, snapshot.fingerprint, {"node_data_format": NODE_DATA_VERSION}
    )


def layout_node_data(partition: PartitionRef, snapshot: SnapshotRef, features: FeaturesRef, store: Store) -> NodeDataRef:
    """Publish features, labels and split in the partition's node order (cached by content).

    Args:
        partition: the partition whose order (``perm``) to follow.
        snapshot: the snapshot the partition and the features were made from (labels, split).
        features: the normalized features (dense or sparse; a sparse standardization's shift is kept).
        store: the store receiving the ``node_data`` output (inputs are read where their references point).

    Returns the :class:`NodeDataRef` (``reused=True`` when a complete output already existed; a
    damaged one is logged and rebuilt). Raises InputError when the inputs' node counts differ.
    """
    fp = node_data_fingerprint(partition, features, snapshot)
    out = store.output(snapshot.name, "node_data", fp)
    ref = NodeDataRef(path=out.location, fingerprint=fp, partition=partition)
    if out.reusable("node data"):
        log.info("node data %s: cache hit (%s)", fp, out.location)
        return replace(ref, reused=True)
    start = time.perf_counter()
    feats = output_at(features.path)
    perm = open_array(output_at(partition.path), "perm", mmap=False)
    sparse = has_sparse_x(feats)
    x = open_csr(feats) if sparse else open_array(feats, "x")
    labels, split = read_nodes(output_at(snapshot.path))
    n = len(perm)
    if x.ndim != 2 or x.shape[0] != n or len(labels) != n:
        raise InputError(
            f"{features.path}: the features have shape {x.shape} and {snapshot.path} has "
            f"{len(labels)} nodes; the partition {partition.path} has {n}"
        )
    inputs = {name: {"path": r.path, "fingerprint": r.fingerprint}
              for name, r in (("partition", partition), ("features", features), ("snapshot", snapshot))}
    with store.publish(out, params={"format": NODE_DATA_VERSION}, inputs=inputs) as w:
        if sparse:
            _permute_csr_rows(x, perm, w)
            if feats.has(X_SHIFT):
                w.copy_from(feats, X_SHIFT)
        else:
            _permute_rows(x, perm, w)
        w.counts.update(_write_labels(w, labels[perm], split[perm], x, sparse))
        w.counts["seconds_total"] = round(time.perf_counter() - start, 3)
    del x
    log.info("node data %s: %d nodes x %d features laid out", fp, w.counts["num_nodes"], w.counts["num_features"])
    return ref


def _write_labels(w: Writer, y: np.ndarray, split: np.ndarray, x: Any, sparse: bool) -> dict[str, Any]:
    """Write labels and split (already in partition order); returns the manifest's counts."""
    w.array("y", y)
    w.array("split", split)
    return {
        "num_nodes": len(y),
        "num_features": int(x.shape[1]),
        **({"feature_nnz": x.nnz} if sparse else {}),
        "labeled_nodes": int((y >= 0).sum()),
        **{f"{name}_nodes": int((split == code).sum()) for code, name in SPLIT_NAMES.items()},
    }


def _permute_rows(x: np.ndarray, perm: np.ndarray, w: Writer) -> None:
    """Write ``x[perm]`` as the float32 features ``x``, a slice of rows at a time."""
    n, d = len(perm), int(x.shape[1])
    out = w.new_array("x", (n, d), np.float32)
    step = max(1, _LAYOUT_CHUNK_BYTES // max(1, 4 * d))
    for a in range(0, n, step):
        out[a : a + step] = x[perm[a : a + step]]
    out.flush()
    del out


def _permute_csr_rows(x: CSRRows, perm: np.ndarray, w: Writer) -> None:
    """Write the rows ``x[perm]`` of sparse features as CSR, a slice of rows at a time into
    memory-mapped outputs (memory: one slice, not the matrix)."""
    n = len(perm)
    src_ptr = np.asarray(x.indptr, dtype=np.int64)
    counts = np.diff(src_ptr)[perm]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    indices, data = new_csr(w, indptr, x.shape[1])
    step = max(1, _LAYOUT_CHUNK_BYTES // max(1, 8 * max(1, nnz // max(n, 1))))
    for a in range(0, n, step):
        rows = perm[a : a + step]
        starts, stops = src_ptr[rows], src_ptr[rows + 1]
        sizes = stops - starts
        pos = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()), dtype=np.int64)
        lo, hi = int(indptr[a]), int(indptr[min(a + step, n)])
        indices[lo:hi] = np.asarray(x.indices)[pos] if len(pos) else pos
        data[lo:hi] = np.asarray(x.data)[pos] if len(pos) else pos
    for arr in (indices, data):
        arr.flush()
    del indices, data


def load_cluster_graph(node_data: NodeDataRef) -> ClusterGraph:
    """The partitioned graph with its node data, memory-mapped."""
    return ClusterGraph.open(output_at(node_data.partition.path), output_at(node_data.path))
