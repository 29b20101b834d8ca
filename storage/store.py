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

from storage.atomic import write_bytes
from storage.manifest import (  # noqa: F401  (the manifest functions, importable from here as before)
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
    """A partition (METIS, or a refresh of the previous one) with its permuted graph."""

    path: str
    fingerprint: str
    num_parts: int
    reused: bool = field(default=False, compare=False)
    mode: str = field(default="full", compare=False)  # "full" (METIS) or "refreshed" (tasks/partition/refresh.py)
    reason: str = field(default="", compare=False)  # why this mode


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
    """One store: a local directory, or a URI on object storage (``s3://bucket/prefix``, and the
    other filesystems pyarrow serves; see :mod:`storage.fs`).

    Args:
        root: a local path or a URI. A URI no filesystem here serves is a
            :class:`storage.fs.StoreLocationError` at once (no network access); call :meth:`check`
            to also find a missing bucket or refused credentials before work starts.
        cache_dir: the local cache of a remote store's outputs (:mod:`storage.cache`); default
            ``$GRAPHPIPE_CACHE_DIR``, else ``~/.cache/graphpipe``. Unused for a local store.
        cache_max_gb: the cache's size bound (least recently used entries are evicted); default
            ``$GRAPHPIPE_CACHE_MAX_GB``, else 50.

    On a remote store everything the stages publish (outputs, the current-snapshot pointer,
    history, objects such as checkpoints) lives in the bucket; :attr:`root` and
    :meth:`graph_dir` are then a local work directory of this machine inside the cache
    directory, for what cannot live in a bucket: the graph lock's file (see :meth:`lock`) and
    Optuna's SQLite study of ``graphpipe tune``.
    """

    def __init__(self, root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 cache_max_gb: float | None = None):
        from storage.fs import parse_store

        self.location = parse_store(root)
        self._cache_dir = cache_dir
        self._cache_max_gb = cache_max_gb
        if self.location.remote:
            self.root = self.cache.work_dir(self.location.uri)
        else:
            self.root = Path(self.location.base)

    @property
    def remote(self) -> bool:
        """True when the store is not a local directory."""
        return self.location.remote

    @property
    def uri(self) -> str:
        """The store's root as given: the URI of a remote store, the local path otherwise."""
        return self.location.uri

    @property
    def cache(self):
        """The local :class:`storage.cache.Cache` of this machine (for a remote store's outputs)."""
        from storage.cache import Cache

        return Cache.get(self._cache_dir, self._cache_max_gb)

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def check(self) -> None:
        """One cheap request to a remote store (the bucket exists and answers with these
        credentials); :class:`storage.fs.StoreLocationError` otherwise. Nothing for a local one."""
        from storage.fs import check_location

        check_location(self.location)

    def remote_path(self, *parts: str) -> str:
        """The path of ``parts`` below a remote store's root inside its filesystem."""
        return self.location.path(*parts)

    def graph_dir(self, name: str) -> Path:
        """``<root>/graphs/<name>`` (on a remote store, this machine's local work directory for
        the graph); ValueError for a name that is not one plain folder name, so
        that no name (``..``, an absolute path, a NUL) can point outside the store."""
        if not name or name.startswith(".") or any(c in "/\\" or ord(c) < 32 for c in name) or len(name) > 255:
            raise ValueError(f"graph name {name[:100]!r} is not a plain folder name inside the store")
        return self.root / "graphs" / name

    def _local_only(self, what: str) -> None:
        if self.remote:
            raise RuntimeError(f"{what}: a local path is asked of the remote store {self.uri}; "
                               f"use Store.output / put_object instead")

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
        self._local_only("checkpoint_dir")
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
    def _object_parts(self, graph: str, parts: tuple[str, ...]) -> tuple[str, ...]:
        if not parts or any(not p or p.startswith(".") or "/" in p or "\\" in p for p in parts):
            raise ValueError(f"{parts!r} is not a valid object name in the store")
        self.graph_dir(graph)  # validates the graph name
        return ("graphs", graph, *parts)

    def object_path(self, graph: str, *parts: str) -> Path | str:
        """Where object ``parts`` of ``graph`` lives (for messages and tags; I/O goes through
        :meth:`put_object` / :meth:`get_object`): a local path, or a URI on a remote store."""
        rel = self._object_parts(graph, parts)
        if self.remote:
            return self.location.uri_of(self.remote_path(*rel))
        return self.root.joinpath(*rel)

    def object_location(self, graph: str, *parts: str) -> str:
        """:meth:`object_path` as a string."""
        return str(self.object_path(graph, *parts))

    def local_object_dir(self, graph: str, *parts: str) -> Path:
        """A local directory for object folder ``parts`` of ``graph`` (created): the folder itself
        on a local store; on a remote one, this machine's work directory for it (scratch space
        beside the objects, never read by another machine)."""
        d = self.root.joinpath(*self._object_parts(graph, parts))
        d.mkdir(parents=True, exist_ok=True)
        return d

    def list_objects(self, graph: str, *parts: str) -> list[str]:
        """The names directly below object folder ``parts`` of ``graph`` (files and folders, not
        those starting with ``.``), sorted; empty when there is none."""
        rel = self._object_parts(graph, parts)
        if self.remote:
            import pyarrow.fs as pafs

            infos = self.location.fs.get_file_info(pafs.FileSelector(self.remote_path(*rel), allow_not_found=True))
            names = [i.base_name for i in infos]
        else:
            d = self.root.joinpath(*rel)
            names = [p.name for p in d.iterdir()] if d.is_dir() else []
        return sorted(n for n in names if not n.startswith("."))

    def put_object(self, graph: str, *parts: str, data: bytes) -> None:
        """Write (or replace) object ``parts`` of ``graph`` atomically: readers see the old
        bytes or the new ones, never a mix (one PUT on object storage)."""
        rel = self._object_parts(graph, parts)
        if self.remote:
            from storage import fs

            fs.write_bytes(self.location.fs, self.remote_path(*rel), data)
            return
        write_bytes(self.root.joinpath(*rel), data)

    def get_object(self, graph: str, *parts: str) -> bytes | None:
        """The bytes of object ``parts`` of ``graph``, or ``None`` when there is none."""
        rel = self._object_parts(graph, parts)
        if self.remote:
            from storage import fs

            return fs.read_bytes(self.location.fs, self.remote_path(*rel))
        try:
            return self.root.joinpath(*rel).read_bytes()
        except FileNotFoundError:
            return None

    def delete_object(self, graph: str, *parts: str) -> None:
        """Remove object ``parts`` of ``graph`` (nothing when there is none)."""
        rel = self._object_parts(graph, parts)
        if self.remote:
            from storage import fs

            fs.delete_file(self.location.fs, self.remote_path(*rel))
            return
        self.root.joinpath(*rel).unlink(missing_ok=True)

    def tuned_dir(self, name: str) -> Path:
        """``graphpipe tune``'s output: ``best.yaml`` (the best config found), ``best.json`` (its
        scores and trial), ``study.db`` (the Optuna study, so a tune resumes)."""
        return self.graph_dir(name) / "tuned"

    def lock(self, name: str, timeout: float | None = None):
        """Hold the graph's lock (a context manager): one run at a time writes a graph; the first
        holder removes leftovers of dead runs. A local store: :func:`storage.locks.graph_lock`
        (a kernel flock, never stale). A remote store: that flock on this machine plus a lease
        object in the bucket with the holder and an expiry, renewed while held
        (:func:`storage.lease.remote_graph_lock`; read its caveat: no compare-and-swap)."""
        if self.remote:
            from storage.lease import remote_graph_lock

            return remote_graph_lock(self, name, timeout=timeout)
        from storage.locks import graph_lock

        return graph_lock(self.graph_dir(name), timeout=timeout)

    # -- the current snapshot -------------------------------------------------------------
    def current_snapshot(self, name: str) -> SnapshotRef | None:
        """The graph's current snapshot, or ``None`` when there is none or it is damaged."""
        raw = self.get_object(name, "CURRENT.json")
        if raw is None:
            return None
        ref = SnapshotRef(**json.loads(raw))
        if self.remote:
            try:
                why = self.open(ref.path).damage()
            except ValueError as e:
                why = str(e)
        else:
            why = damage(ref.path)
        if why is not None:
            log.warning("the current snapshot of graph %r, %s, is damaged or incomplete (%s): ingest it again",
                        name, ref.path, why)
            return None
        return ref

    def set_current(self, ref: SnapshotRef) -> None:
        """Point ``CURRENT.json`` at ``ref`` (replaced in one step) and append it to
        ``history.jsonl``. Call it only after ``ref``'s output is published (manifest last): a run
        killed before leaves the previous current snapshot in force."""
        previous = self.current_snapshot(ref.name)
        data = {k: v for k, v in asdict(ref).items() if k != "reused"}
        self.put_object(ref.name, "CURRENT.json",
                        data=(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())
        if previous is None or previous.fingerprint != ref.fingerprint:
            line = json.dumps(
                {"path": ref.path, "name": ref.name, "fingerprint": ref.fingerprint, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            )
            old = self.get_object(ref.name, "history.jsonl") or b""
            self.put_object(ref.name, "history.jsonl", data=old + line.encode() + b"\n")

    def history(self, name: str) -> list[dict[str, Any]]:
        """Every snapshot ever made current for graph ``name``, oldest first."""
        raw = self.get_object(name, "history.jsonl")
        if raw is None:
            return []
        return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]


def output_at(location):
    """The :class:`storage.outputs.Output` at ``location``, a path or URI a stage reference
    recorded (``<store>/graphs/<graph>/<kind folder>/<key>``), its store found from the location
    itself; an ``Output`` is returned as it is. ValueError for one that is not a stage output."""
    from storage.fs import is_uri
    from storage.outputs import Output

    if isinstance(location, Output):
        return location
    if is_uri(str(location)):
        root, sep, _ = str(location).rpartition("/graphs/")
        if not sep:
            raise ValueError(f"{location} is not a stage output of a store")
        return Store(root).open(str(location))
    p = Path(location).expanduser().resolve()
    return Store(p.parent.parent.parent.parent).open(p)


def store_for(config: Any) -> Store:
    """The :class:`Store` of a pipeline config (its ``store``, ``cache_dir``, ``cache_max_gb``).

    The cache settings are also exported as ``$GRAPHPIPE_CACHE_DIR`` / ``$GRAPHPIPE_CACHE_MAX_GB``
    when the config sets them, so that every other :class:`Store` of this run, and the processes
    it starts (data-parallel training ranks), use the same cache.
    """
    if getattr(config, "cache_dir", None):
        os.environ["GRAPHPIPE_CACHE_DIR"] = str(Path(config.cache_dir).expanduser().resolve())
    if getattr(config, "cache_max_gb", None):
        os.environ["GRAPHPIPE_CACHE_MAX_GB"] = str(config.cache_max_gb)
    return Store(config.store)
