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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from storage.arrays import array_path, write_arrays
from storage.latest import set_latest
from storage.fingerprint import fingerprint_value
from storage.snapshot import EDGES, NODES, read_edges, read_nodes
from storage.store import PartitionRef, SnapshotRef, Store, output_at
from tasks.config import PartitionConfig
from tasks.errors import InputError
from tasks.partition.csr import build_csr, node_index_dtype, permute_csr
from tasks.partition.extend import Previous, extension_problem, lineage_of, previous_partition
from tasks.partition.metis import run_metis
from tasks.partition.refresh import PartitionQuality, needs_full_metis, quality, refresh_assignment
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


def partition_fingerprint(snapshot: SnapshotRef, num_parts: int, seed: int, *, refreshed_from: str | None = None,
                          refresh_cap: float | None = None) -> str:
    """Cache key of a partition: the snapshot's content, the resolved parameters, the format; for
    a refreshed partition also the mode, the partition it was refreshed from and the size cap, so
    that a full METIS run of the same snapshot never reuses a refreshed one (and vice versa)."""
    params: dict[str, Any] = {"num_parts": num_parts, "seed": seed}
    if refreshed_from is not None:
        params.update(mode="refreshed", refreshed_from=refreshed_from, refresh_cap=refresh_cap)
    return fingerprint_value(snapshot.fingerprint, params, {"partition_format": PARTITION_VERSION})


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
    """Partition the snapshot's graph and publish it in cluster order (cached by content).

    When the snapshot extends the graph's most recent partition's snapshot (same settings; old
    node ids a prefix of the new ones; every old edge kept: :mod:`tasks.partition.extend`), the
    partition is *refreshed*: old nodes keep their clusters, new nodes are placed by
    :func:`tasks.partition.refresh.refresh_assignment`, the number of parts stays the previous
    one's. A full METIS run is made instead when the refresh is off (``partition.refresh``), the
    snapshot does not extend the previous one, or :func:`~tasks.partition.refresh.needs_full_metis`
    says so (``partition.max_refreshes``, ``max_cut_increase``, ``max_imbalance``). The mode, its
    reason and the quality of this partition and of the METIS run it descends from (``base_*``)
    are recorded under ``lineage`` in the manifest and the ``stats`` entry.

    Args:
        snapshot: the ingested snapshot.
        config: the ``partition`` section (number of parts or target cluster size, seed, refresh).
        store: the store receiving the ``partition`` output (the snapshot is read where its reference points).

    Returns the :class:`PartitionRef` (``reused=True`` when a complete output already existed; a
    damaged one is logged and rebuilt). Progress (METIS' elapsed time, the steps) is logged at
    INFO on ``graphpipe.progress``. Raises InputError for a number of parts that does not fit
    the graph, or edges outside the snapshot's node count; nothing is published on an error.
    """
    source = output_at(snapshot.path)  # the input: wherever its reference says it is
    num_nodes = _snapshot_num_nodes(source)
    previous, reason = previous_partition(snapshot.name, config, store)
    if previous is not None and previous.snapshot_fingerprint == snapshot.fingerprint:
        ref = _reuse(previous.output)  # this very snapshot's latest partition, refreshed or full
        log.info("partition %s: cache hit, the latest partition of this snapshot (%s)", ref.fingerprint, ref.path)
        return ref
    if previous is not None:
        edges = _EdgesOnce(source)  # read once: the extension check, then the refresh's CSR
        reason = extension_problem(previous, source, num_nodes, new_edges=edges.pair) or ""
        if not reason:
            ref, reason = _refresh(snapshot, source, num_nodes, config, store, previous, edges)
            if ref is not None:
                set_latest(store, store.open(ref.path))
                return ref
        edges.take()  # not held while METIS runs
    ref = _full(snapshot, source, num_nodes, config, store, reason)
    set_latest(store, store.open(ref.path))
    return ref


def partition_lineage(ref: PartitionRef) -> dict[str, Any]:
    """How partition ``ref`` was made: ``mode`` (``full``|``refreshed``), ``reason``, its
    ``edge_cut_fraction``/``imbalance``, those of the full METIS run it descends from
    (``base_*``) and the ``refreshes`` since that run (from its manifest)."""
    out = output_at(ref.path)
    manifest = out.manifest()
    counts = manifest.get("counts", {})
    return {"edge_cut_fraction": counts.get("edge_cut_fraction"), "imbalance": counts.get("balance"),
            **lineage_of(manifest)}


def _reuse(out: Output) -> PartitionRef:
    """The reference of an existing partition output (a cache hit)."""
    manifest = out.manifest()
    lineage = lineage_of(manifest)
    return PartitionRef(path=out.location, fingerprint=out.key, num_parts=int(manifest["params"]["num_parts"]),
                        reused=True, mode=lineage["mode"], reason=lineage["reason"])


def _full(snapshot: SnapshotRef, source: Output, num_nodes: int, config: PartitionConfig, store: Store,
          reason: str) -> PartitionRef:
    """A full METIS partition (or the cached one of the same snapshot and settings)."""
    num_parts = resolve_num_parts(num_nodes, config, where=snapshot.path)
    fp = partition_fingerprint(snapshot, num_parts, config.seed)
    out = store.output(snapshot.name, "partition", fp)
    if out.reusable("partition"):
        log.info("partition %s: cache hit (%s)", fp, out.location)
        return _reuse(out)
    lineage = {"mode": "full", "reason": reason, "refreshes": 0, "base_fingerprint": fp}
    return _publish(snapshot, source, out, num_parts, config, lineage, _metis_assignment(config.seed))


def _refresh(snapshot: SnapshotRef, source: Output, num_nodes: int, config: PartitionConfig, store: Store,
             previous: Previous, edges: _EdgesOnce | None = None) -> tuple[PartitionRef | None, str]:
    """The refreshed partition, or ``(None, why a full METIS run is due instead)``."""
    num_parts = previous.num_parts
    fp = partition_fingerprint(snapshot, num_parts, config.seed, refreshed_from=previous.output.key,
                               refresh_cap=config.refresh_cap)
    out = store.output(snapshot.name, "partition", fp)
    if out.reusable("partition"):
        log.info("partition %s: cache hit (%s)", fp, out.location)
        return _reuse(out), ""
    seconds: dict[str, float] = {}
    indptr, indices = _read_csr(source, num_nodes, seconds, edges)
    with _timed(seconds, "refresh"):
        cap = max(1, math.ceil(config.refresh_cap * previous.largest_cluster))
        old = previous.output.array("assignment", mmap=False)
        assignment = refresh_assignment(indptr, indices, old, num_parts, cap)
        q = quality(indptr, indices, assignment, num_parts)
    base = previous.lineage
    refreshes = int(base["refreshes"]) + 1
    why = needs_full_metis(q, PartitionQuality(base["base_edge_cut_fraction"], base["base_imbalance"]),
                           refreshes=refreshes, max_refreshes=config.max_refreshes,
                           max_cut_increase=config.max_cut_increase, max_imbalance=config.max_imbalance)
    if why is not None:
        log.info("partition refresh of %s rejected: %s", snapshot.path, why)
        return None, why
    placed = num_nodes - len(old)
    lineage = {**{k: v for k, v in base.items() if k.startswith("base_")}, "mode": "refreshed",
               "reason": (f"the snapshot extends the previous partition's: {placed} new nodes placed; edge cut "
                          f"{q.edge_cut_fraction:.4f} (last full METIS run {base['base_edge_cut_fraction']:.4f}), "
                          f"refresh {refreshes} of partition.max_refreshes={config.max_refreshes}"),
               "refreshes": refreshes, "refreshed_from": previous.output.key}
    given = (assignment, None, indptr, indices)
    return _publish(snapshot, source, out, num_parts, config, lineage, lambda *_: given, seconds), ""


def _metis_assignment(seed: int) -> Callable[..., tuple[np.ndarray, int | None, np.ndarray, np.ndarray]]:
    """The assignment step of a full run: METIS (see :func:`_metis`)."""
    def step(w: Writer, source: Output, num_nodes: int, num_parts: int, seconds: dict[str, float]):
        return _metis(w, source, num_nodes, num_parts, seed, seconds)
    return step


def _publish(snapshot: SnapshotRef, source: Output, out: Output, num_parts: int, config: PartitionConfig,
             lineage: dict[str, Any], assign: Callable[..., tuple[np.ndarray, int | None, np.ndarray, np.ndarray]],
             seconds: dict[str, float] | None = None) -> PartitionRef:
    """Build the partition from ``assign``'s assignment (METIS or a refresh; the same code after
    it) and publish it with its lineage; returns its reference."""
    start = time.perf_counter()
    seconds = dict(seconds or {})
    before = sum(seconds.values())  # a refresh's reading and placement, done before the publish
    num_nodes = _snapshot_num_nodes(source)
    params = {"num_parts": num_parts, "seed": config.seed, "format": PARTITION_VERSION,
              "requested": config.model_dump(mode="json")}
    inputs = {"snapshot": {"path": snapshot.path, "fingerprint": snapshot.fingerprint}}
    with out.store.publish(out, params=params, inputs=inputs) as w:
        assignment, metis_cut, indptr, indices = assign(w, source, num_nodes, num_parts, seconds)
        head, stats = _build_partition(w, source, assignment, metis_cut, indptr, indices, num_parts, seconds)
        lineage = _complete_lineage(lineage, head)
        seconds["total"] = before + time.perf_counter() - start
        seconds = {k: round(v, 3) for k, v in seconds.items()}
        w.json("stats", {**stats, "lineage": lineage, "seconds": seconds}, compact=True)
        w.counts.update({**head, **{f"seconds_{k}": v for k, v in seconds.items()}})
        w.extra["lineage"] = lineage
    PROGRESS.info(
        "partition %s (%s): %d parts, edge cut %d (%.1f%%), balance %.3f, %.1f s", out.key, lineage["mode"], num_parts,
        head["edge_cut"], 100 * head["edge_cut_fraction"], head["balance"], seconds["total"],
    )
    return PartitionRef(path=out.location, fingerprint=out.key, num_parts=num_parts, mode=lineage["mode"],
                        reason=lineage["reason"])


def _complete_lineage(lineage: dict[str, Any], head: dict[str, Any]) -> dict[str, Any]:
    """The lineage with this partition's quality; a full run is its own base."""
    own = {"edge_cut_fraction": head["edge_cut_fraction"], "imbalance": head["balance"]}
    if lineage["mode"] == "full":
        own.update(base_edge_cut_fraction=head["edge_cut_fraction"], base_imbalance=head["balance"])
    return {**lineage, **own}


def _snapshot_num_nodes(source: Output) -> int:
    """``counts.num_nodes`` of the snapshot's manifest."""
    try:
        return int(source.manifest()["counts"]["num_nodes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{source.location}: no readable snapshot manifest with counts.num_nodes ({e})") from None


class _EdgesOnce:
    """A snapshot's edge list read once (its reading time kept) and handed on to one consumer:
    :meth:`take` drops this reference, so the consumer alone decides when the arrays are freed."""

    def __init__(self, source: Output) -> None:
        start = time.perf_counter()
        self.pair: tuple[np.ndarray, np.ndarray] | None = read_edges(source)
        self.seconds = time.perf_counter() - start

    def take(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The edge list (``None`` once taken); this object no longer holds it."""
        pair, self.pair = self.pair, None
        return pair


def _read_csr(source: Output, num_nodes: int, seconds: dict[str, float],
              edges: _EdgesOnce | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The snapshot's adjacency as an int64 CSR (METIS' own index type); the edge list is freed.
    ``edges``: the edge list already read (taken from it), else read here."""
    import pymetis

    pair = edges.take() if edges is not None else None
    if pair is not None:
        seconds["read_edges"] = seconds.get("read_edges", 0.0) + edges.seconds
        src, dst = pair
        del pair
    else:
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


def _build_partition(w: Writer, source: Output, assignment: np.ndarray, metis_cut: int | None, indptr: np.ndarray,
                     indices: np.ndarray, num_parts: int, seconds: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the partition's arrays from the assignment (METIS' or a refresh's: the same code after
    it); returns ``(summary, stats)``. Each array is written as soon as it is final and freed
    when no longer needed."""
    num_nodes = len(assignment)
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
