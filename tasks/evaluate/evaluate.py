"""The evaluate stage: score every node with the best-validation model (full-graph inference,
:mod:`tasks.evaluate.inference`), compute the metrics (:mod:`tasks.evaluate.metrics`), and write
predictions, the test confusion matrix and a 2-D embedding sample."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from storage.arrays import ClusterGraph
from storage.atomic import publish_dir
from storage.snapshot import SPLIT_TEST, read_node_ids
from storage.store import NodeDataRef, SnapshotRef
from tasks.config import PipelineConfig
from tasks.evaluate.inference import iter_full_graph
from tasks.evaluate.metrics import confusion_matrix, split_metrics
from tasks.train.model import load_trained, resolve_device
from tasks.train.records import TrainResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationRef:
    """The evaluation of a trained model: metrics, and where its outputs are."""

    path: str
    metrics: dict[str, float]


def embedding_sample(hidden_rows: np.ndarray) -> np.ndarray:
    """2-D PCA coordinates of the given embedding rows."""
    h = np.asarray(hidden_rows, dtype=np.float64)
    h -= h.mean(axis=0)
    _, _, vt = np.linalg.svd(h, full_matrices=False)
    coords = h @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([h[:, 0], np.zeros(len(h))])
    return coords.astype(np.float32)


def evaluate_model(
    train_result: TrainResult,
    node_data: NodeDataRef,
    snapshot: SnapshotRef,
    config: PipelineConfig,
) -> EvaluationRef:
    """Score every node with the best-validation model; write metrics, predictions (in the user's
    node ids), the test confusion matrix and a 2-D embedding of a node sample to
    ``<checkpoint>/evaluation``."""
    graph = ClusterGraph.open(node_data.partition.path, node_data.path)
    model, saved = load_trained(train_result.checkpoint_dir)
    device = resolve_device(config.train.device)
    n = graph.num_nodes
    rng = np.random.default_rng(config.train.seed)
    sample = np.sort(rng.choice(n, size=min(config.track.embedding_plot_nodes, n), replace=False))
    pred = np.empty(n, dtype=np.int32)
    confidence = np.empty(n, dtype=np.float32)
    sample_hidden: list[np.ndarray] = []
    blocks = iter_full_graph(model.to(device), graph, device, scratch_dir=train_result.checkpoint_dir)
    for blk in blocks:
        a, b = blk.start, blk.stop
        probs = torch.softmax(torch.from_numpy(blk.logits), dim=1)
        confidence[a:b], pred[a:b] = (t.numpy() for t in probs.max(dim=1))
        sample_hidden.append(np.array(blk.hidden[sample[(sample >= a) & (sample < b)] - a], dtype=np.float32))
    y, split = np.array(graph.y), np.array(graph.split)
    num_classes = train_result.num_classes
    metrics = split_metrics(pred, y, split, num_classes).flat()
    metrics["best_epoch"] = float(saved["best_epoch"])
    test = (split == SPLIT_TEST) & (y >= 0)
    cm = confusion_matrix(y[test], pred[test], num_classes)
    coords = embedding_sample(np.concatenate(sample_hidden))
    # partition order -> snapshot order -> the user's ids
    perm = np.array(graph.perm)
    order = np.empty_like(perm)
    order[perm] = np.arange(n)
    graph.release()
    out = Path(train_result.checkpoint_dir) / "evaluation"
    with publish_dir(out, replace=True) as tmp:
        pq.write_table(
            pa.table(
                {
                    "node_id": read_node_ids(snapshot.path),
                    "prediction": pa.array(pred[order]),
                    "confidence": pa.array(confidence[order]),
                    "label": pa.array(y[order].astype(np.int32)),
                    "split": pa.array(split[order].astype(np.int8)),
                }
            ),
            tmp / "predictions.parquet",
        )
        np.save(tmp / "confusion_test.npy", cm)
        np.savez(tmp / "embeddings_2d.npz", coords=coords, labels=y[sample])
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log.info("evaluate: %s", {k: round(v, 4) for k, v in metrics.items()})
    return EvaluationRef(path=str(out), metrics=metrics)
