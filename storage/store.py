"""The store's layout, manifests and the small references that tasks pass around.

::

    <store>/graphs/<name>/
        CURRENT.json                 the snapshot the next stages use
        history.jsonl                every snapshot ever made current, with its time
        snapshots/<fingerprint>/     ingest output (Parquet) + manifest.json
        features/<fingerprint>/      normalized features (.npy) + statistics + manifest.json
        partitions/<fingerprint>/    METIS clusters and the permuted CSR (.npy) + manifest.json
        node_data/<fingerprint>/     features, labels, split in partition order (.npy) + manifest.json
        evaluation/<key>/            metrics, predictions (Parquet), confusion matrix, embedding sample
        checkpoints/<key>/           training checkpoints (last.pt, best.pt)
        tuned/                       best.yaml + best.json from `graphpipe tune`, study.db (Optuna)

Stage outputs are read and published through :mod:`storage.outputs` (:meth:`Store.output`,
:meth:`Store.publish`); manifests are :mod:`storage.manifest`'s. Every directory is published whole
(see :mod:`storage.atomic`); a directory with a ``manifest.json`` is complete. The manifest records each file's size and checksum: a reused output
whose sizes do not match is treated as missing and rebuilt (:func:`reusable`), and
``graphpipe verify`` checks every checksum (:mod:`storage.verify`). A run holds the graph's lock
(``.lock``, :mod:`storage.locks`) while it writes. Fingerprints cover the inputs' content and the parameters, so a
changed graph never reuses a stale output.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from storage.atomic import read_json, write_bytes, write_json
from storage.manifest import (  # noqa: F401  (re-exported: the store's manifest functions)
    FORMAT_VERSION,
    MANIFEST,
    code_version,
    damage,
    discard,
    is_complete,
    make_manifest,
    read_manifest,
    reusable,
    verify_directory,
    write_manifest,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SnapshotRef:
    """A published graph snapshot."""

    path: str
    name: str
    fingerprint: str
    reused: bool = field(default=False, compare=False)  # True when an existing output was returned


@dataclass(frozen=True)
class FeaturesRef:
    """Normalized features of a snapshot, in the snapshot's node order."""

    path: str
    fingerprint: str
    method: str
    reused: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class PartitionRef:
    """A METIS partition with its permuted graph and node data."""

    path: str
    fingerprint: str
    num_parts: int
    reused: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class NodeDataRef:
    """Normalized features, labels and split laid out in a partition's node order."""

    path: str
    fingerprint: str
    partition: PartitionRef
    reused: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class EvaluationRef:
    """The evaluation of a trained model on the full graph: its metrics, and where its outputs
    (predictions, confusion matrix, embedding sample: :mod:`storage.evaluation`) are."""

    path: str
    metrics: dict[str, float]
    key: str = ""
    reused: bool = field(default=False, compare=False)


class Store:
    """Paths of one store root (a local directory; shared between workers as a network mount)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()

    def graph_dir(self, name: str) -> Path:
        """``<root>/graphs/<name>``; ValueError for a name that is not one plain folder name, so
        that no name (``..``, an absolute path, a NUL) can point outside the store."""
        if not name or name.startswith(".") or any(c in "/\\" or ord(c) < 32 for c in name) or len(name) > 255:
            raise ValueError(f"graph name {name[:100]!r} is not a plain folder name inside the store")
        return self.root / "graphs" / name

    def snapshot_dir(self, name: str, fingerprint: str) -> Path:
        """Where snapshot ``fingerprint`` of graph ``name`` lives (stages use :meth:`output`)."""
        return self.output(name, "snapshot", fingerprint).path

    def features_dir(self, name: str, fingerprint: str) -> Path:
        """Where normalized features ``fingerprint`` live (stages use :meth:`output`)."""
        return self.output(name, "features", fingerprint).path

    def partition_dir(self, name: str, fingerprint: str) -> Path:
        """Where partition ``fingerprint`` lives (stages use :meth:`output`)."""
        return self.output(name, "partition", fingerprint).path

    def node_data_dir(self, name: str, fingerprint: str) -> Path:
        """Where node data ``fingerprint`` lives (stages use :meth:`output`)."""
        return self.output(name, "node_data", fingerprint).path

    def checkpoint_dir(self, name: str, key: str) -> Path:
        return self.graph_dir(name) / "checkpoints" / key

    # -- stage outputs (storage.outputs) ----------------------------------------------------
    def output(self, graph: str, kind: str, key: str):
        """The stage output ``kind`` (``snapshot``, ``features``, ``partition``, ``node_data``,
        ``evaluation``) of ``graph`` with ``key``: see :mod:`storage.outputs`."""
        from storage.outputs import Output

        return Output(self, graph, kind, key)

    def publish(self, output, *, params: dict[str, Any], inputs: dict[str, Any], replace: bool = False):
        """Publish ``output`` atomically with its manifest (a context manager yielding a
        :class:`storage.outputs.Writer`); see :func:`storage.outputs.publish`."""
        from storage.outputs import publish

        return publish(output, params=params, inputs=inputs, replace=replace)

    def open(self, location: str | os.PathLike):
        """The :class:`storage.outputs.Output` at ``location``, a path a stage reference recorded."""
        from storage.outputs import as_output

        return as_output(self, location)

    # -- small mutable objects (checkpoints, hand-offs, pointers) -----------------------------
    def object_path(self, graph: str, *parts: str) -> Path:
        """Where object ``parts`` of ``graph`` lives (for messages and tags; I/O goes through
        :meth:`put_object` / :meth:`get_object`)."""
        if not parts or any(not p or p.startswith(".") or "/" in p or "\\" in p for p in parts):
            raise ValueError(f"{parts!r} is not a valid object name in the store")
        return self.graph_dir(graph).joinpath(*parts)

    def put_object(self, graph: str, *parts: str, data: bytes) -> None:
        """Write (or replace) object ``parts`` of ``graph`` atomically: readers see the old
        bytes or the new ones, never a mix."""
        write_bytes(self.object_path(graph, *parts), data)

    def get_object(self, graph: str, *parts: str) -> bytes | None:
        """The bytes of object ``parts`` of ``graph``, or ``None`` when there is none."""
        try:
            return self.object_path(graph, *parts).read_bytes()
        except FileNotFoundError:
            return None

    def tuned_dir(self, name: str) -> Path:
        """``graphpipe tune``'s output: ``best.yaml`` (the best config found), ``best.json`` (its
        scores and trial), ``study.db`` (the Optuna study, so a tune resumes)."""
        return self.graph_dir(name) / "tuned"

    def lock(self, name: str, timeout: float | None = None):
        """Hold the graph's lock (a context manager, :func:`storage.locks.graph_lock`): one run
        at a time writes a graph; the first holder removes leftovers of dead runs."""
        from storage.locks import graph_lock

        return graph_lock(self.graph_dir(name), timeout=timeout)

    # -- the current snapshot -------------------------------------------------------------
    def current_snapshot(self, name: str) -> SnapshotRef | None:
        pointer = self.graph_dir(name) / "CURRENT.json"
        if not pointer.is_file():
            return None
        ref = SnapshotRef(**read_json(pointer))
        why = damage(ref.path)
        if why is not None:
            log.warning("the current snapshot of graph %r, %s, is damaged or incomplete (%s): ingest it again",
                        name, ref.path, why)
            return None
        return ref

    def set_current(self, ref: SnapshotRef) -> None:
        """Point ``CURRENT.json`` at ``ref`` (atomic) and append it to ``history.jsonl``."""
        gdir = self.graph_dir(ref.name)
        previous = self.current_snapshot(ref.name)
        write_json(gdir / "CURRENT.json", {k: v for k, v in asdict(ref).items() if k != "reused"})
        if previous is None or previous.fingerprint != ref.fingerprint:
            line = json.dumps(
                {"path": ref.path, "name": ref.name, "fingerprint": ref.fingerprint, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            )
            history = gdir / "history.jsonl"
            old = history.read_bytes() if history.exists() else b""
            write_bytes(history, old + line.encode() + b"\n")

    def history(self, name: str) -> list[dict[str, Any]]:
        path = self.graph_dir(name) / "history.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def output_at(location):
    """The :class:`storage.outputs.Output` at ``location``, a path a stage reference recorded
    (``<store>/graphs/<graph>/<kind folder>/<key>``), its store found from the path itself; an
    ``Output`` is returned as it is. ValueError for a path that is not a stage output."""
    from storage.outputs import Output

    if isinstance(location, Output):
        return location
    p = Path(location).expanduser().resolve()
    return Store(p.parent.parent.parent.parent).open(p)
