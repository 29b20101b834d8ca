"""The local cache of a remote store's outputs, one per worker machine.

Training memory-maps arrays, and stages read Parquet tables and JSON documents with local-file
libraries; on a remote store (:mod:`storage.fs`) :meth:`storage.outputs.Output.local_dir` therefore
returns a directory of this cache holding a verified copy of the output::

    <cache_dir>/outputs/<kind>/<key>-<manifest digest>/    the output's files + manifest.json
                                          .filled          sizes and mtimes recorded when filled
                                          .inuse           flocked (shared) while a process uses it
    <cache_dir>/staging/                                   outputs being published (then adopted)
    <cache_dir>/work/<store digest>/                       per-store local work area (locks, tuning)

- **Content-addressed.** An entry is named by the output's kind and key (its content fingerprint)
  and a digest of its manifest, so a replaced output (same key, new manifest) is a new entry and
  two stores holding the same output share one copy.
- **Verified when filled.** Every file is downloaded into a temporary directory and its size and
  SHA-256 compared with the manifest; a mismatch is downloaded once more, then reported as
  :class:`CacheVerifyError` (the bucket's copy is damaged). The directory is renamed into place
  only when complete. Reuse checks each file's size and modification time against ``.filled``
  (cheap); an entry that fails is removed and filled again.
- **Reused across runs**, and filled by each worker from the bucket: nothing is shared between
  machines but the bucket.
- **Bounded.** After each fill the least-recently-used entries (by ``.filled``'s mtime, touched on
  each use) are removed until the cache is under ``max_bytes``. An entry is never removed while a
  process holds its ``.inuse`` lock (every entry this process handed out, and those other
  processes on this machine use); if those alone exceed the bound, a warning says so.

Settings: ``cache_dir`` (config) or ``$GRAPHPIPE_CACHE_DIR``, default ``~/.cache/graphpipe``;
``cache_max_gb`` (config) or ``$GRAPHPIPE_CACHE_MAX_GB``, default 50.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.fingerprint import fingerprint_file

log = logging.getLogger(__name__)

DEFAULT_MAX_GB = 50.0
FILLED = ".filled"
INUSE = ".inuse"
MANIFEST = "manifest.json"


class CacheVerifyError(OSError):
    """A file fetched from the store does not match its manifest (size or SHA-256), twice."""


def default_cache_dir() -> Path:
    """``$GRAPHPIPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphpipe``, else ``~/.cache/graphpipe``."""
    env = os.environ.get("GRAPHPIPE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "graphpipe"


def default_max_gb() -> float:
    """``$GRAPHPIPE_CACHE_MAX_GB``, else 50."""
    try:
        return float(os.environ.get("GRAPHPIPE_CACHE_MAX_GB") or DEFAULT_MAX_GB)
    except ValueError:
        return DEFAULT_MAX_GB


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class Cache:
    """One cache directory (shared by the processes of a machine); see the module docstring.

    Args:
        root: the cache directory (created when first needed).
        max_bytes: the size bound for the entries (least recently used ones are evicted).
    """

    _instances: dict[str, Cache] = {}
    _instances_guard = threading.Lock()

    def __init__(self, root: str | os.PathLike, max_bytes: int):
        self.root = Path(root).expanduser().resolve()
        self.max_bytes = int(max_bytes)
        self._held: dict[Path, int] = {}  # entry -> fd of its flocked .inuse
        self._memo: dict[str, Path] = {}  # output location -> entry handed out in this process
        self._guard = threading.RLock()

    @classmethod
    def get(cls, root: str | os.PathLike | None = None, max_gb: float | None = None) -> Cache:
        """The process-wide :class:`Cache` of ``root`` (default :func:`default_cache_dir`)."""
        r = Path(root).expanduser().resolve() if root else default_cache_dir().resolve()
        max_bytes = int((max_gb if max_gb is not None else default_max_gb()) * 1e9)
        with cls._instances_guard:
            c = cls._instances.get(str(r))
            if c is None:
                c = cls._instances[str(r)] = Cache(r, max_bytes)
            c.max_bytes = max_bytes
            return c

    @property
    def outputs_dir(self) -> Path:
        return self.root / "outputs"

    def entry_dir(self, kind: str, key: str, manifest_bytes: bytes) -> Path:
        """Where the output ``kind``/``key`` with this manifest is (or would be) cached."""
        return self.outputs_dir / kind / f"{key}-{_digest(manifest_bytes)}"

    def work_dir(self, store_uri: str) -> Path:
        """A local work directory for the store ``store_uri`` on this machine."""
        return self.root / "work" / hashlib.sha256(store_uri.encode()).hexdigest()[:16]

    def staging_dir(self) -> Path:
        """A new empty directory on the cache's disk to publish an output from."""
        d = self.root / "staging" / f"tmp-{uuid.uuid4().hex[:12]}"
        d.mkdir(parents=True)
        return d

    # -- handing out entries --------------------------------------------------------------------
    def remembered(self, location: str) -> Path | None:
        """The entry this process last handed out for ``location``, if it is still there."""
        with self._guard:
            e = self._memo.get(location)
            if e is not None and (e / FILLED).is_file():
                return e
            self._memo.pop(location, None)
            return None

    def forget(self, location: str) -> None:
        """Forget what this process handed out for ``location`` (it was replaced or discarded)."""
        with self._guard:
            self._memo.pop(location, None)

    def fetch(self, location: str, kind: str, key: str, manifest_bytes: bytes,
              download: Callable[[str, Path], None]) -> Path:
        """The verified local copy of an output: reused when sound, else filled with
        ``download(file name, local path)`` for each file its manifest lists.

        Raises :class:`CacheVerifyError` when a file fetched twice does not match the manifest.
        """
        manifest = json.loads(manifest_bytes)
        entry = self.entry_dir(kind, key, manifest_bytes)
        with self._guard:
            self._hold(entry)
            if not self._sound(entry, manifest):
                if entry.exists():
                    log.warning("cache entry %s is damaged or incomplete: fetching it again", entry)
                    self._remove(entry, force=True)
                self._fill(entry, manifest, manifest_bytes, download)
                self._hold(entry)
                self.evict()
            self._touch(entry)
            self._memo[location] = entry
            return entry

    def adopt(self, location: str, kind: str, key: str, staged: Path) -> Path:
        """Make ``staged`` (a directory just published from, manifest included and its checksums
        computed from these very files) the cache entry of the output: no download needed."""
        manifest_bytes = (staged / MANIFEST).read_bytes()
        entry = self.entry_dir(kind, key, manifest_bytes)
        with self._guard:
            self._mark_filled(staged, json.loads(manifest_bytes))
            entry.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staged, entry)
            except OSError:  # an equal entry is already there
                shutil.rmtree(staged, ignore_errors=True)
            self._hold(entry)
            self._touch(entry)
            self._memo[location] = entry
            self.evict()
            return entry

    # -- filling and checking -------------------------------------------------------------------
    def _fill(self, entry: Path, manifest: dict[str, Any], manifest_bytes: bytes,
              download: Callable[[str, Path], None]) -> None:
        sums = manifest.get("checksums") or {}
        tmp = self.root / "staging" / f"fill-{uuid.uuid4().hex[:12]}"
        tmp.mkdir(parents=True)
        try:
            for name in manifest.get("files", []):
                want = sums.get(name, {})
                for attempt in (1, 2):
                    download(name, tmp / name)
                    why = _mismatch(tmp / name, want)
                    if why is None:
                        break
                    if attempt == 2:
                        raise CacheVerifyError(f"{name} fetched twice does not match the manifest: {why}")
                    log.warning("%s fetched into the cache does not match the manifest (%s): fetching it again",
                                name, why)
            (tmp / MANIFEST).write_bytes(manifest_bytes)
            self._mark_filled(tmp, manifest)
            entry.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, entry)
            except OSError:  # another process filled it meanwhile
                if not self._sound(entry, manifest):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _mark_filled(d: Path, manifest: dict[str, Any]) -> None:
        stats = {}
        for name in manifest.get("files", []):
            st = (d / name).stat()
            stats[name] = [st.st_size, st.st_mtime_ns]
        (d / FILLED).write_text(json.dumps(stats))

    @staticmethod
    def _sound(entry: Path, manifest: dict[str, Any]) -> bool:
        try:
            stats = json.loads((entry / FILLED).read_text())
        except (OSError, ValueError):
            return False
        for name in manifest.get("files", []):
            try:
                st = (entry / name).stat()
            except OSError:
                return False
            if stats.get(name) != [st.st_size, st.st_mtime_ns]:
                return False
        return True

    @staticmethod
    def _touch(entry: Path) -> None:
        try:
            os.utime(entry / FILLED)
        except OSError:
            pass

    # -- in-use locks and eviction ----------------------------------------------------------------
    def _hold(self, entry: Path) -> None:
        """Take a shared flock on the entry's ``.inuse`` for the rest of this process."""
        if entry in self._held or not entry.is_dir():
            return
        try:
            fd = os.open(entry / INUSE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return
        fcntl.flock(fd, fcntl.LOCK_SH)
        self._held[entry] = fd

    def _release(self, entry: Path) -> None:
        fd = self._held.pop(entry, None)
        if fd is not None:
            os.close(fd)

    def _remove(self, entry: Path, force: bool = False) -> bool:
        """Remove ``entry`` unless another process uses it (``force``: also one this process holds)."""
        if force:
            self._release(entry)
        elif entry in self._held:
            return False
        try:
            fd = os.open(entry / INUSE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            fd = None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return False
            aside = entry.parent / f".{entry.name}.evicted-{uuid.uuid4().hex[:12]}"
            try:
                os.rename(entry, aside)
            except FileNotFoundError:
                return True
        finally:
            if fd is not None:
                os.close(fd)
        shutil.rmtree(aside, ignore_errors=True)
        return True

    def entries(self) -> list[tuple[float, int, Path]]:
        """``(last use, bytes, entry)`` of every complete entry, least recently used first."""
        out = []
        if not self.outputs_dir.is_dir():
            return out
        for kind_dir in self.outputs_dir.iterdir():
            if not kind_dir.is_dir():
                continue
            for e in kind_dir.iterdir():
                if e.name.startswith(".") or not e.is_dir():
                    continue
                try:
                    used = (e / FILLED).stat().st_mtime
                except OSError:
                    continue
                size = sum(f.stat().st_size for f in e.iterdir() if f.is_file())
                out.append((used, size, e))
        return sorted(out, key=lambda t: t[0])

    def evict(self) -> int:
        """Remove least-recently-used entries until the cache is within :attr:`max_bytes`; never
        one in use. Returns the bytes freed."""
        with self._guard:
            entries = self.entries()
            total = sum(s for _, s, _ in entries)
            freed = 0
            for _, size, e in entries:
                if total <= self.max_bytes:
                    break
                if self._remove(e):
                    total -= size
                    freed += size
                    log.info("cache: evicted %s (%d bytes, least recently used)", e, size)
            if total > self.max_bytes:
                log.warning("cache %s holds %.2f GB in use, over its bound of %.2f GB (cache_max_gb)",
                            self.root, total / 1e9, self.max_bytes / 1e9)
            return freed


def _mismatch(path: Path, want: dict[str, Any]) -> str | None:
    size = path.stat().st_size
    if want.get("size") is not None and size != want["size"]:
        return f"{size} bytes, the manifest says {want['size']}"
    if want.get("sha256") and fingerprint_file(path) != want["sha256"]:
        return "SHA-256 differs from the manifest's"
    return None

