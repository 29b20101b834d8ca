"""The features-only baseline: what the node features give without the graph.

A 2-layer MLP (or logistic regression with ``baseline.hidden: 0``) trained on the same normalized
features, labels and split as the GNN (the node-data arrays of the run), with Adam and early
stopping on validation accuracy. It reads the memory-mapped features in mini-batches of rows, so
it runs in bounded memory on graphs of millions of nodes: each training step reads only its
batch's rows, the per-epoch validation check reads at most ``VAL_CHECK_NODES`` sampled validation
rows, and the final accuracies are computed over every labeled node in row chunks.

Its validation and test accuracy are logged beside every run (``baseline_val_acc``,
``baseline_test_acc``), so a reviewer sees what the graph adds, and the failing-run check
(:mod:`tasks.evaluate.health`) compares the GNN with it.

Reuse (:func:`run_baseline`): a nightly graph that barely grew does not need a new baseline. After
training, the result is stored with what it ran on (:mod:`storage.baseline`); a later run reuses it
when the baseline settings and the features' normalization are the same, its snapshot extends the
one the stored baseline last served (incremental ingest recorded it: :func:`tasks.ingest.incremental.grew_from`),
the labeled nodes grew by at most ``baseline.reuse_max_growth`` since the training, and fewer than
``baseline.max_reuses`` reuses came in a row; otherwise it trains and logs why (as the partition
refresh does).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage.arrays import ClusterGraph
from storage.baseline import read_baseline_record, write_baseline_record
from storage.snapshot import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from storage.store import NodeDataRef, SnapshotRef, Store, output_at
from tasks.config import BaselineConfig
from tasks.ingest.incremental import grew_from

log = logging.getLogger(__name__)

VAL_CHECK_NODES = 20_000  # validation rows read per epoch for early stopping (sampled, seeded)
PREDICT_ROWS = 8192


@dataclass(frozen=True)
class BaselineResult:
    """Accuracy of the features-only model with its best-validation weights."""

    model: str  # "mlp" or "logreg"
    train_acc: float
    val_acc: float
    test_acc: float
    best_epoch: int
    epochs_run: int
    seconds: float
    mode: str = "trained"  # or "reused": the stored result of an earlier run (run_baseline)
    trained_on: str = ""  # the fingerprint of the snapshot it was trained on ("" when not known)
    reason: str = ""  # why it was trained or reused

    def metrics(self) -> dict[str, float]:
        """The MLflow metrics: ``baseline_train_acc``, ``baseline_val_acc``, ``baseline_test_acc``."""
        return {"baseline_train_acc": self.train_acc, "baseline_val_acc": self.val_acc, "baseline_test_acc": self.test_acc}


class FeaturesModel(nn.Module):
    """``hidden > 0``: Linear-ReLU-Linear with dropout on the input and the hidden layer (the MLP
    of Shchur et al. 2018); ``hidden == 0``: logistic regression (one Linear layer).

    The input may be a dense tensor or a sparse COO tensor (features kept sparse in the node data:
    the first layer is then a sparse-dense product, and input dropout applies to the non-zeros).
    ``shift``: features stored as ``x`` whose normalized value is ``x - shift`` (sparse
    standardized features); the first layer subtracts ``shift @ W.T``.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: int, dropout: float, shift: np.ndarray | None = None):
        super().__init__()
        self.dropout = dropout
        self.first = nn.Linear(in_dim, hidden if hidden > 0 else num_classes)
        self.second = nn.Linear(hidden, num_classes) if hidden > 0 else None
        self.register_buffer("shift", None if shift is None else torch.as_tensor(np.asarray(shift, dtype=np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_sparse:
            x = x.coalesce()
            values = F.dropout(x.values(), self.dropout, self.training)
            x = torch.sparse_coo_tensor(x.indices(), values, x.shape, check_invariants=False)
            h = torch.sparse.mm(x, self.first.weight.t()) + self.first.bias
        else:
            h = self.first(F.dropout(x, self.dropout, self.training))
        if self.shift is not None:
            h = h - self.shift @ self.first.weight.t()
        if self.second is None:
            return h
        return self.second(F.dropout(F.relu(h), self.dropout, self.training))


def features_model(in_dim: int, num_classes: int, hidden: int, dropout: float,
                   shift: np.ndarray | None = None) -> nn.Module:
    """The baseline's model (:class:`FeaturesModel`)."""
    return FeaturesModel(in_dim, num_classes, hidden, dropout, shift)


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """Sorted row ids as ``[start, stop)`` ranges of consecutive ids."""
    if len(idx) == 0:
        return []
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    starts = idx[np.r_[0, breaks]]
    stops = idx[np.r_[breaks - 1, len(idx) - 1]] + 1
    return list(zip(starts.tolist(), stops.tolist()))


def _rows(x, idx: np.ndarray) -> torch.Tensor:
    """Rows ``idx`` (sorted) of the memory-mapped features as a float32 tensor (a copy): dense for
    a dense array, sparse COO for features kept as CSR (an object with ``row_ranges`` and ``shape``)."""
    if hasattr(x, "row_ranges"):
        ptr, col, val = x.row_ranges(_runs(idx))
        rows = np.repeat(np.arange(len(idx), dtype=np.int64), np.diff(ptr))
        return torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, np.asarray(col, dtype=np.int64)])),
                                       torch.from_numpy(np.asarray(val, dtype=np.float32)), (len(idx), x.shape[1]),
                                       check_invariants=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32))


@torch.no_grad()
def _accuracy(model: nn.Module, graph: ClusterGraph, idx: np.ndarray, y: np.ndarray) -> float:
    if len(idx) == 0:
        return float("nan")
    model.eval()
    correct = 0
    for a in range(0, len(idx), PREDICT_ROWS):
        rows = idx[a : a + PREDICT_ROWS]
        pred = model(_rows(graph.x, rows)).argmax(dim=1).numpy()
        correct += int((pred == y[rows]).sum())
        graph.release()
    return correct / len(idx)


def train_baseline(node_data: NodeDataRef, config: BaselineConfig, num_classes: int) -> BaselineResult:
    """Train the features-only model on the run's node data; accuracy with the weights of the
    best validation epoch (training accuracy when there is no validation split)."""
    t0 = time.perf_counter()
    graph = ClusterGraph.open(output_at(node_data.partition.path), output_at(node_data.path))
    y = np.array(graph.y, dtype=np.int64)  # copies: N labels and split codes are small
    split = np.array(graph.split)
    labeled = y >= 0
    train_idx = np.flatnonzero((split == SPLIT_TRAIN) & labeled)
    val_idx = np.flatnonzero((split == SPLIT_VAL) & labeled)
    test_idx = np.flatnonzero((split == SPLIT_TEST) & labeled)
    rng = np.random.default_rng(config.seed)
    check_idx = val_idx if len(val_idx) else train_idx
    if len(check_idx) > VAL_CHECK_NODES:
        check_idx = np.sort(rng.choice(check_idx, VAL_CHECK_NODES, replace=False))
    kind = "mlp" if config.hidden > 0 else "logreg"
    y_t = torch.from_numpy(y)

    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state as it was
        torch.manual_seed(config.seed)
        model = features_model(graph.num_features, num_classes, config.hidden, config.dropout,
                               getattr(graph, "x_shift", None))
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        best_val, best_epoch, best_state, stale, epoch = -1.0, 0, copy.deepcopy(model.state_dict()), 0, 0
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = rng.permutation(train_idx)
            for a in range(0, len(order), config.batch_size):
                rows = np.sort(order[a : a + config.batch_size])
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(_rows(graph.x, rows)), y_t[rows])
                loss.backward()
                optimizer.step()
            graph.release()
            val = _accuracy(model, graph, check_idx, y)
            if val > best_val:
                best_val, best_epoch, best_state, stale = val, epoch, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
        model.load_state_dict(best_state)
    result = BaselineResult(
        model=kind,
        train_acc=_accuracy(model, graph, train_idx, y),
        val_acc=_accuracy(model, graph, val_idx, y),
        test_acc=_accuracy(model, graph, test_idx, y),
        best_epoch=best_epoch,
        epochs_run=epoch,
        seconds=time.perf_counter() - t0,
    )
    log.info("baseline (%s, features only): train_acc %.4f, val_acc %.4f, test_acc %.4f (best epoch %d of %d, %.1f s)",
             kind, result.train_acc, result.val_acc, result.test_acc, best_epoch, epoch, result.seconds)
    return result


# -- reuse ----------------------------------------------------------------------------------------

_POLICY = ("enabled", "reuse", "reuse_max_growth", "max_reuses")  # not part of what a result depends on
_RESULT = ("model", "train_acc", "val_acc", "test_acc", "best_epoch", "epochs_run", "seconds")


def baseline_settings(config: BaselineConfig, num_classes: int) -> dict[str, Any]:
    """What a baseline result depends on besides the data: the training settings (not the reuse
    policy) and the number of classes."""
    settings = {k: v for k, v in config.model_dump(mode="json").items() if k not in _POLICY}
    return {**settings, "num_classes": int(num_classes)}


def _facts(node_data: NodeDataRef) -> dict[str, Any]:
    """Tonight's labeled-node count and features' normalization (the first layer's layout)."""
    from tasks.train.steps import feature_layout

    graph = ClusterGraph.open(output_at(node_data.partition.path), output_at(node_data.path))
    return {"labeled": int(np.count_nonzero(np.asarray(graph.y) >= 0)),
            "normalization": feature_layout(node_data, graph)}


def reuse_problem(record: dict[str, Any] | None, *, snapshot: SnapshotRef, store: Store, config: BaselineConfig,
                  settings: dict[str, Any], facts: dict[str, Any]) -> str:
    """Why the stored baseline ``record`` cannot serve this run (a reason to train), or ``""``.

    Args:
        record: the graph's stored baseline (:func:`storage.baseline.read_baseline_record`).
        snapshot: this run's snapshot.
        store: the store (the snapshots' manifests record their incremental-ingest lineage).
        config: the baseline section (the reuse policy).
        settings: :func:`baseline_settings` of this run.
        facts: this run's labeled-node count and normalization (``_facts``).
    """
    if not config.reuse:
        return "baseline.reuse=false"
    if record is None:
        return "no stored baseline of this graph"
    try:
        if record["settings"] != settings:
            changed = sorted(k for k in {*settings, *record["settings"]} if record["settings"].get(k) != settings.get(k))
            return f"the baseline settings changed since the stored baseline ({', '.join(changed)})"
        if record["normalization"] != facts["normalization"]:
            return "the features' normalization changed since the stored baseline"
        if int(record["reuses"]) >= config.max_reuses:
            return f"reused {record['reuses']} times in a row (baseline.max_reuses={config.max_reuses})"
        why = grew_from(store, snapshot.name, snapshot.fingerprint, str(record["last_snapshot"]))
        if why is not None:
            return f"the snapshot does not extend the stored baseline's: {why}"
        before = int(record["labeled"])
        growth = (facts["labeled"] - before) / max(before, 1)
        if not 0 <= growth <= config.reuse_max_growth:
            return (f"the labeled nodes grew by {100 * growth:.1f}% ({before} -> {facts['labeled']}) since the stored "
                    f"baseline was trained (baseline.reuse_max_growth={100 * config.reuse_max_growth:.1f}%)")
    except (KeyError, TypeError, ValueError) as e:
        return f"the stored baseline record is incomplete ({e!r})"
    return ""


def run_baseline(node_data: NodeDataRef, snapshot: SnapshotRef, config: BaselineConfig, num_classes: int,
                 store: Store) -> BaselineResult:
    """The run's features-only baseline: the graph's stored result when it may be reused
    (:func:`reuse_problem`), else a newly trained one (:func:`train_baseline`), stored for later
    runs. The reason is logged and kept in the result's ``reason``.

    Caveat: a reused result's accuracies are those measured on the snapshot it was trained on
    (its ``trained_on``), whose labeled nodes differ from tonight's by at most ``reuse_max_growth``.
    """
    settings = baseline_settings(config, num_classes)
    facts = _facts(node_data)
    record = read_baseline_record(store, snapshot.name)
    why = reuse_problem(record, snapshot=snapshot, store=store, config=config, settings=settings, facts=facts)
    if not why and record is not None:
        reuses = int(record["reuses"]) + 1
        reason = (f"the snapshot extends {record['last_snapshot']}; labeled nodes {record['labeled']} -> "
                  f"{facts['labeled']}; reuse {reuses} of at most {config.max_reuses} in a row")
        write_baseline_record(store, snapshot.name, {**record, "reuses": reuses, "last_snapshot": snapshot.fingerprint})
        log.info("baseline: reused from snapshot %s (%s)", record["trained_on"], reason)
        return BaselineResult(**{k: record["result"][k] for k in _RESULT}, mode="reused",
                              trained_on=str(record["trained_on"]), reason=reason)
    log.info("baseline: training (%s)", why)
    result = replace(train_baseline(node_data, config, num_classes), trained_on=snapshot.fingerprint, reason=why)
    write_baseline_record(store, snapshot.name, {
        "result": {k: v for k, v in asdict(result).items() if k in _RESULT}, "trained_on": snapshot.fingerprint,
        "last_snapshot": snapshot.fingerprint, "labeled": facts["labeled"], "settings": settings,
        "normalization": facts["normalization"], "reuses": 0})
    return result
