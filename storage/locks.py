"""Exclusive locks on a graph (and on a checkpoint directory) while a run writes to it.

A lock is a kernel ``flock`` on a small file (``graphs/<name>/.lock``, ``checkpoints/<key>/.lock``).
The kernel drops it when its holder's process ends, however it ends (a SIGKILL included), so a lock
is never stale: a killed run's lock is free for the next run at once. The lock file itself stays;
it holds a line about its current holder (pid, host, command, since when) so that a waiting run can
say whom it waits for.

A second run of the same graph waits for the lock, logging whom it waits for, up to a configurable
time (``lock_timeout_seconds`` in the config), then stops with :class:`LockBusy`, a one-line error.
Within one process the locks are re-entrant: a flow holding the graph's lock calls stages that take
it again.

Whoever takes a graph's lock first in a process also removes what dead runs left behind:
temporary ``.<name>.tmp-*`` and ``.<name>.damaged-*`` entries beside the graph's outputs (no live
run can own them while the lock is held; those in a checkpoint directory only when that
directory's own lock is free too).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.errors import InputError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
DEFAULT_TIMEOUT_SECONDS = 600.0
POLL_SECONDS = 0.5
WAIT_LOG_SECONDS = 60.0
_LEFTOVER = re.compile(r"^\..+\.(tmp|damaged)-[0-9a-f]{12}$")

_held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth) in this process
_guard = threading.Lock()


class LockBusy(InputError):
    """Another live run holds the lock and did not release it in time."""


def _holder_line(what: str) -> str:
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]
    return json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "command": cmd, "what": what,
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })


def read_holder(lock_path: str | os.PathLike) -> str:
    """Who holds (or last held) the lock, in words, from the lock file's line."""
    try:
        info = json.loads(Path(lock_path).read_text() or "{}")
    except (OSError, ValueError):
        return "another run (no details in the lock file)"
    if not info:
        return "another run (no details in the lock file)"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}) since {info.get('since')}"


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def is_locked(lock_path: str | os.PathLike) -> bool:
    """True when a live process (another one, or this one) holds the lock at ``lock_path``."""
    key = str(Path(lock_path))
    if key in _held:
        return True
    try:
        fd = os.open(key, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        if _try_flock(fd):
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return True
    finally:
        os.close(fd)


@contextmanager
def exclusive(lock_path: str | os.PathLike, *, what: str, timeout: float | None = None,
              on_acquired=None) -> Iterator[None]:
    """Hold the lock at ``lock_path`` for the body: wait up to ``timeout`` seconds (default
    :data:`DEFAULT_TIMEOUT_SECONDS`; 0 = do not wait), logging whom it waits for, then raise
    :class:`LockBusy`. Re-entrant within a process. ``on_acquired()`` runs once when this process
    takes the lock (not on re-entry)."""
    path = Path(lock_path)
    key = str(path)
    timeout = DEFAULT_TIMEOUT_SECONDS if timeout is None else float(timeout)
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            _release(key)
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        start = time.monotonic()
        last_log = None
        while not _try_flock(fd):
            waited = time.monotonic() - start
            if waited >= timeout:
                raise LockBusy(
                    f"{what} is locked by {read_holder(path)}; gave up after waiting {waited:.0f} s "
                    f"(lock file {path}; set lock_timeout_seconds to wait longer)"
                )
            if last_log is None or time.monotonic() - last_log >= WAIT_LOG_SECONDS:
                log.warning("waiting for the lock on %s, held by %s (waited %.0f s, will wait up to %.0f s)",
                            what, read_holder(path), waited, timeout)
                last_log = time.monotonic()
            time.sleep(min(POLL_SECONDS, max(0.01, timeout - waited)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder_line(what) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    with _guard:
        _held[key] = (fd, 1)
    try:
        if on_acquired is not None:
            on_acquired()
        yield
    finally:
        _release(key)


def _release(key: str) -> None:
    with _guard:
        fd, depth = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1)
            return
        del _held[key]
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    os.close(fd)  # closing the last descriptor releases the flock


def graph_lock_path(graph_dir: str | os.PathLike) -> Path:
    return Path(graph_dir) / LOCK_FILE


@contextmanager
def graph_lock(graph_dir: str | os.PathLike, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock of the graph stored in ``graph_dir`` (``<store>/graphs/<name>``); the first
    holder in a process removes leftovers of dead runs (see :func:`remove_leftovers`)."""
    gdir = Path(graph_dir)
    with exclusive(graph_lock_path(gdir), what=f"graph {gdir.name!r} in store {gdir.parent.parent}",
                   timeout=timeout, on_acquired=lambda: remove_leftovers(gdir)):
        yield


@contextmanager
def checkpoint_lock(checkpoint_dir: str | os.PathLike, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the lock of one checkpoint directory: one training at a time writes it."""
    d = Path(checkpoint_dir)
    with exclusive(d / LOCK_FILE, what=f"checkpoint directory {d}", timeout=timeout,
                   on_acquired=lambda: _remove_in(d)):
        yield


def _remove_in(directory: Path) -> list[Path]:
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for p in entries:
        if _LEFTOVER.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    continue
            removed.append(p)
    return removed


def remove_leftovers(graph_dir: str | os.PathLike) -> list[Path]:
    """Remove temporary and set-aside entries that dead runs left in the graph's directory, its
    output folders and (when their own lock is free) its checkpoint directories. Call it only while
    holding the graph's lock. Returns what was removed (and logs it)."""
    gdir = Path(graph_dir)
    removed = _remove_in(gdir)
    if gdir.is_dir():
        for kind in gdir.iterdir():
            if not kind.is_dir() or kind.name.startswith("."):
                continue
            removed += _remove_in(kind)
            if kind.name == "checkpoints":
                for ckpt in kind.iterdir():
                    if ckpt.is_dir() and not _LEFTOVER.match(ckpt.name) and not is_locked(ckpt / LOCK_FILE):
                        removed += _remove_in(ckpt)
    if removed:
        log.warning("removed %d temporary entries left by interrupted runs: %s", len(removed),
                    ", ".join(str(p.relative_to(gdir)) for p in removed[:10]) + (" ..." if len(removed) > 10 else ""))
    return removed
