"""Publish files and directories all at once or not at all.

Everything is written under a temporary name beside its final place and renamed into place when
complete, so a reader never sees half an output and a failed run leaves the previous one intact.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.errors import InputError


def _tmp_sibling(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_STAGE_OF = {"snapshots": "ingest", "features": "normalize", "partitions": "partition",
             "node_data": "layout-node-data", "checkpoints": "train", "evaluation": "evaluate",
             "predictions": "evaluate", "warm_start": "champion-weights"}


_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


def _is_disk_full(exc: BaseException, path: Path | None = None) -> bool:
    """ENOSPC/EDQUOT/EFBIG, also when a library reports it only in its message (pyarrow), or as a
    short write without an errno (numpy's ``tofile``: "N requested and M written") on a file
    system that has less room left than was requested."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in _FULL:
        return True
    text = str(exc)
    if any(m in text for m in ("No space left on device", "Disk quota exceeded", "[errno 28]", "File too large")):
        return True
    short = _SHORT_WRITE.search(text)
    if short and path is not None:
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            st = os.statvfs(probe)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < int(short.group(1))
    return False


def stage_of(path: Path) -> str:
    """The pipeline stage that writes ``path`` in the store layout (for error messages)."""
    for part in (path.name, path.parent.name, path.parent.parent.name):
        if part in _STAGE_OF:
            return _STAGE_OF[part]
    return "store"


class StoreFullError(InputError):
    """The store's disk (or quota) is full: the message names the stage and the path; nothing
    partial was published. Reported like a user's mistake (one line, exit status 2, no retries)."""


def _disk_full_error(exc: BaseException, final: Path) -> StoreFullError:
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    return StoreFullError(
        f"{stage_of(final)} stage: no space left while writing {final} ({why}); the temporary files "
        f"were removed and the previous output is still current: free space on that disk and run again"
    )


@contextmanager
def publish_dir(final: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; on success rename it to ``final``.

    If ``final`` already exists when the body finishes: with ``replace=False`` (content-addressed
    directories, where both copies are equal) the new copy is discarded; with ``replace=True`` the
    old one is moved aside, the new one renamed into place, then the old one deleted.
    On an exception the temporary directory is removed and ``final`` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        if replace and final.exists():
            old = _tmp_sibling(final)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(final.parent)
    except BaseException as exc:
        full = _is_disk_full(exc, final)  # before the space is freed
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise _disk_full_error(exc, final) from exc
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        full = _is_disk_full(exc, path)
        tmp.unlink(missing_ok=True)
        if full:
            raise _disk_full_error(exc, path) from exc
        raise


@contextmanager
def disk_full_as_error(path: str | os.PathLike) -> Iterator[None]:
    """Report a full disk met in the body as :class:`StoreFullError` naming ``path``'s stage."""
    try:
        yield
    except StoreFullError:
        raise
    except OSError as exc:
        if _is_disk_full(exc, Path(path)):
            raise _disk_full_error(exc, Path(path)) from exc
        raise


def reserve(path: str | os.PathLike) -> None:
    """Allocate a file's full size on disk now (``posix_fallocate``), so that a full disk is an
    ``OSError`` (ENOSPC) here rather than a SIGBUS later when pages of a memory map of it are
    written. Call it on a ``.npy`` file opened with ``open_memmap(mode="w+")`` before filling it."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # not supported there: best effort
                    return
                raise
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
