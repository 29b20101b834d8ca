"""The scores output (``graphs/<name>/scores/<key>/``) and the graph's "latest scores" pointer.

A scoring is one model applied to every node of one snapshot (:mod:`tasks.score.score`); it is
versioned like every stage output (the key covers the model's weights, the node data and the
scoring settings) and published all or nothing. Entries, by logical name:

- ``scores``: one row per node, in the snapshot's node order and the user's node ids (Parquet,
  the file users open: :func:`scores_location`): ``node_id``, ``prediction`` (int32),
  ``confidence`` (float32), ``top_k_classes`` (list<int32>, most probable first),
  ``top_k_probs`` (list<float32>, descending) and, with ``score.embeddings``, ``embedding``
  (fixed-size list<float32>: the last layer's input).

The pointer :func:`latest` / :func:`set_latest` is a small object beside the outputs, replaced in
one step: the scoring the next drift is computed against. It moves only after the new scoring is
published, so a failed scoring leaves the previous one in force.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from storage.outputs import file_name

if TYPE_CHECKING:
    import pyarrow as pa

    from storage.outputs import Output, Writer
    from storage.store import Store

SCORES = "scores"
LATEST_OBJECT = "SCORES_LATEST.json"


@dataclass(frozen=True)
class ScoresRef:
    """A published scoring.

    Attributes:
        path: the output's location (a path or URI).
        graph: the graph's name.
        key: the output's key.
        snapshot: the scored snapshot's fingerprint.
        num_nodes: rows (nodes scored).
        edges: undirected edges of the scored snapshot (for the drift's ``edges_added``).
        model: what scored it (``champion v3 (run ...)``, a checkpoint path).
        reused: True when an existing output was returned.
    """

    path: str
    graph: str
    key: str
    snapshot: str
    num_nodes: int
    edges: int
    model: str
    reused: bool = field(default=False, compare=False)


def write_scores(w: Writer, table: pa.Table) -> None:
    """Write the per-node scores table (module docstring) into the output published by ``w``."""
    w.table(SCORES, table)
    w.counts["num_nodes"] = table.num_rows


def read_scores(out: Output, columns: list[str] | None = None) -> pa.Table:
    """The per-node scores (optionally only ``columns``)."""
    return out.table(SCORES, columns=columns)


def scores_location(out: Output) -> str:
    """Where the scores table is, for users (a URI on a remote store)."""
    if out.store.remote:
        return f"{out.location}/{file_name(SCORES, 'table')}"
    return str(out.local_dir() / file_name(SCORES, "table"))


def latest(store: Store, graph: str) -> ScoresRef | None:
    """The graph's latest scoring, or ``None`` when there is none (or its output is gone or
    damaged: then the next scoring has nothing to compare with, and says so)."""
    raw = store.get_object(graph, LATEST_OBJECT)
    if raw is None:
        return None
    ref = ScoresRef(**json.loads(raw))
    try:
        if store.open(ref.path).damage() is not None:
            return None
    except ValueError:
        return None
    return ref


def set_latest(store: Store, ref: ScoresRef) -> None:
    """Point the graph's latest scoring at ``ref`` (replaced in one step). Call it only after
    ``ref``'s output is published."""
    data: dict[str, Any] = {k: v for k, v in asdict(ref).items() if k != "reused"}
    store.put_object(ref.graph, LATEST_OBJECT, data=json.dumps(data, indent=2).encode() + b"\n")


__all__ = ["ScoresRef", "write_scores", "read_scores", "scores_location", "latest", "set_latest"]
