"""Partition stage: METIS k-way clusters of the snapshot's graph, and the graph in cluster order.

Cluster-GCN (Chiang et al. 2019) trains on batches made of whole clusters, so this stage renumbers
the nodes cluster by cluster (``perm[new_id] = snapshot_id``, a stable sort by cluster) and
publishes the symmetric adjacency in the new ids as CSR (the ``partition`` output, read back by
:class:`storage.arrays.ClusterGraph`) with its statistics (:mod:`tasks.partition.stats`).
:mod:`tasks.partition.layout` puts features, labels and split in the same order.

Memory: the graph is held once as an int64 CSR (:mod:`tasks.partition.csr`; the type METIS uses,
so pymetis does not copy it); the edge list is freed before METIS runs, and the permuted CSR is
built a slice of rows at a time. METIS runs in a child process (:mod:`tasks.partition.metis`),
which reads the CSR from scratch files while this process holds none of it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from storage.arrays import array_path, write_arrays
from storage.fingerprint import fingerprint_value
from storage.snapshot import EDGES, NODES, read_edges, read_nodes
from storage.store import PartitionRef, SnapshotRef, Store, output_at
from tasks.config import PartitionConfig
from tasks.errors import InputError
from tasks.partition.csr import build_csr, node_index_dtype, permute_csr
from tasks.partition.metis import run_metis
from tasks.partition.stats import node_stats, summary

if TYPE_CHECKING:
    from storage.outputs import Output, Writer

log = logging.getLogger(__name__)
PROGRESS = logging.getLogger("graphpipe.progress")

PARTITION_VERSION = 1


def resolve_num_parts(num_nodes: int, config: PartitionConfig, *, where: str = "") -> int:
    """The number of clusters: ``config.num_parts`` or ``ceil(num_nodes / target_cluster_size)``."""
    suffix = f" ({where})" if where else ""
    if num_nodes < 1:
        raise InputError(f"the graph has no nodes to partition{suffix}")
    if config.num_parts == "auto":
        return max(1, math.ceil(num_nodes / config.target_cluster_size))
    k = int(config.num_parts)
    if k < 1:
        raise InputError(f"partition.num_parts={k} must be at least 1{suffix}")
    if k > num_nodes:
        raise InputError(f"partition.num_parts={k} is more than the graph's {num_nodes} nodes{suffix}")
    return k


def partition_fingerprint(snapshot: SnapshotRef, num_parts: int, seed: int) -> str:
    """Cache key of a partition: the snapshot's content, the resolved parameters, the format."""
    return fingerprint_value(
        snapshot.fingerprint, {"num_parts": num_parts, "seed": seed}, {"partition_format": PARTITION_VERSION}
    )


@contextmanager
def _timed(seconds: dict[str, float], step: str) -> Iterator[None]:
    """Add the wall time of the block to ``seconds[step]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - start


def _cluster_order(assignment: np.ndarray, num_parts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``perm`` (stable sort by cluster), ``cluster_ptr`` and ``node_cluster`` of an assignment."""
    perm = np.argsort(assignment, kind="stable")
    sizes = np.bincount(assignment, minlength=num_parts)
    cluster_ptr = np.zeros(num_parts + 1, dtype=np.int64)
    np.cumsum(sizes, out=cluster_ptr[1:])
    node_cluster = np.repeat(np.arange(num_parts, dtype=np.int32), sizes)
    return perm, cluster_ptr, node_cluster


def partition_graph(snapshot: SnapshotRef, config: PartitionConfig, store: Store) -> PartitionRef:
    """METIS-partition the snapshot's graph and publish it in cluster order (cached by content).

    Args:
        snapshot: the ingested snapshot.
        config: the ``partition`` section (number of parts or target cluster size, seed).
        store: the store receiving the ``partition`` output (the snapshot is read where its reference points).

    Returns the :class:`PartitionRef` (``reused=True`` when a complete output already existed; a
    damaged one is logged and rebuilt). Progress (METIS' elapsed time, the steps) is logged at
    INFO on ``graphpipe.progress``. Raises InputError for a number of parts that does not fit
    the graph, or edges outside the snapshot's node count; nothing is published on an error.
    """
    source = output_at(snapshot.path)  # the input: wherever its reference says it is
    num_nodes = _snapshot_num_nodes(source)
    num_parts = resolve_num_parts(num_nodes, config, where=snapshot.path)
    fp = partition_fingerprint(snapshot, num_parts, config.seed)
    out = store.output(snapshot.name, "partition", fp)
    ref = PartitionRef(path=out.location, fingerprint=fp, num_parts=num_parts)
    if out.reusable("partition"):
        log.info("partition %s: cache hit (%s)", fp, out.location)
        return replace(ref, reused=True)
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    params = {"num_parts": num_parts, "seed": config.seed, "format": PARTITION_VERSION,
              "requested": config.model_dump(mode="json")}
    inputs = {"snapshot": {"path": snapshot.path, "fingerprint": snapshot.fingerprint}}
    with store.publish(out, params=params, inputs=inputs) as w:
        head, stats = _build_partition(w, source, num_nodes, num_parts, config.seed, seconds)
        seconds["total"] = time.perf_counter() - start
        seconds = {k: round(v, 3) for k, v in seconds.items()}
        w.json("stats", {**stats, "seconds": seconds}, compact=True)
        w.counts.update({**head, **{f"seconds_{k}": v for k, v in seconds.items()}})
    PROGRESS.info(
        "partition %s: %d parts, edge cut %d (%.1f%%), balance %.3f, %.1f s", fp, num_parts,
        head["edge_cut"], 100 * head["edge_cut_fraction"], head["balance"], seconds["total"],
    )
    return ref


def _snapshot_num_nodes(source: Output) -> int:
    """``counts.num_nodes`` of the snapshot's manifest."""
    try:
        return int(source.manifest()["counts"]["num_nodes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{source.location}: no readable snapshot manifest with counts.num_nodes ({e})") from None


def _read_csr(source: Output, num_nodes: int, seconds: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """The snapshot's adjacency as an int64 CSR (METIS' own index type); the edge list is freed."""
    import pymetis

    with _timed(seconds, "read_edges"):
        src, dst = read_edges(source)
    with _timed(seconds, "build_csr"):
        try:
            indptr, indices = build_csr(src, dst, num_nodes, index_dtype=pymetis.zero_copy_dtype())
        except ValueError as e:  # ids outside the manifest's node count
            raise InputError(f"{source.location}/{EDGES}: {e}") from None
        del src, dst
        pa.default_memory_pool().release_unused()
    return indptr, indices


def _metis(w: Writer, source: Output, num_nodes: int, num_parts: int, seed: int,
           seconds: dict[str, float]) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """``(assignment, METIS' edge cut, indptr, indices)`` of the snapshot's graph: the CSR goes to
    scratch files that the METIS child reads, while this process holds none of it; it is read
    back afterwards."""
    indptr, indices = _read_csr(source, num_nodes, seconds)
    nnz = len(indices)
    PROGRESS.info("CSR built: %d nodes, %d entries in %.1f s", num_nodes, nnz, seconds["build_csr"])
    if num_parts == 1:
        return np.zeros(num_nodes, dtype=np.int32), 0, indptr, indices
    with w.scratch() as scratch:
        with _timed(seconds, "write"):
            write_arrays(scratch, indptr=indptr, indices=indices)
            del indptr, indices  # METIS' process reads them; this one holds none of it meanwhile
        with _timed(seconds, "metis"):
            assignment, metis_cut = run_metis(array_path(scratch, "indptr"), array_path(scratch, "indices"),
                                              array_path(scratch, "assignment"), num_nodes, nnz, num_parts, seed)
        with _timed(seconds, "read_edges"):
            indptr, indices = (np.load(array_path(scratch, n)) for n in ("indptr", "indices"))
    return assignment, metis_cut, indptr, indices


def _build_partition(w: Writer, source: Output, num_nodes: int, num_parts: int, seed: int,
                     seconds: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the partition's arrays; returns ``(summary, stats)``. Each array is written as soon
    as it is final and freed when no longer needed."""
    assignment, metis_cut, indptr, indices = _metis(w, source, num_nodes, num_parts, seed, seconds)
    nnz = len(indices)
    with _timed(seconds, "permute"):
        perm, cluster_ptr, node_cluster = _cluster_order(assignment, num_parts)
    with _timed(seconds, "write"):
        for name, arr in (("perm", perm), ("assignment", assignment), ("cluster_ptr", cluster_ptr),
                          ("node_cluster", node_cluster)):
            w.array(name, arr)
    with _timed(seconds, "permute"):
        new_indptr, new_indices, cut = permute_csr(indptr, indices, perm, node_cluster, node_index_dtype(num_nodes))
        del indptr, indices, perm, node_cluster
    PROGRESS.info("permuted CSR built in %.1f s", seconds["permute"])
    with _timed(seconds, "write"):
        w.array("indptr", new_indptr)
        w.array("indices", new_indices)
    del new_indptr, new_indices
    with _timed(seconds, "stats"):
        head = summary(cluster_ptr, nnz, cut, metis_cut)
        labels, split = read_nodes(source)
        if len(labels) != len(assignment):
            raise InputError(f"{source.location}: {NODES} has {len(labels)} rows, the manifest says "
                             f"{len(assignment)} nodes")
        stats = {**head, "cluster_sizes": np.diff(cluster_ptr).tolist(),
                 **node_stats(assignment, labels, split, num_parts)}
    return head, stats
