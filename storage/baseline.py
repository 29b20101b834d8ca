"""A graph's stored features-only baseline: the result of its last training, for later runs to reuse.

One small object per graph beside ``CURRENT.json`` (:meth:`storage.store.Store.put_object`),
replaced in one step. It holds what :mod:`tasks.evaluate.baseline` decides reuse on: the result
(accuracies), the snapshot it was trained on and the last snapshot it served, the labeled-node
count, the baseline settings, the features' normalization and the consecutive reuses. Tasks read
and write it through these functions and never name the object.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from storage.store import Store

log = logging.getLogger(__name__)

_OBJECT = "BASELINE.json"


def write_baseline_record(store: Store, graph: str, record: dict[str, Any]) -> None:
    """Save graph ``graph``'s baseline record (JSON-serializable), replacing the previous one."""
    store.put_object(graph, _OBJECT, data=(json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def read_baseline_record(store: Store, graph: str) -> dict[str, Any] | None:
    """Graph ``graph``'s baseline record, or ``None`` when there is none or it is unreadable (then
    it is logged; the caller trains afresh)."""
    raw = store.get_object(graph, _OBJECT)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError as e:
        log.warning("the stored baseline of graph %r is unreadable (%s): ignored", graph, e)
        return None
    return record if isinstance(record, dict) else None
