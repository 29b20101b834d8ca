"""The store's layout, manifests and the small references that tasks pass around.

::

    <store>/graphs/<name>/
        CURRENT.json                 the snapshot the next stages use
        history.jsonl                every snapshot ever made current, with its time
        snapshots/<fingerprint>/     ingest output (Parquet) + manifest.json
        features/<fingerprint>/      normalized features (.npy) + statistics + manifest.json
        partitions/<fingerprint>/    METIS clusters and the permuted CSR (.npy) + manifest.json
        node_data/<fingerprint>/     features, labels, split in partition order (.npy) + manifest.json
        checkpoints/<key>/           training checkpoints (last.pt, best.pt)
        tuned/                       best.yaml + best.json from `graphpipe tune`, study.db (Optuna)
        predictions/<fingerprint>/   scored nodes (Parquet) + manifest.json

Every directory is published whole (see :mod:`storage.atomic`); a directory with a
``manifest.json`` is complete. The manifest records each file's size and checksum: a reused output
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
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from storage.atomic import read_json, write_bytes, write_json
from storage.fingerprint import fingerprint_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version, plus the git commit when run from a checkout."""
    from importlib import metadata

    try:
        version = metadata.version("graphpipe")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version}+{sha}" if sha else version


def make_manifest(
    kind: str,
    fingerprint: str,
    *,
    params: dict[str, Any],
    inputs: dict[str, Any],
    counts: dict[str, Any],
    files: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "fingerprint": fingerprint,
        "params": params,
        "inputs": inputs,
        "counts": counts,
        "files": sorted(files),
        "code_version": code_version(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write the manifest last: its presence marks the directory complete.

    Adds ``checksums``: each listed regular file's size and content checksum
    (:func:`storage.fingerprint.fingerprint_file`, SHA-256), so that damage done after publishing
    is found: sizes on every read (:func:`damage`), contents by :func:`verify_directory`
    (``graphpipe verify``).
    """
    d = Path(directory)
    checksums = {}
    for name in manifest.get("files", []):
        f = d / name
        if f.is_file():
            checksums[name] = {"size": f.stat().st_size, "sha256": fingerprint_file(f)}
    write_json(d / MANIFEST, {**manifest, "checksums": checksums})


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(directory) / MANIFEST)


def damage(directory: str | os.PathLike) -> str | None:
    """Why ``directory`` is not a complete, undamaged output (``None`` if it is), checking only
    what is cheap: the manifest, that every listed file exists, and each file's size against the
    size recorded at publish time."""
    d = Path(directory)
    if not d.is_dir():
        return "missing"
    if not (d / MANIFEST).is_file():
        return "no manifest.json (incomplete)"
    try:
        manifest = read_manifest(d)
    except (OSError, ValueError) as e:
        return f"unreadable manifest.json ({e})"
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        return f"manifest.json has format version {manifest.get('format_version') if isinstance(manifest, dict) else '?'}, not {FORMAT_VERSION}"
    sums = manifest.get("checksums") or {}
    for name in manifest.get("files", []):
        f = d / name
        if not f.exists():
            return f"{name} is missing"
        want = sums.get(name, {}).get("size")
        if want is not None:
            size = f.stat().st_size
            if size != want:
                return f"{name} has {size} bytes, the manifest says {want}"
    return None


def is_complete(directory: str | os.PathLike) -> bool:
    return damage(directory) is None


def verify_directory(directory: str | os.PathLike) -> tuple[str, str]:
    """Full check of a published directory: ``("ok" | "damaged" | "unverified", detail)``.
    Every file's size and checksum against the manifest; ``unverified`` for outputs published
    before checksums were recorded (complete, but their content cannot be checked)."""
    d = Path(directory)
    why = damage(d)
    if why is not None:
        return "damaged", why
    manifest = read_manifest(d)
    sums = manifest.get("checksums")
    if not sums:
        return "unverified", "published without checksums: sizes and contents cannot be checked"
    bad = []
    for name, want in sorted(sums.items()):
        got = fingerprint_file(d / name)
        if got != want.get("sha256"):
            bad.append(f"{name} checksum {got} != {want.get('sha256')}")
    if bad:
        return "damaged", "; ".join(bad)
    return "ok", f"{len(sums)} files"


def reusable(directory: str | os.PathLike, what: str = "output") -> bool:
    """True when ``directory`` is a complete, undamaged output a stage can reuse. If it exists but
    is incomplete or damaged (size check, :func:`damage`), it is treated as missing: logged with
    the reason, moved aside and deleted, so the stage builds and publishes it again."""
    d = Path(directory)
    why = damage(d)
    if why is None:
        return True
    if why != "missing" and d.exists():
        log.warning("%s %s is damaged or incomplete (%s): rebuilding it", what, d, why)
        discard(d)
    return False


def discard(directory: str | os.PathLike) -> None:
    """Remove a published directory: renamed aside first (one atomic step), then deleted."""
    d = Path(directory)
    aside = d.parent / f".{d.name}.damaged-{uuid.uuid4().hex[:12]}"
    try:
        d.rename(aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


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
        return self.graph_dir(name) / "snapshots" / fingerprint

    def features_dir(self, name: str, fingerprint: str) -> Path:
        return self.graph_dir(name) / "features" / fingerprint

    def partition_dir(self, name: str, fingerprint: str) -> Path:
        return self.graph_dir(name) / "partitions" / fingerprint

    def node_data_dir(self, name: str, fingerprint: str) -> Path:
        return self.graph_dir(name) / "node_data" / fingerprint

    def checkpoint_dir(self, name: str, key: str) -> Path:
        return self.graph_dir(name) / "checkpoints" / key

    def predictions_dir(self, name: str, fingerprint: str) -> Path:
        return self.graph_dir(name) / "predictions" / fingerprint

    # -- stage outputs (storage.outputs) ----------------------------------------------------
    def output(self, graph: str, kind: str, key: str):
        """The stage output ``kind`` (``snapshot``, ``features``, ``partition``, ``node_data``,
        ``evaluation``, ``predictions``) of ``graph`` with ``key``: see :mod:`storage.outputs`."""
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
