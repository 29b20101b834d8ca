"""Incremental ingest: whether a graph's current snapshot can be grown by the new edge files alone.

A nightly run whose ``data.edges`` glob or directory picked up new dated files re-reads only those
(and the node-sized node table) when the current snapshot was made with the same settings from
edge files that are all still there with the same content; the new snapshot links the previous
one's edge files and adds the new edges as one more fragment (:func:`storage.snapshot.write_snapshot`).
This module decides that (:func:`plan`) and holds the checks on the re-read node data
(:func:`existing_rows_problem`) and the edge de-duplication (:func:`appended_edges`); the
building itself is :func:`tasks.ingest.snapshot.build_incremental`. Anything that would make the
grown snapshot differ from what a full ingest of the same input gives (in edge set and node order)
falls back to a full ingest with the reason logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from storage.outputs import Output
from storage.snapshot import Features, read_edge_parts, read_features, read_node_ids, read_nodes
from storage.store import SnapshotRef, Store
from tasks.config import DataConfig, SplitConfig


@dataclass
class Base:
    """The current snapshot an incremental ingest grows, and the edge files it has not seen."""

    ref: SnapshotRef
    output: Output
    manifest: dict[str, Any]
    new_files: list[str]

    @property
    def counts(self) -> dict[str, Any]:
        """The base snapshot's manifest counts."""
        return self.manifest["counts"]

    def node_ids(self) -> pa.Array:
        """The base snapshot's node ids (position = contiguous id)."""
        return read_node_ids(self.output)

    def nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """The base snapshot's ``(labels, split)``."""
        return read_nodes(self.output)

    def edge_parts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The base snapshot's edges, one ``(src, dst)`` per edge file (each sorted)."""
        return read_edge_parts(self.output)

    def features(self) -> Features | None:
        """The base snapshot's features."""
        return read_features(self.output)


def settings_of(data: DataConfig, split: SplitConfig, version: int) -> dict[str, Any]:
    """What must be equal for a snapshot to be grown: the ``data`` settings but the graph's name
    and the edge entries (the files are compared by content), the ``split`` settings, the ingest
    version. Recorded in the manifest as ``ingest_settings``."""
    settings = data.model_dump(mode="json")
    for key in ("name", "edges", "nodes", "features"):
        settings.pop(key)
    return {"data": settings, "split": split.model_dump(mode="json"), "ingest_version": version,
            "has_nodes": data.nodes is not None, "has_features": data.features is not None}


def plan(data: DataConfig, split: SplitConfig, store: Store, inputs: dict[str, Any],
         settings: dict[str, Any]) -> tuple[Base | None, str]:
    """``(base, reason)``: the current snapshot to grow and why, or ``(None, why a full ingest)``.

    Args:
        data, split: the sections being ingested.
        store: the store holding the graph's current snapshot.
        inputs: :func:`tasks.ingest.snapshot.input_files` of ``data`` (paths and content fingerprints).
        settings: :func:`settings_of` the sections.
    """
    ref = store.current_snapshot(data.name)
    if ref is None:
        return None, "the graph has no current snapshot"
    output = store.output(data.name, "snapshot", ref.fingerprint)
    try:
        manifest = output.manifest()
    except (OSError, ValueError) as e:
        return None, f"the current snapshot's manifest is unreadable ({e})"
    if "ingest_settings" not in manifest:
        return None, f"the current snapshot {ref.fingerprint} records no ingest settings (made before incremental ingest)"
    if manifest["ingest_settings"] != settings:
        return None, f"the settings differ from those of the current snapshot {ref.fingerprint}"
    now = {e["path"]: e["fingerprint"] for e in inputs["edges"]}
    for entry in manifest["inputs"]["edges"]:
        if entry["path"] not in now:
            return None, f"edge file {entry['path']} of the current snapshot is gone"
        if now[entry["path"]] != entry["fingerprint"]:
            return None, f"edge file {entry['path']} changed since the current snapshot"
    seen = {e["path"] for e in manifest["inputs"]["edges"]}
    new_files = [e["path"] for e in inputs["edges"] if e["path"] not in seen]
    return Base(ref, output, manifest, new_files), f"{len(new_files)} new edge file(s)"


MAX_LINEAGE = 62  # snapshots followed back by grew_from (two months of nightly runs)


def grew_from(store: Store, graph: str, fingerprint: str, ancestor: str) -> str | None:
    """Why snapshot ``fingerprint`` of ``graph`` does not extend snapshot ``ancestor``, or ``None``
    when it does: it is ``ancestor``, or incremental ingests grew it from ``ancestor`` (each one
    checked that the existing nodes, their labels and features are unchanged:
    :func:`existing_rows_problem`), as their manifests record (``ingest_mode``, ``base_snapshot``).
    Follows at most ``MAX_LINEAGE`` snapshots back."""
    fp = fingerprint
    for _ in range(MAX_LINEAGE + 1):
        if fp == ancestor:
            return None
        try:
            manifest = store.output(graph, "snapshot", fp).manifest()
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"the manifest of snapshot {fp} is not available ({e})"
        if manifest.get("ingest_mode") != "incremental" or not manifest.get("base_snapshot"):
            why = manifest.get("ingest_reason") or "no base snapshot recorded"
            return f"snapshot {fp} was not grown from {ancestor} (full ingest: {why})"
        fp = str(manifest["base_snapshot"])
    return f"snapshot {fingerprint} is more than {MAX_LINEAGE} incremental ingests after {ancestor}"


def prefix_differs(base_ids: pa.Array, node_ids: pa.Array) -> bool:
    """Whether ``node_ids`` does not start with ``base_ids`` (compared as strings when either is)."""
    if len(node_ids) < len(base_ids):
        return True
    head = node_ids.slice(0, len(base_ids))
    if pa.types.is_integer(base_ids.type) != pa.types.is_integer(head.type):
        return True
    if not pa.types.is_integer(base_ids.type):
        base_ids, head = base_ids.cast(pa.large_string()), head.cast(pa.large_string())
    else:
        base_ids, head = base_ids.cast(pa.int64()), head.cast(pa.int64())
    return not pc.all(pc.equal(base_ids, head)).as_py() if len(base_ids) else False


def existing_rows_problem(base: Base, labels: np.ndarray, features: Features | None) -> str | None:
    """Why the re-read node data of the base snapshot's nodes differs from the snapshot (labels or
    features changed), or ``None``. The split is checked by the caller (a generated one is kept)."""
    n = base.counts["num_nodes"]
    old_labels, _ = base.nodes()
    if not np.array_equal(old_labels, labels[:n].astype(np.int64)):
        row = int(np.argmax(old_labels != labels[:n]))
        return f"the label of existing node {row} (row {row + 1}) changed"
    old_x = base.features()
    if (old_x is None) != (features is None):
        return "the existing nodes' features changed (present / absent)"
    if old_x is None:
        return None
    if old_x.shape[1] != features.shape[1]:
        return f"the number of features changed ({old_x.shape[1]} -> {features.shape[1]})"
    if sp.issparse(features) or sp.issparse(old_x):
        diff = sp.csr_matrix(features[:n], dtype=np.float32) != sp.csr_matrix(old_x, dtype=np.float32)
        same = diff.nnz == 0
    else:
        same = np.array_equal(np.asarray(features[:n], dtype=np.float32), old_x)
    return None if same else "the existing nodes' features changed"


def appended_edges(base_edges: list[tuple[np.ndarray, np.ndarray]], src: np.ndarray, dst: np.ndarray,
                   num_nodes: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(src, dst, dropped)``: the canonical new edges ``src``/``dst`` (``src < dst``, sorted,
    unique) less those the base snapshot already has, and how many were dropped for that.

    ``base_edges``: the base's edge files as ``(src, dst)``, each sorted (canonical in itself):
    binary search per file, ``O(new * log E)``, no sort or hash of the base's edges."""
    n = max(num_nodes, 1)
    new = src.astype(np.int64) * n + dst
    known = np.zeros(len(new), dtype=bool)
    for base_src, base_dst in base_edges:
        if not len(base_src):
            continue
        old = base_src.astype(np.int64) * n + base_dst  # sorted: (src, dst) order, dst < n
        at = np.searchsorted(old, new)
        np.minimum(at, len(old) - 1, out=at)
        known |= old[at] == new
    keep = ~known
    return src[keep], dst[keep], int(known.sum())
