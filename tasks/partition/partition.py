"""Partition stage: METIS k-way clusters of the snapshot's graph, and the graph in cluster order.

Cluster-GCN (Chiang et al. 2019) trains on batches made of whole clusters, so this stage renumbers
the nodes cluster by cluster (``perm[new_id] = snapshot_id``, a stable sort by cluster) and writes
the symmetric adjacency in the new ids as CSR, in the format of :mod:`storage.arrays`.
:func:`layout_node_data` puts features, labels and split in the same order.

Memory: the graph is held once as an int64 CSR (the type METIS uses, so pymetis does not copy it);
the edge list is freed before METIS runs, and the permuted CSR is built a slice of rows at a time.
METIS runs in a child process (:mod:`tasks.partition.metis`; pymetis holds the GIL for the whole
call), which reads the CSR from files while this process holds none of it, logs the elapsed time
while it waits, and kills the child if the stage is interrupted or cancelled.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pymetis

from storage.arrays import ClusterGraph, CSRRows, has_sparse_x, open_array, open_csr, write_arrays
from storage.atomic import publish_dir, reserve, write_bytes
from storage.fingerprint import fingerprint_value
from storage.snapshot import EDGES, SPLIT_NAMES, SPLIT_TRAIN, read_edges, read_nodes
from storage.store import (
    FeaturesRef,
    NodeDataRef,
    PartitionRef,
    SnapshotRef,
    Store,
    reusable,
    make_manifest,
    read_manifest,
    write_manifest,
)
from tasks.config import PartitionConfig, PipelineConfig
from tasks.errors import InputError

log = logging.getLogger(__name__)

PARTITION_VERSION = 1
NODE_DATA_VERSION = 2  # 2: sparse features laid out as CSR
# Entries of the permuted CSR built per slice of rows (bounds the temporaries to ~100 MB).
_PERMUTE_CHUNK = 1 << 21
# Bytes of feature rows gathered per slice by layout_node_data.
_LAYOUT_CHUNK_BYTES = 64 << 20
# Largest node count whose (row, col) pairs fit an int64 key row * N + col.
_MAX_KEY_NODES = 3_037_000_499


# -- CSR --------------------------------------------------------------------------------------
def _index_dtype(num_nodes: int) -> np.dtype:
    """int32 for node ids below 2**31, else int64."""
    return np.dtype(np.int32) if num_nodes < 2**31 else np.dtype(np.int64)


def _check_ids(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> None:
    """Raise ValueError unless every endpoint is in ``[0, num_nodes)``."""
    if len(src) != len(dst):
        raise ValueError(f"src and dst differ in length ({len(src)} != {len(dst)})")
    if len(src) == 0:
        return
    lo = min(int(src.min()), int(dst.min()))
    hi = max(int(src.max()), int(dst.max()))
    if lo < 0 or hi >= num_nodes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"edge endpoint {bad} is outside the graph's {num_nodes} node ids")


def build_csr(
    src: np.ndarray, dst: np.ndarray, num_nodes: int, *, index_dtype: npt.DTypeLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric CSR ``(indptr int64, indices)`` of undirected edges; sorted rows, no loops or repeats.

    Each edge is stored in both directions; self-loops and repeated edges (in either direction) are
    dropped. ``indices`` is int32 below 2**31 nodes, else int64, unless ``index_dtype`` says
    otherwise (int64 lets pymetis use the arrays without a copy). One int64 key ``row * N + col``
    per directed entry is sorted in place and reduced to the column in place: the peak is 8 bytes
    per entry for the keys plus the int32 copy (none for int64 output), beside the caller's edges.
    """
    if num_nodes > _MAX_KEY_NODES:
        raise ValueError(f"{num_nodes} nodes exceed the {_MAX_KEY_NODES} that int64 keys can address")
    src, dst = np.asarray(src), np.asarray(dst)
    _check_ids(src, dst, num_nodes)
    out_dtype = np.dtype(index_dtype) if index_dtype is not None else _index_dtype(num_nodes)
    loops = src == dst
    if loops.any():
        src, dst = src[~loops], dst[~loops]
    del loops
    key = _directed_keys(src, dst, num_nodes)
    key.sort()
    key = _drop_repeats(key)
    row_starts = np.arange(num_nodes + 1, dtype=np.int64)
    row_starts *= num_nodes
    indptr = np.searchsorted(key, row_starts).astype(np.int64, copy=False)
    del row_starts
    if num_nodes:
        np.remainder(key, num_nodes, out=key)
    indices = key.astype(out_dtype, copy=False)
    return indptr, indices


def _directed_keys(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> np.ndarray:
    """``row * N + col`` for both directions of every edge, built in one int64 array."""
    m = len(src)
    key = np.empty(2 * m, dtype=np.int64)
    for half, (row, col) in enumerate(((src, dst), (dst, src))):
        part = key[half * m : (half + 1) * m]
        part[:] = row
        np.multiply(part, num_nodes, out=part)
        np.add(part, col, out=part)
    return key


def _drop_repeats(sorted_key: np.ndarray) -> np.ndarray:
    """Sorted keys without repeats (returns the input itself when it has none)."""
    if len(sorted_key) < 2:
        return sorted_key
    keep = np.empty(len(sorted_key), dtype=bool)
    keep[0] = True
    np.not_equal(sorted_key[1:], sorted_key[:-1], out=keep[1:])
    if keep.all():
        return sorted_key
    return sorted_key[keep]


def _row_chunks(indptr: np.ndarray, max_entries: int) -> Iterator[tuple[int, int]]:
    """Row ranges ``[a, b)`` of about ``max_entries`` entries each (one long row may exceed it)."""
    n = len(indptr) - 1
    nnz = int(indptr[-1])
    cuts = np.searchsorted(indptr, np.arange(max_entries, nnz, max_entries), side="right") - 1
    bounds = np.unique(np.concatenate([[0], cuts, [n]]).astype(np.int64))
    return zip(bounds[:-1].tolist(), bounds[1:].tolist())


def _permute_csr(
    indptr: np.ndarray,
    indices: np.ndarray,
    perm: np.ndarray,
    node_cluster: np.ndarray,
    out_dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray, int]:
    """CSR of ``P A P^T`` (row ``r`` = old row ``perm[r]``, columns renumbered, sorted) and the cut.

    Works on slices of new rows: gathers each row's old segment (repeat + arange), maps the
    columns through the inverse permutation, counts entries between clusters, and sorts each row
    by a key ``local_row * N + col``. Returns ``(indptr, indices, cut_edges)``.
    """
    n = len(perm)
    inv = np.empty(n, dtype=_index_dtype(n))
    inv[perm] = np.arange(n, dtype=inv.dtype)
    new_deg = np.diff(indptr)[perm]
    new_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(new_deg, out=new_indptr[1:])
    new_indices = np.empty(int(new_indptr[-1]), dtype=out_dtype)
    cut_entries = 0
    for a, b in _row_chunks(new_indptr, _PERMUTE_CHUNK):
        lo, hi = int(new_indptr[a]), int(new_indptr[b])
        counts = new_deg[a:b]
        pos = np.repeat(indptr[perm[a:b]] - (new_indptr[a:b] - lo), counts)
        pos += np.arange(hi - lo, dtype=np.int64)
        cols = inv[indices[pos]]
        del pos
        key = np.repeat(np.arange(a, b, dtype=np.int64), counts)
        cut_entries += int(np.count_nonzero(node_cluster[key] != node_cluster[cols]))
        key -= a
        key *= n
        key += cols
        del cols
        key.sort()
        np.remainder(key, n, out=key)
        new_indices[lo:hi] = key
        del key
    return new_indptr, new_indices, cut_entries // 2


# -- METIS ------------------------------------------------------------------------------------
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


METIS_HEARTBEAT_SECONDS = 30.0


def _run_metis(workdir: Path, num_nodes: int, nnz: int, num_parts: int, seed: int, level: int) -> tuple[np.ndarray, int]:
    """METIS k-way assignment (int32 per node) and METIS' own edge cut, computed by
    :mod:`tasks.partition.metis` from ``workdir/indptr.npy`` and ``workdir/indices.npy``."""
    log.log(level, "METIS running: %d parts, %d nodes, %d adjacency entries", num_parts, num_nodes, nnz)
    start = time.perf_counter()
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "GRAPHPIPE_METIS_PARENT": str(os.getpid())}  # the child dies with this process
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.partition.metis", str(workdir), str(num_parts), str(seed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=package_root,
    )
    try:
        while True:
            try:
                _, stderr = proc.communicate(timeout=METIS_HEARTBEAT_SECONDS)
                break
            except subprocess.TimeoutExpired:
                log.log(level, "METIS running: %.0f s elapsed (%d parts, %d nodes)", time.perf_counter() - start,
                        num_parts, num_nodes)
    finally:
        if proc.poll() is None:  # interrupted or cancelled: do not leave METIS running
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-2000:]
        why = f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0 else f"exit status {proc.returncode}"
        if "No space left on device" in tail:  # the child's own writes hit a full disk
            raise OSError(errno.ENOSPC, f"No space left on device (METIS writing into {workdir})")
        raise RuntimeError(f"METIS failed ({why}) on {num_nodes} nodes, {num_parts} parts: {tail or 'no message'}")
    if not (workdir / "result.json").exists():
        raise RuntimeError(f"METIS ended without a result on {num_nodes} nodes, {num_parts} parts")
    assignment = np.load(workdir / "assignment.npy")
    edge_cut = int(json.loads((workdir / "result.json").read_text())["edge_cut"])
    log.log(level, "METIS done in %.1f s: edge cut %d", time.perf_counter() - start, edge_cut)
    if len(assignment) != num_nodes or (num_nodes and (assignment.min() < 0 or assignment.max() >= num_parts)):
        raise RuntimeError(f"METIS returned an invalid assignment for {num_nodes} nodes and {num_parts} parts")
    return assignment, edge_cut


# -- statistics -------------------------------------------------------------------------------
def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each row of a count matrix (0 for an empty row)."""
    counts = np.atleast_2d(counts).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    terms = np.zeros_like(p)
    np.log2(p, out=terms, where=p > 0)
    return -(p * terms).sum(axis=1)


def _label_stats(assignment: np.ndarray, labels: np.ndarray, num_parts: int) -> dict[str, Any] | None:
    """Per-cluster label counts (k x C) and their summary; ``None`` for an unlabeled graph."""
    labeled = labels >= 0
    if not labeled.any():
        return None
    num_classes = int(labels.max()) + 1
    flat = assignment[labeled].astype(np.int64) * num_classes + labels[labeled]
    counts = np.bincount(flat, minlength=num_parts * num_classes).reshape(num_parts, num_classes)
    per_cluster = counts.sum(axis=1)
    has = per_cluster > 0
    entropy = _entropy_bits(counts)
    majority = np.divide(counts.max(axis=1), per_cluster, out=np.zeros(num_parts), where=has)
    return {
        "num_classes": num_classes,
        "labeled_nodes": int(labeled.sum()),
        "counts": counts.tolist(),
        "global_entropy_bits": float(_entropy_bits(counts.sum(axis=0))[0]),
        "mean_cluster_entropy_bits": float(entropy[has].mean()) if has.any() else 0.0,
        "mean_majority_fraction": float(majority[has].mean()) if has.any() else 0.0,
        "clusters_without_labels": int((~has).sum()),
    }


def _split_stats(assignment: np.ndarray, split: np.ndarray, num_parts: int) -> dict[str, Any]:
    """Train / val / test nodes per cluster (compact lists) and clusters with no training node."""
    per = {name: np.bincount(assignment[split == code], minlength=num_parts) for code, name in SPLIT_NAMES.items()}
    return {
        **{name: c.tolist() for name, c in per.items()},
        "clusters_without_train": int((per[SPLIT_NAMES[SPLIT_TRAIN]] == 0).sum()),
    }


def _size_stats(cluster_ptr: np.ndarray) -> dict[str, Any]:
    """Min / max / mean cluster size, balance (max / mean) and the number of empty clusters."""
    sizes = np.diff(cluster_ptr)
    mean = float(sizes.mean())
    return {
        "cluster_size_min": int(sizes.min()),
        "cluster_size_max": int(sizes.max()),
        "cluster_size_mean": mean,
        "balance": float(sizes.max() / mean) if mean else 0.0,
        "empty_clusters": int((sizes == 0).sum()),
    }


# -- the stage --------------------------------------------------------------------------------
def _snapshot_num_nodes(snapshot: SnapshotRef) -> int:
    """``counts.num_nodes`` of the snapshot's manifest."""
    try:
        return int(read_manifest(snapshot.path)["counts"]["num_nodes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{snapshot.path}: no readable snapshot manifest with counts.num_nodes ({e})") from None


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


def _read_csr(snapshot: SnapshotRef, num_nodes: int, seconds: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """The snapshot's adjacency as an int64 CSR (METIS' own index type); the edge list is freed."""
    with _timed(seconds, "read_edges"):
        src, dst = read_edges(snapshot.path)
    with _timed(seconds, "build_csr"):
        try:
            indptr, indices = build_csr(src, dst, num_nodes, index_dtype=pymetis.zero_copy_dtype())
        except ValueError as e:  # ids outside the manifest's node count
            raise InputError(f"{Path(snapshot.path) / EDGES}: {e}") from None
        del src, dst
        pa.default_memory_pool().release_unused()
    return indptr, indices


def _cluster_order(assignment: np.ndarray, num_parts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``perm`` (stable sort by cluster), ``cluster_ptr`` and ``node_cluster`` of an assignment."""
    perm = np.argsort(assignment, kind="stable")
    sizes = np.bincount(assignment, minlength=num_parts)
    cluster_ptr = np.zeros(num_parts + 1, dtype=np.int64)
    np.cumsum(sizes, out=cluster_ptr[1:])
    node_cluster = np.repeat(np.arange(num_parts, dtype=np.int32), sizes)
    return perm, cluster_ptr, node_cluster


def _summary(cluster_ptr: np.ndarray, nnz: int, cut: int, metis_cut: int) -> dict[str, Any]:
    """Sizes, edge cut (ours and METIS') and balance: the manifest's counts and stats.json's head."""
    num_edges = nnz // 2
    return {
        "num_nodes": int(cluster_ptr[-1]),
        "num_parts": len(cluster_ptr) - 1,
        "nnz": nnz,
        "num_edges": num_edges,
        "edge_cut": cut,
        "metis_edge_cut": metis_cut,
        "edge_cut_fraction": cut / num_edges if num_edges else 0.0,
        **_size_stats(cluster_ptr),
    }


def _node_stats(snapshot: SnapshotRef, assignment: np.ndarray, num_parts: int) -> dict[str, Any]:
    """Label distribution and split counts per cluster, from the snapshot's node table."""
    labels, split = read_nodes(snapshot.path)
    if len(labels) != len(assignment):
        raise InputError(
            f"{snapshot.path}: nodes.parquet has {len(labels)} rows, the manifest says {len(assignment)} nodes"
        )
    return {
        "labels": _label_stats(assignment, labels, num_parts),
        "split": _split_stats(assignment, split, num_parts),
    }


def _build_partition(
    tmp: Path, snapshot: SnapshotRef, num_nodes: int, num_parts: int, seed: int, level: int,
    seconds: dict[str, float],
) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """Write the partition's arrays into ``tmp``; returns ``(files, summary, stats)``.

    Each array is written as soon as it is final and freed when no longer needed.
    """
    indptr, indices = _read_csr(snapshot, num_nodes, seconds)
    nnz = len(indices)
    log.log(level, "CSR built: %d nodes, %d entries in %.1f s", num_nodes, nnz, seconds["build_csr"])
    if num_parts == 1:
        assignment, metis_cut = np.zeros(num_nodes, dtype=np.int32), 0
    else:
        metis_dir = tmp / ".metis"
        metis_dir.mkdir()
        try:
            with _timed(seconds, "write"):
                write_arrays(metis_dir, indptr=indptr, indices=indices)
                del indptr, indices  # METIS' process reads them; this one holds none of it meanwhile
            with _timed(seconds, "metis"):
                assignment, metis_cut = _run_metis(metis_dir, num_nodes, nnz, num_parts, seed, level)
            with _timed(seconds, "read_edges"):
                indptr, indices = (np.load(metis_dir / f"{n}.npy") for n in ("indptr", "indices"))
        finally:
            shutil.rmtree(metis_dir, ignore_errors=True)
    with _timed(seconds, "permute"):
        perm, cluster_ptr, node_cluster = _cluster_order(assignment, num_parts)
    with _timed(seconds, "write"):
        files = write_arrays(
            tmp, perm=perm, assignment=assignment, cluster_ptr=cluster_ptr, node_cluster=node_cluster
        )
    with _timed(seconds, "permute"):
        new_indptr, new_indices, cut = _permute_csr(indptr, indices, perm, node_cluster, _index_dtype(num_nodes))
        del indptr, indices, perm, node_cluster
    log.log(level, "permuted CSR built in %.1f s", seconds["permute"])
    with _timed(seconds, "write"):
        files += write_arrays(tmp, indptr=new_indptr, indices=new_indices)
    del new_indptr, new_indices
    with _timed(seconds, "stats"):
        summary = _summary(cluster_ptr, nnz, cut, metis_cut)
        stats = {**summary, "cluster_sizes": np.diff(cluster_ptr).tolist(),
                 **_node_stats(snapshot, assignment, num_parts)}
    return files, summary, stats


def partition_graph(snapshot: SnapshotRef, config: PipelineConfig, *, progress: bool = False) -> PartitionRef:
    """METIS-partition the snapshot's graph and publish it in cluster order (cached by content)."""
    level = logging.INFO if (progress or config.progress) else logging.DEBUG
    num_nodes = _snapshot_num_nodes(snapshot)
    num_parts = resolve_num_parts(num_nodes, config.partition, where=snapshot.path)
    seed = config.partition.seed
    fp = partition_fingerprint(snapshot, num_parts, seed)
    final = Store(config.store).partition_dir(snapshot.name, fp)
    ref = PartitionRef(path=str(final), fingerprint=fp, num_parts=num_parts)
    if reusable(final, "partition"):
        log.info("partition %s: cache hit (%s)", fp, final)
        return replace(ref, reused=True)

    start = time.perf_counter()
    seconds: dict[str, float] = {}
    with publish_dir(final) as tmp:
        files, summary, stats = _build_partition(tmp, snapshot, num_nodes, num_parts, seed, level, seconds)
        seconds["total"] = time.perf_counter() - start
        seconds = {k: round(v, 3) for k, v in seconds.items()}
        stats["seconds"] = seconds
        write_bytes(tmp / "stats.json", json.dumps(stats, separators=(",", ":")).encode() + b"\n")
        manifest = make_manifest(
            "partition",
            fp,
            params={"num_parts": num_parts, "seed": seed, "format": PARTITION_VERSION,
                    "requested": config.partition.model_dump(mode="json")},
            inputs={"snapshot": {"path": snapshot.path, "fingerprint": snapshot.fingerprint}},
            counts={**summary, **{f"seconds_{k}": v for k, v in seconds.items()}},
            files=[*files, "stats.json"],
        )
        write_manifest(tmp, manifest)
    log.log(
        level, "partition %s: %d parts, edge cut %d (%.1f%%), balance %.3f, %.1f s", fp, num_parts,
        summary["edge_cut"], 100 * summary["edge_cut_fraction"], summary["balance"], seconds["total"],
    )
    return ref


# -- node data in cluster order ---------------------------------------------------------------
def node_data_fingerprint(partition: PartitionRef, features: FeaturesRef, snapshot: SnapshotRef) -> str:
    """Cache key of a node-data layout: the partition, the features, the snapshot, the format."""
    return fingerprint_value(
        partition.fingerprint, features.fingerprint, snapshot.fingerprint, {"node_data_format": NODE_DATA_VERSION}
    )


def _permute_rows_to_file(x: np.ndarray, perm: np.ndarray, path: Path) -> None:
    """Write ``x[perm]`` as a float32 ``.npy`` file, a slice of rows at a time."""
    n, d = len(perm), int(x.shape[1])
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    reserve(path)
    step = max(1, _LAYOUT_CHUNK_BYTES // max(1, 4 * d))
    for a in range(0, n, step):
        out[a : a + step] = x[perm[a : a + step]]
    out.flush()
    del out


def _permute_csr_to_files(x: CSRRows, perm: np.ndarray, directory: Path) -> list[str]:
    """Write the rows ``x[perm]`` of sparse features as the ``x_*`` CSR files, a slice of rows at a
    time into memory-mapped outputs (memory: one slice, not the matrix)."""
    n, d = len(perm), x.shape[1]
    src_ptr = np.asarray(x.indptr, dtype=np.int64)
    counts = np.diff(src_ptr)[perm]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    np.save(directory / "x_indptr.npy", indptr)
    np.save(directory / "x_shape.npy", np.asarray([n, d], dtype=np.int64))
    indices = np.lib.format.open_memmap(directory / "x_indices.npy", mode="w+", dtype=np.int32, shape=(nnz,))
    data = np.lib.format.open_memmap(directory / "x_data.npy", mode="w+", dtype=np.float32, shape=(nnz,))
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
    return ["x_indptr.npy", "x_indices.npy", "x_data.npy", "x_shape.npy"]


def layout_node_data(
    partition: PartitionRef, snapshot: SnapshotRef, features: FeaturesRef, config: PipelineConfig
) -> NodeDataRef:
    """Features, labels and split in the partition's node order (cached by content)."""
    fp = node_data_fingerprint(partition, features, snapshot)
    final = Store(config.store).node_data_dir(snapshot.name, fp)
    ref = NodeDataRef(path=str(final), fingerprint=fp, partition=partition)
    if reusable(final, "node data"):
        log.info("node data %s: cache hit (%s)", fp, final)
        return replace(ref, reused=True)
    start = time.perf_counter()
    perm = open_array(partition.path, "perm", mmap=False)
    sparse = has_sparse_x(features.path)
    x = open_csr(features.path) if sparse else open_array(features.path, "x")
    labels, split = read_nodes(snapshot.path)
    n = len(perm)
    if x.ndim != 2 or x.shape[0] != n or len(labels) != n:
        raise InputError(
            f"{features.path}: {'x_*.npy' if sparse else 'x.npy'} has shape {x.shape} and {snapshot.path} has "
            f"{len(labels)} nodes; the partition {partition.path} has {n}"
        )
    with publish_dir(final) as tmp:
        if sparse:
            files = _permute_csr_to_files(x, perm, tmp)
            if (Path(features.path) / "x_shift.npy").exists():
                shutil.copyfile(Path(features.path) / "x_shift.npy", tmp / "x_shift.npy")
                files.append("x_shift.npy")
        else:
            _permute_rows_to_file(x, perm, tmp / "x.npy")
            files = ["x.npy"]
        y_new, split_new = labels[perm], split[perm]
        files += write_arrays(tmp, y=y_new, split=split_new)
        counts = {
            "num_nodes": n,
            "num_features": int(x.shape[1]),
            **({"feature_nnz": x.nnz} if sparse else {}),
            "labeled_nodes": int((y_new >= 0).sum()),
            **{f"{name}_nodes": int((split_new == code).sum()) for code, name in SPLIT_NAMES.items()},
            "seconds_total": round(time.perf_counter() - start, 3),
        }
        inputs = {
            "partition": {"path": partition.path, "fingerprint": partition.fingerprint},
            "features": {"path": features.path, "fingerprint": features.fingerprint},
            "snapshot": {"path": snapshot.path, "fingerprint": snapshot.fingerprint},
        }
        manifest = make_manifest(
            "node_data", fp, params={"format": NODE_DATA_VERSION}, inputs=inputs, counts=counts, files=files
        )
        write_manifest(tmp, manifest)
    del x
    log.info("node data %s: %d nodes x %d features laid out", fp, counts["num_nodes"], counts["num_features"])
    return ref


def load_cluster_graph(node_data: NodeDataRef) -> ClusterGraph:
    """The partitioned graph with its node data, memory-mapped."""
    return ClusterGraph.open(node_data.partition.path, node_data.path)
