"""A training run's checkpoint set in the store: typed reading and writing by role, never by path.

One set per checkpoint key (the fingerprint of the node data, the training settings and the
initial weights), at ``<store>/graphs/<graph>/checkpoints/<key>/``::

    ckpt = Checkpoints(store, "cora", key)
    with ckpt.lock(timeout=600):                 # one training at a time writes a set
        saved = ckpt.last()                      # the resumable state after the last epoch, or None
        ckpt.save_last({...})                    # after every epoch (atomic replace)
        ckpt.save_model({...})                   # the best-validation weights + history, at the end
        ckpt.save_result(run_id, {...})          # the hand-off to the flow run that started training
    history = ckpt.history()                     # per-epoch metrics of the finished run
    found = find_result(store, "cora", run_id)   # the parent flow finds the hand-off by run id alone

Checkpoints are written with ``torch.save`` into bytes and stored through
:meth:`storage.store.Store.put_object` (atomic replace), read back through
:meth:`~storage.store.Store.get_object` and ``torch.load(weights_only=True)``: tensors, numbers,
strings, lists and dicts only, so a tampered checkpoint cannot run code. Going through the store's
object interface (not file paths) is what lets the store live elsewhere (object storage) later.
Callers hand plain data (see :func:`tasks.train.model.plain_checkpoint`).
"""

from __future__ import annotations

import io
import json
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.atomic import disk_full_as_error
from tasks.errors import UnsafeFileError

if TYPE_CHECKING:
    from pathlib import Path

    from storage.store import Store

FOLDER = "checkpoints"
LAST = "last.pt"  # the resumable state after the latest epoch
MODEL = "model.pt"  # the best-validation weights, the model spec and the per-epoch history
_RESULT = re.compile(r"^result-(?P<run>[\w.-]+)\.json$")


def _result_name(run_id: str) -> str:
    name = f"result-{run_id}.json"
    if not _RESULT.match(name):
        raise ValueError(f"{run_id!r} is not a valid run id for a training hand-off")
    return name


def load_torch_bytes(data: bytes, where: str) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of ``data`` (read from ``where``, named in errors).

    Raises:
        tasks.errors.UnsafeFileError: the bytes hold anything but tensors and plain data (one line).
    """
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        reason = f"it would call {found.group(1)}" if found else "it holds objects other than tensors and plain data"
        raise UnsafeFileError(
            f"{where}: refused to load this checkpoint: {reason} (checkpoints may only hold tensors, numbers, "
            "strings, lists and dicts; nothing else is ever unpickled, so a tampered file cannot run code)"
        ) from None


def torch_bytes(obj: dict[str, Any]) -> bytes:
    """``obj`` serialized with ``torch.save`` (plain data and tensors; see the module docstring)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@dataclass(frozen=True)
class Checkpoints:
    """The checkpoint set of one training configuration.

    Args:
        store: the store holding it.
        graph: the graph's name.
        key: the checkpoint key (``tasks.train.loop.checkpoint_key``).
    """

    store: Store
    graph: str
    key: str

    @property
    def location(self) -> str:
        """Where the set lives, for references, tags and messages (read through the methods)."""
        return str(self.store.object_path(self.graph, FOLDER, self.key))

    def local_dir(self) -> Path:
        """A local directory of the set (the set itself on a local store): scratch space for
        full-graph inference and the place evaluation outputs are written beside the weights."""
        return self.store.local_object_dir(self.graph, FOLDER, self.key)

    def _get(self, name: str) -> dict[str, Any] | None:
        data = self.store.get_object(self.graph, FOLDER, self.key, name)
        if data is None:
            return None
        return load_torch_bytes(data, str(self.store.object_path(self.graph, FOLDER, self.key, name)))

    def _put(self, name: str, obj: dict[str, Any]) -> None:
        self.store.put_object(self.graph, FOLDER, self.key, name, data=torch_bytes(obj))

    @classmethod
    def at(cls, location: str) -> Checkpoints:
        """The set at ``location`` (a :attr:`location` recorded in a training result: a path, or
        a URI on a remote store), its store found from the location itself."""
        from storage.store import Store

        root, sep, rest = str(location).rpartition("/graphs/")
        parts = rest.split("/")
        if not sep or not root or len(parts) != 3 or parts[1] != FOLDER or not parts[0] or not parts[2]:
            raise ValueError(f"{location} is not a checkpoint set of a store")
        return cls(Store(root), parts[0], parts[2])

    # -- the resumable state ------------------------------------------------------------------
    def last(self) -> dict[str, Any] | None:
        """The state saved after the latest epoch (model, optimizer, RNG, bookkeeping), or None."""
        return self._get(LAST)

    def save_last(self, state: dict[str, Any]) -> None:
        """Replace the resumable state atomically (a reader sees the old one or the new one)."""
        self._put(LAST, state)

    # -- the trained model ------------------------------------------------------------------
    def model_bytes(self) -> bytes | None:
        """The saved model's file as stored (to hand on unchanged, e.g. as an MLflow artifact)."""
        return self.store.get_object(self.graph, FOLDER, self.key, MODEL)

    def model(self) -> dict[str, Any] | None:
        """The finished run's record: ``spec``, ``state_dict`` (best validation), ``num_classes``,
        ``best_epoch``, ``history``; None before a run finished."""
        return self._get(MODEL)

    def save_model(self, record: dict[str, Any]) -> None:
        """Store the finished run's record (see :meth:`model`)."""
        self._put(MODEL, record)

    def model_location(self) -> str:
        """Where :meth:`model` is stored, for loaders that take a path (warm start, MLflow
        artifacts); a local path on a local store."""
        return str(self.store.object_path(self.graph, FOLDER, self.key, MODEL))

    def history(self) -> list[dict[str, Any]]:
        """Per-epoch metrics of the finished run (empty before one finished)."""
        record = self.model()
        return list(record["history"]) if record else []

    # -- the hand-off to the parent flow run -----------------------------------------------
    def save_result(self, run_id: str, result: dict[str, Any]) -> None:
        """The training result for the flow run tracked as MLflow run ``run_id``: read back by
        :func:`find_result` in the flow run that started training (possibly on another machine)."""
        self.store.put_object(self.graph, FOLDER, self.key, _result_name(run_id),
                              data=json.dumps(result, indent=1).encode())

    # -- exclusive use ---------------------------------------------------------------------
    @contextmanager
    def lock(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the set's lock (:func:`storage.locks.checkpoint_lock`) for a whole training: two
        runs with the same data and settings never write one set at once; the second waits up to
        ``timeout`` seconds, then stops with a clear error. A full disk while writing is reported
        as :class:`storage.atomic.StoreFullError`."""
        from storage.locks import checkpoint_lock

        d = self.local_dir()
        with checkpoint_lock(d, timeout=timeout), disk_full_as_error(d):
            yield


def graph_of(node_data_location: str) -> str:
    """The name of the graph whose node data output is at ``node_data_location`` (a path a
    :class:`storage.store.NodeDataRef` recorded, in this store or another one)."""
    from pathlib import Path

    from storage.outputs import KINDS

    p = Path(node_data_location)
    if p.parent.name != KINDS["node_data"] or not p.parent.parent.name:
        raise ValueError(f"{node_data_location} is not a node data output of a store")
    return p.parent.parent.name


def find_result(store: Store, graph: str, run_id: str) -> dict[str, Any] | None:
    """The training result handed off for MLflow run ``run_id`` of ``graph`` (see
    :meth:`Checkpoints.save_result`), whichever checkpoint set holds it; None when there is none.
    The caller need not know the checkpoint key: the training run decided it."""
    name = _result_name(run_id)
    for key in store.list_objects(graph, FOLDER):
        data = store.get_object(graph, FOLDER, key, name)
        if data is not None:
            return json.loads(data)
    return None
