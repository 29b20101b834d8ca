"""Full-graph evaluation: layer-wise inference over blocks of clusters with all neighbours.

As in the Cluster-GCN paper and PyG's example, layer ``l`` is computed for every node before layer
``l+1`` starts, each block of consecutive clusters reading its rows' neighbours from the previous
layer's output wherever they are, so no edge is dropped. Only one layer's output is held in memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from storage.arrays import ClusterGraph
from storage.atomic import publish_dir
from storage.snapshot import SPLIT_TEST, read_node_ids
from storage.store import NodeDataRef, SnapshotRef
from tasks.batching import block_bounds, row_block, split_masks
from tasks.config import PipelineConfig
from tasks.model import GNN, load_trained, resolve_device

if TYPE_CHECKING:
    from tasks.train import TrainResult

log = logging.getLogger(__name__)


@torch.no_grad()
def infer_full_graph(
    model: GNN,
    graph: ClusterGraph,
    device: torch.device,
    block_nodes: int = 20_000,
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, hidden)`` for every node in partition order; ``hidden`` is the input of the
    last layer (the learned node embedding)."""
    model.eval()
    kind = model.spec.kind
    blocks = [row_block(graph, a, b, kind) for a, b in block_bounds(graph, block_nodes)]
    h: np.ndarray = graph.x
    hidden: np.ndarray = graph.x
    for i in range(model.num_layers):
        out = None
        for block in blocks:
            x_src = torch.from_numpy(np.ascontiguousarray(h[block.sources], dtype=np.float32)).to(device)
            y = model.layer(i, x_src, block.adj.to(device), block.stop - block.start).cpu().numpy()
            if out is None:
                out = np.empty((graph.num_nodes, y.shape[1]), dtype=np.float32)
            out[block.start : block.stop] = y
        if i == model.num_layers - 1:
            return out, hidden
        hidden = h = out
    raise AssertionError("unreachable")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[t, p]`` = number of nodes of true class ``t`` predicted as ``p``."""
    idx = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``
    (scikit-learn's ``f1_score(average="macro")`` with ``labels`` = those classes)."""
    if len(y_true) == 0:
        return float("nan")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean())


@dataclass
class SplitMetrics:
    acc: dict[str, float]
    macro_f1: dict[str, float]

    def flat(self) -> dict[str, float]:
        out = {f"{s}_acc": v for s, v in self.acc.items()}
        out.update({f"{s}_macro_f1": v for s, v in self.macro_f1.items()})
        return out


def split_metrics(logits: np.ndarray, y: np.ndarray, split: np.ndarray, num_classes: int) -> SplitMetrics:
    """Accuracy and macro-F1 on the train/val/test masks (unlabeled nodes never count)."""
    pred = logits.argmax(axis=1)
    acc, f1 = {}, {}
    for name, mask in split_masks(np.asarray(split)).items():
        mask = mask & (y >= 0)
        acc[name] = accuracy(y[mask], pred[mask])
        f1[name] = macro_f1(y[mask], pred[mask], num_classes)
    return SplitMetrics(acc, f1)


@dataclass(frozen=True)
class EvaluationRef:
    """The evaluation of a trained model: metrics, and where its outputs are."""

    path: str
    metrics: dict[str, float]


def embedding_sample(hidden: np.ndarray, y: np.ndarray, max_nodes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA coordinates of at most ``max_nodes`` random nodes' embeddings, with their labels."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(hidden), size=min(max_nodes, len(hidden)), replace=False))
    h = np.asarray(hidden[idx], dtype=np.float64)
    h -= h.mean(axis=0)
    _, _, vt = np.linalg.svd(h, full_matrices=False)
    coords = h @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([h[:, 0], np.zeros(len(h))])
    return coords.astype(np.float32), np.asarray(y[idx])


def evaluate_model(
    train_result: TrainResult,
    node_data: NodeDataRef,
    snapshot: SnapshotRef,
    config: PipelineConfig,
) -> EvaluationRef:
    """Score every node with the best-validation model; write metrics, predictions (in the user's
    node ids), the test confusion matrix and an embedding sample to ``<checkpoint>/evaluation``."""
    graph = ClusterGraph.open(node_data.partition.path, node_data.path)
    model, saved = load_trained(train_result.checkpoint_dir)
    device = resolve_device(config.train.device)
    logits, hidden = infer_full_graph(model.to(device), graph, device)
    y, split = np.asarray(graph.y), np.asarray(graph.split)
    num_classes = train_result.num_classes
    metrics = split_metrics(logits, y, split, num_classes).flat()
    metrics["best_epoch"] = float(saved["best_epoch"])
    pred = logits.argmax(axis=1)
    test = (split == SPLIT_TEST) & (y >= 0)
    cm = confusion_matrix(y[test], pred[test], num_classes)
    coords, coord_labels = embedding_sample(hidden, y, config.track.embedding_plot_nodes, config.train.seed)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).max(dim=1).values.numpy()
    # partition order -> snapshot order -> the user's ids
    order = np.empty_like(np.asarray(graph.perm))
    order[np.asarray(graph.perm)] = np.arange(graph.num_nodes)
    out = Path(train_result.checkpoint_dir) / "evaluation"
    with publish_dir(out, replace=True) as tmp:
        pq.write_table(
            pa.table(
                {
                    "node_id": read_node_ids(snapshot.path),
                    "prediction": pa.array(pred[order].astype(np.int32)),
                    "confidence": pa.array(probs[order].astype(np.float32)),
                    "label": pa.array(y[order].astype(np.int32)),
                    "split": pa.array(split[order].astype(np.int8)),
                }
            ),
            tmp / "predictions.parquet",
        )
        np.save(tmp / "confusion_test.npy", cm)
        np.savez(tmp / "embeddings_2d.npz", coords=coords, labels=coord_labels)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log.info("evaluate: %s", {k: round(v, 4) for k, v in metrics.items()})
    return EvaluationRef(path=str(out), metrics=metrics)
