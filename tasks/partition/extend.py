"""Whether tonight's snapshot can be partitioned by refreshing the graph's last partition.

The partition stage (:mod:`tasks.partition.partition`) refreshes (:mod:`tasks.partition.refresh`)
instead of running METIS when the graph's most recent partition (found through
:func:`storage.latest.latest`) was made with the same settings and its snapshot is a prefix of
the new one: the same node ids in the same internal-id order, new nodes appended after them, and
every old edge still present. This module answers that question cheaply (numpy on the sorted edge
keys) and carries the lineage a refresh descends from (the last full METIS run's quality and the
refreshes since).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from storage.latest import latest
from storage.snapshot import read_edges, read_node_ids
from storage.store import Store, output_at
from tasks.config import PartitionConfig

if TYPE_CHECKING:
    from storage.outputs import Output

log = logging.getLogger(__name__)

SETTINGS = ("num_parts", "target_cluster_size", "seed")  # what a refresh must share with its base


@dataclass(frozen=True)
class Previous:
    """The graph's most recent partition, as a refresh starts from it."""

    output: Output
    snapshot_location: str
    snapshot_fingerprint: str
    num_parts: int
    largest_cluster: int
    lineage: dict[str, Any]


def lineage_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The refresh lineage recorded in a partition manifest; a partition made before refreshes
    existed is a full METIS run that is its own base."""
    counts = manifest.get("counts", {})
    own = {"mode": "full", "reason": "", "refreshes": 0, "base_fingerprint": manifest.get("key", ""),
           "base_edge_cut_fraction": float(counts.get("edge_cut_fraction", 0.0)),
           "base_imbalance": float(counts.get("balance", 1.0))}
    return {**own, **manifest.get("lineage", {})}


def previous_partition(graph: str, config: PartitionConfig, store: Store) -> tuple[Previous | None, str]:
    """The partition to refresh, or ``(None, why a full METIS run is due)``."""
    if not config.refresh:
        return None, "partition.refresh=false"
    out = latest(store, graph, "partition")
    if out is None:
        return None, "no previous partition of this graph"
    try:
        manifest = out.manifest()
        requested = manifest["params"]["requested"]
        snap = manifest["inputs"]["snapshot"]
        prev = Previous(out, str(snap["path"]), str(snap["fingerprint"]), int(manifest["params"]["num_parts"]),
                        int(manifest["counts"]["cluster_size_max"]), lineage_of(manifest))
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"the previous partition {out.location} has no usable manifest ({e})"
    mine = config.model_dump(mode="json")
    changed = [k for k in SETTINGS if requested.get(k) != mine.get(k)]
    if changed:
        return None, f"partition settings changed since the previous partition ({', '.join(changed)})"
    return prev, ""


def _edge_keys(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """``src * n + dst`` of canonical edges: sorted, since the snapshot's edges are."""
    return src.astype(np.int64) * n + dst.astype(np.int64)


def _first_changed_id(old: Any, new: Any) -> str | None:
    """Why the old node ids are not the prefix of the new ones, or ``None`` when they are."""
    import pyarrow.compute as pc

    if len(new) < len(old):
        return f"nodes were removed ({len(old)} -> {len(new)})"
    prefix = new.slice(0, len(old))
    if old.type != prefix.type:
        return f"the node id type changed ({old.type} -> {prefix.type})"
    if prefix.equals(old):
        return None
    diff = pc.fill_null(pc.not_equal(old, prefix), True)
    i = pc.index(diff, True).as_py()
    return f"node {old[i].as_py()!r} (internal id {i}) is no longer there"


def extension_problem(previous: Previous, source: Output, num_nodes: int,
                      new_edges: tuple[np.ndarray, np.ndarray] | None = None) -> str | None:
    """Why the snapshot ``source`` (``num_nodes`` nodes) does not extend the previous partition's
    snapshot, or ``None`` when it does (node ids a prefix, every old edge still there).

    ``new_edges``: ``source``'s edge list ``(src, dst)`` when the caller already read it (the
    partition stage reads it once for this check and the refresh); read here otherwise."""
    try:
        old = output_at(previous.snapshot_location)
        why = old.damage()
    except ValueError as e:
        why = str(e)
    if why is not None:
        return f"the previous snapshot {previous.snapshot_location} is not available ({why})"
    problem = _first_changed_id(read_node_ids(old), read_node_ids(source))
    if problem is not None:
        return f"the snapshot does not extend the previous one: {problem}"
    old_keys = _edge_keys(*read_edges(old), num_nodes)
    new_keys = _edge_keys(*(read_edges(source) if new_edges is None else new_edges), num_nodes)
    pos = np.minimum(np.searchsorted(new_keys, old_keys), max(len(new_keys) - 1, 0))
    missing = np.flatnonzero(new_keys[pos] != old_keys) if len(new_keys) else np.arange(len(old_keys))
    if len(missing):
        k = int(old_keys[missing[0]])
        return (f"the snapshot does not extend the previous one: {len(missing)} edges removed, "
                f"e.g. internal ids ({k // num_nodes}, {k % num_nodes})")
    return None
