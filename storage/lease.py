"""The graph lock of a remote store: a local lock plus a lease object in the bucket.

A kernel ``flock`` (:mod:`storage.locks`) cannot span machines. For a store on object storage,
:func:`remote_graph_lock` therefore holds two things:

1. the local ``flock`` on this machine's work directory for the graph (one run per machine at a
   time, re-entrant within a process, exactly as for a local store);
2. a **lease object** ``graphs/<name>/LOCK.json`` in the bucket naming its holder (host, pid,
   command, since) and when the lease expires. A run on another machine that finds an unexpired
   lease held by someone else waits, logging the holder, up to ``lock_timeout_seconds``, then
   stops with :class:`storage.locks.LockBusy`. A live holder renews its lease every
   ``LEASE_SECONDS / 3`` from a daemon thread; a killed holder's lease expires after
   :data:`LEASE_SECONDS`, so the next run waits at most that long. The holder deletes the object
   when it is done.

Caveat: pyarrow's S3 client offers no conditional write (compare-and-swap), so taking the lease
is write-then-read-back after a short pause: two runs on different machines that start within
that pause may both go ahead. What they can then damage is limited by the store's design:
outputs are content-addressed and trusted only with a complete manifest (written last), and the
current-snapshot pointer is replaced in one request (the last writer wins). The lease is for
keeping nightly runs and retries from overlapping, not a consensus protocol.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from storage.locks import DEFAULT_TIMEOUT_SECONDS, WAIT_LOG_SECONDS, LockBusy, graph_lock

log = logging.getLogger(__name__)

LEASE = "LOCK.json"
LEASE_SECONDS = 120.0
SETTLE_SECONDS = 1.0  # pause between writing the lease and reading it back
POLL_SECONDS = 2.0

_held: dict[tuple[str, str], list[Any]] = {}  # (store uri, graph) -> [depth, holder id, stop event]
_guard = threading.Lock()


def _lease_doc(holder: str) -> bytes:
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]
    now = time.time()
    return json.dumps({
        "holder": holder, "host": socket.gethostname(), "pid": os.getpid(), "command": cmd,
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "expires": now + LEASE_SECONDS,
    }).encode()


def _read_lease(store: Any, name: str) -> dict[str, Any] | None:
    raw = store.get_object(name, LEASE)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return doc if isinstance(doc, dict) else None
    except ValueError:
        return None  # a damaged lease protects nothing


def _describe(doc: dict[str, Any]) -> str:
    left = float(doc.get("expires", 0)) - time.time()
    return (f"pid {doc.get('pid')} on {doc.get('host')} ({doc.get('command', '')!r}, since {doc.get('since')}; "
            f"lease expires in {max(0.0, left):.0f} s)")


def _take(store: Any, name: str, holder: str, timeout: float) -> None:
    what = f"graph {name!r} in store {store.uri}"
    start, last_log = time.monotonic(), None
    while True:
        doc = _read_lease(store, name)
        if doc is None or doc.get("holder") == holder or float(doc.get("expires", 0)) < time.time():
            store.put_object(name, LEASE, data=_lease_doc(holder))
            time.sleep(SETTLE_SECONDS)
            doc = _read_lease(store, name)
            if doc is not None and doc.get("holder") == holder:
                return
        waited = time.monotonic() - start
        if doc is not None and waited >= timeout:
            raise LockBusy(f"{what} is locked by {_describe(doc)}; gave up after waiting {waited:.0f} s "
                           f"(lease object {store.object_location(name, LEASE)}; set lock_timeout_seconds to wait longer)")
        if doc is not None and (last_log is None or time.monotonic() - last_log >= WAIT_LOG_SECONDS):
            log.warning("waiting for the lease on %s, held by %s (waited %.0f s, will wait up to %.0f s)",
                        what, _describe(doc), waited, timeout)
            last_log = time.monotonic()
        time.sleep(POLL_SECONDS)


def _renew(store: Any, name: str, holder: str, stop: threading.Event) -> None:
    while not stop.wait(LEASE_SECONDS / 3):
        try:
            store.put_object(name, LEASE, data=_lease_doc(holder))
        except OSError as e:  # keep trying: a passing network error must not end the run
            log.warning("could not renew the lease on graph %r in %s: %s", name, store.uri, e)


@contextmanager
def remote_graph_lock(store: Any, name: str, timeout: float | None = None) -> Iterator[None]:
    """Hold graph ``name``'s lock on the remote ``store`` (see the module docstring);
    re-entrant within a process. Raises :class:`storage.locks.LockBusy` after ``timeout``
    seconds (default :data:`storage.locks.DEFAULT_TIMEOUT_SECONDS`)."""
    timeout = DEFAULT_TIMEOUT_SECONDS if timeout is None else float(timeout)
    key = (store.uri, name)
    with graph_lock(store.graph_dir(name), timeout=timeout):
        with _guard:
            entry = _held.get(key)
            if entry is not None:
                entry[0] += 1
        if entry is None:
            holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            _take(store, name, holder, timeout)
            stop = threading.Event()
            threading.Thread(target=_renew, args=(store, name, holder, stop), daemon=True,
                             name=f"graphpipe-lease-{name}").start()
            with _guard:
                _held[key] = [1, holder, stop]
        try:
            yield
        finally:
            _leave(store, name, key)


def _leave(store: Any, name: str, key: tuple[str, str]) -> None:
    with _guard:
        entry = _held[key]
        entry[0] -= 1
        if entry[0] > 0:
            return
        del _held[key]
    _, holder, stop = entry
    stop.set()
    try:
        doc = _read_lease(store, name)
        if doc is not None and doc.get("holder") == holder:
            store.delete_object(name, LEASE)
    except OSError as e:
        log.warning("could not remove the lease on graph %r in %s (it expires by itself): %s", name, store.uri, e)
