"""The one interface through which every stage reads and publishes its output.

A stage output is a directory of the store, ``<store>/graphs/<graph>/<kind>/<key>/``, addressed by
the graph, the kind of output and a key (the content fingerprint of its inputs and parameters).
Stages never build those paths nor name the files in them: they ask the store for an
:class:`Output`, check whether a complete one exists (:meth:`Output.reusable`), and otherwise write
a new one through :meth:`storage.store.Store.publish`, handing it arrays, Arrow tables and JSON
documents by logical name (``"x"``, ``"assignment"``, ``"stats"``); the file names and formats are
decided here::

    out = store.output("cora", "features", fingerprint)
    if out.reusable():
        return ...                               # complete and undamaged: the cache hit
    with store.publish(out, params=..., inputs=...) as w:
        w.array("x", x)                          # or w.new_array("x", shape, dtype) to fill in place
        w.json("stats", stats)
        w.counts["num_nodes"] = n
    # on success: manifest.json written last (files, sizes, checksums), directory renamed into place

    x = store.output("cora", "features", fingerprint).array("x")   # memory-mapped, read-only

Publishing is all or nothing (:mod:`storage.atomic`): a failure removes the temporary directory
and leaves the previous output in force. An output that exists but is incomplete or damaged
(no manifest, a listed file missing, a size that differs from the manifest's) is treated as
missing by :meth:`Output.reusable`: it is logged, moved aside and rebuilt, for every stage alike.

This is also the seam for other filesystems: everything a stage does with the store goes through
:class:`Output` (reading) and :class:`Writer` (publishing). On a remote store (``s3://...``,
:mod:`storage.fs`) a :class:`Writer` fills a local staging directory that is uploaded when the
block ends (data files first, the manifest last); :meth:`Output.local_dir` is a verified copy in
this machine's cache (:mod:`storage.cache`); an output's :attr:`Output.location` is its URI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from storage.atomic import publish_dir, read_json, reserve, write_bytes, write_json
from storage.manifest import damage, discard, make_manifest, read_manifest, reusable, write_manifest

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

#: kind of output -> folder under ``graphs/<name>/``
KINDS = {
    "snapshot": "snapshots",
    "features": "features",
    "partition": "partitions",
    "node_data": "node_data",
    "evaluation": "evaluation",
    "scores": "scores",
}

_SUFFIX = {"array": ".npy", "table": ".parquet", "json": ".json"}


def file_name(name: str, form: str) -> str:
    """The file that holds logical ``name`` stored as ``form`` (``array``, ``table``, ``json``)."""
    if not name or "/" in name or name.startswith(".") or name == "manifest":
        raise ValueError(f"{name!r} is not a valid output entry name")
    return name + _SUFFIX[form]


@dataclass(frozen=True)
class Output:
    """One stage output in the store (it may or may not exist yet).

    Args:
        store: the store holding it.
        graph: the graph's name (a plain folder name).
        kind: one of :data:`KINDS`.
        key: the output's content fingerprint (or another unique key).
    """

    store: Any  # a storage.store.Store (not imported here: storage.store imports this module)
    graph: str
    kind: str
    key: str

    @property
    def path(self) -> Path | str:
        """Where the output lives; for references and messages. Read through the methods below.
        A local path, or the output's URI on a remote store."""
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind of output {self.kind!r}; expected one of {sorted(KINDS)}")
        if self.store.remote:
            return self.store.location.uri_of(self.remote_path)
        return self.store.graph_dir(self.graph) / KINDS[self.kind] / self.key

    @property
    def location(self) -> str:
        """:attr:`path` as a string, as stage references record it (a URI on a remote store)."""
        return str(self.path)

    @property
    def remote_path(self) -> str:
        """The output's directory inside a remote store's filesystem (``bucket/prefix/graphs/...``)."""
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind of output {self.kind!r}; expected one of {sorted(KINDS)}")
        self.store.graph_dir(self.graph)  # validates the name
        return self.store.remote_path("graphs", self.graph, KINDS[self.kind], self.key)

    # -- completeness -----------------------------------------------------------------------
    def damage(self) -> str | None:
        """Why the output is not complete and undamaged (``"missing"``, ``"no manifest.json"``, a
        listed file missing or of the wrong size), or ``None`` when it is. Cheap: no checksums
        (on a remote store: one read of the manifest and one listing)."""
        if self.store.remote:
            return _remote_damage(self)
        return damage(self.path)

    def exists(self) -> bool:
        """True when the output is published, complete and undamaged."""
        return self.damage() is None

    def reusable(self, what: str | None = None) -> bool:
        """True when the output can be reused. One that exists but is incomplete or damaged is
        logged (as ``what``, default the kind), moved aside and deleted: the caller rebuilds it.
        On a remote store an incomplete one (e.g. files without a manifest, left by a run killed
        mid-upload) is deleted from the bucket."""
        what = what or self.kind.replace("_", " ")
        if self.store.remote:
            why = _remote_damage(self)
            if why is None:
                return True
            if why != "missing":
                log.warning("%s %s is damaged or incomplete (%s): rebuilding it", what, self.location, why)
                self.discard()
            return False
        return reusable(self.path, what)

    def discard(self) -> None:
        """Remove the output (moved aside in one step, then deleted; on a remote store its
        manifest is deleted first, so that no reader trusts what remains)."""
        if self.store.remote:
            from storage import fs

            self.store.cache.forget(self.location)
            fs.delete_file(self.store.location.fs, f"{self.remote_path}/{MANIFEST_NAME}")
            fs.delete_dir(self.store.location.fs, self.remote_path)
            return
        discard(self.path)

    def manifest(self) -> dict[str, Any]:
        """The output's manifest (parameters, inputs, counts, files, checksums)."""
        if self.store.remote:
            import json

            raw = _remote_manifest_bytes(self)
            if raw is None:
                raise FileNotFoundError(f"{self.location}/{MANIFEST_NAME} does not exist")
            return json.loads(raw)
        return read_manifest(self.path)

    # -- reading ------------------------------------------------------------------------------
    def local_dir(self) -> Path:
        """A local directory holding the output's files: the output itself on a local store; on
        a remote store a verified copy in this machine's cache (:mod:`storage.cache`), fetched
        from the bucket the first time and reused after (also by later runs)."""
        if not self.store.remote:
            return self.path
        return _fetch(self)

    def has(self, name: str, form: str = "array") -> bool:
        """Whether the output holds logical entry ``name`` stored as ``form``."""
        if self.store.remote:
            return file_name(name, form) in self.manifest().get("files", [])
        return (self.local_dir() / file_name(name, form)).is_file()

    def array(self, name: str, mmap: bool = True) -> np.ndarray:
        """Array ``name``: memory-mapped read-only (``mmap=True``, only touched pages are read)
        or loaded into memory. Pickled objects are never loaded."""
        from storage.arrays import map_array

        path = self.local_dir() / file_name(name, "array")
        return map_array(path)[0] if mmap else np.load(path, allow_pickle=False)

    def json(self, name: str) -> Any:
        """JSON document ``name``."""
        return read_json(self.local_dir() / file_name(name, "json"))

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Arrow table ``name`` (optionally only ``columns``)."""
        import pyarrow.parquet as pq

        return pq.read_table(self.local_dir() / file_name(name, "table"), columns=columns)


# -- remote stores --------------------------------------------------------------------------------
MANIFEST_NAME = "manifest.json"


def _remote_manifest_bytes(out: Output) -> bytes | None:
    from storage import fs

    return fs.read_bytes(out.store.location.fs, f"{out.remote_path}/{MANIFEST_NAME}")


def _check_manifest(manifest: Any, sizes: dict[str, int]) -> str | None:
    from storage.manifest import FORMAT_VERSION

    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        got = manifest.get("format_version") if isinstance(manifest, dict) else "?"
        return f"manifest.json has format version {got}, not {FORMAT_VERSION}"
    sums = manifest.get("checksums") or {}
    for name in manifest.get("files", []):
        if name not in sizes:
            return f"{name} is missing"
        want = sums.get(name, {}).get("size")
        if want is not None and sizes[name] != want:
            return f"{name} has {sizes[name]} bytes, the manifest says {want}"
    return None


def _remote_damage(out: Output) -> str | None:
    """:meth:`Output.damage` on a remote store: the manifest, then one listing for the sizes."""
    import json

    from storage import fs

    sizes = fs.list_sizes(out.store.location.fs, out.remote_path)
    if sizes is None:
        return "missing"
    if MANIFEST_NAME not in sizes:
        return "no manifest.json (incomplete)"
    raw = _remote_manifest_bytes(out)
    if raw is None:
        return "no manifest.json (incomplete)"
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        return f"unreadable manifest.json ({e})"
    return _check_manifest(manifest, sizes)


def _fetch(out: Output) -> Path:
    """The cache entry holding ``out`` (see :meth:`Output.local_dir`)."""
    from storage import fs
    from storage.cache import CacheVerifyError

    cache = out.store.cache
    entry = cache.remembered(out.location)
    if entry is not None:
        return entry
    raw = _remote_manifest_bytes(out)
    if raw is None:
        raise FileNotFoundError(f"{out.kind.replace('_', ' ')} {out.location} is not published (no manifest.json)")
    remote = out.remote_path

    def download(name: str, local: Path) -> None:
        fs.download_file(out.store.location.fs, f"{remote}/{name}", local)

    try:
        return cache.fetch(out.location, out.kind, out.key, raw, download)
    except CacheVerifyError as e:
        raise CacheVerifyError(f"{out.kind.replace('_', ' ')} {out.location} is damaged in the store: {e}; "
                               f"`graphpipe verify --repair` discards it so that the next run rebuilds it") from None


def _upload(output: Output, staged: Path, replace: bool) -> bool:
    """Upload a staged output: data files first, the manifest last. Returns False when a
    complete copy was already there and kept (``replace=False``)."""
    from storage import fs

    why = _remote_damage(output)
    if why is None and not replace:
        return False
    target_fs = output.store.location.fs
    if why != "missing":  # an old copy, or what a killed upload left: the manifest goes first
        output.discard()
    manifest = read_json(staged / MANIFEST_NAME)
    for name in sorted(manifest.get("files", [])):
        fs.upload_file(target_fs, staged / name, f"{output.remote_path}/{name}")
    fs.upload_file(target_fs, staged / MANIFEST_NAME, f"{output.remote_path}/{MANIFEST_NAME}")
    return True


@dataclass
class Writer:
    """The contents of an output being published: a temporary directory and what went into it.

    Fill it by logical name; ``counts`` and ``extra`` go into the manifest written when the
    ``with store.publish(...)`` block ends without an error.
    """

    output: Output
    dir: Path
    params: dict[str, Any]
    inputs: dict[str, Any]
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def _target(self, name: str, form: str) -> Path:
        fname = file_name(name, form)
        if fname not in self.files:
            self.files.append(fname)
        return self.dir / fname

    def array(self, name: str, arr: np.ndarray) -> None:
        """Write array ``name`` (C order; no pickles)."""
        np.save(self._target(name, "array"), np.ascontiguousarray(arr), allow_pickle=False)

    def new_array(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.memmap:
        """A writable memory-mapped array ``name`` of ``shape``/``dtype`` to fill in place (arrays
        larger than memory). Its disk space is reserved at once, so a full disk is an error here,
        not a crash when a page is written. ``flush()`` and drop it before the block ends."""
        path = self._target(name, "array")
        out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        reserve(path)
        return out

    def json(self, name: str, obj: Any, compact: bool = False) -> None:
        """Write JSON document ``name`` (indented; ``compact``: without whitespace, for large ones)."""
        if compact:
            import json

            write_bytes(self._target(name, "json"), json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        else:
            write_json(self._target(name, "json"), obj)

    def table(self, name: str, table: pa.Table, **options: Any) -> None:
        """Write Arrow table ``name`` as Parquet (``options`` go to ``pyarrow.parquet.write_table``)."""
        import pyarrow.parquet as pq

        pq.write_table(table, self._target(name, "table"), **options)

    def copy_from(self, source: Output, name: str, form: str = "array") -> None:
        """Copy entry ``name`` of another output unchanged."""
        import shutil

        shutil.copyfile(source.local_dir() / file_name(name, form), self._target(name, form))

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A private scratch directory beside the output being written (same file system, so
        large intermediate files do not land on a small ``/tmp``); removed when the block ends.
        For files exchanged with a child process (METIS); never part of the output."""
        import shutil
        import uuid

        d = self.dir / f".scratch-{uuid.uuid4().hex[:8]}"
        d.mkdir()
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def add_files(self, names: list[str]) -> None:
        """Record files written into :attr:`dir` by storage's own format writers (snapshot tables,
        CSR sets). Stage code uses the typed methods above instead."""
        for n in names:
            if n not in self.files:
                self.files.append(n)


@contextmanager
def publish(output: Output, *, params: dict[str, Any], inputs: dict[str, Any],
            replace: bool = False) -> Iterator[Writer]:
    """Publish ``output``: yield a :class:`Writer` over an empty temporary directory; when the
    block ends without an error, write the manifest (last) and rename the directory into place.

    Args:
        output: the output to publish.
        params: the parameters that produced it (recorded in the manifest).
        inputs: the fingerprints (and locations) of the outputs it was built from.
        replace: replace an existing output of the same key (outputs that are not content
            addressed, e.g. an evaluation redone with the same key); by default an existing
            complete copy is kept and the new one discarded, since both are equal.

    On a remote store the temporary directory is on this machine's cache disk; when the block
    ends the data files are uploaded, then the manifest (readers trust only outputs whose
    manifest is present and lists files of the recorded sizes), and the directory becomes the
    output's cache entry (no download to read it back). An upload cut short leaves files
    without a manifest, which :meth:`Output.reusable` deletes and rebuilds; a replaced output's
    old manifest is deleted before its new files are uploaded.

    Caveat: on an error nothing is published, the temporary files are removed and the previous
    output (if any) stays in force; a full disk is reported as :class:`storage.atomic.StoreFullError`.
    """
    if output.store.remote:
        with _publish_remote(output, params=params, inputs=inputs, replace=replace) as writer:
            yield writer
        return
    with publish_dir(output.path, replace=replace) as tmp:
        writer = Writer(output=output, dir=Path(tmp), params=params, inputs=inputs)
        yield writer
        write_manifest(tmp, make_manifest(output.kind, output.key, params=params, inputs=inputs,
                                          counts=writer.counts, files=writer.files, extra=writer.extra))


@contextmanager
def _publish_remote(output: Output, *, params: dict[str, Any], inputs: dict[str, Any],
                    replace: bool) -> Iterator[Writer]:
    """:func:`publish` on a remote store: stage locally, upload data then manifest, adopt."""
    import shutil

    from storage.atomic import disk_full_as_error
    cache = output.store.cache
    staged = cache.staging_dir()
    try:
        with disk_full_as_error(staged):
            writer = Writer(output=output, dir=staged, params=params, inputs=inputs)
            yield writer
            write_manifest(staged, make_manifest(output.kind, output.key, params=params, inputs=inputs,
                                                 counts=writer.counts, files=writer.files, extra=writer.extra))
        cache.forget(output.location)
        if _upload(output, staged, replace):
            cache.adopt(output.location, output.kind, output.key, staged)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def as_output(store: Any, location: str | os.PathLike) -> Output:
    """The :class:`Output` at ``location`` (a path or URI recorded in a stage reference) of ``store``."""
    if store.remote:
        parts = str(location)[len(store.uri) + 1:].split("/") if str(location).startswith(store.uri + "/") else []
        if len(parts) == 4 and parts[0] == "graphs":
            kind = next((k for k, v in KINDS.items() if v == parts[2]), None)
            if kind is not None:
                return Output(store, parts[1], kind, parts[3])
        raise ValueError(f"{location} is not a stage output of the store {store.uri}")
    p = Path(location)
    key, folder, graph = p.name, p.parent.name, p.parent.parent.name
    kind = next((k for k, v in KINDS.items() if v == folder), None)
    if kind is None or p.parent.parent.parent != store.root / "graphs":
        raise ValueError(f"{location} is not a stage output of the store {store.root}")
    return Output(store, graph, kind, key)

