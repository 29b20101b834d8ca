"""The graph's most recent output of a kind: a small pointer object beside ``CURRENT.json``.

A stage that builds on its own previous result (the partition refresh keeps the last partition's
clusters) finds that result here, not by listing folders: :func:`set_latest` is called after an
output is published (or reused), :func:`latest` returns it while it is still complete.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.outputs import Output
    from storage.store import Store

log = logging.getLogger(__name__)


def _object_name(kind: str) -> str:
    return f"LATEST_{kind.upper()}.json"


def set_latest(store: Store, output: Output) -> None:
    """Record ``output`` (published, complete) as its graph's most recent output of its kind
    (replaced in one step)."""
    data = {"kind": output.kind, "key": output.key, "location": output.location}
    store.put_object(output.graph, _object_name(output.kind),
                     data=(json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def latest(store: Store, graph: str, kind: str) -> Output | None:
    """The most recent output of ``kind`` recorded for ``graph`` by :func:`set_latest`, or
    ``None`` when there is none, the pointer is unreadable, or the output is no longer complete
    (then it is logged; the caller starts afresh)."""
    raw = store.get_object(graph, _object_name(kind))
    if raw is None:
        return None
    try:
        key = json.loads(raw)["key"]
        out = store.output(graph, kind, str(key))
        why = out.damage()
    except (ValueError, KeyError, TypeError) as e:
        log.warning("the latest-%s pointer of graph %r is unreadable (%s): ignored", kind, graph, e)
        return None
    if why is not None:
        log.info("the latest %s of graph %r, %s, is not available (%s)", kind, graph, out.location, why)
        return None
    return out
