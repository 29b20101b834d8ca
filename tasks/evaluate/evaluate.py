"""The evaluate stage: score every node with the best-validation model (full-graph inference,
:mod:`tasks.evaluate.inference`), compute the metrics (:mod:`tasks.evaluate.metrics`), and write
predictions, the test confusion matrix and a 2-D embedding sample."""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from storage.checkpoints import Checkpoints
from storage.evaluation import read_metrics, write_evaluation
from storage.fingerprint import fingerprint_value
from storage.snapshot import SPLIT_TEST, read_node_ids
from storage.store import EvaluationRef, NodeDataRef, SnapshotRef, Store, output_at
from tasks.evaluate.parallel import iter_full_graph_ranks, open_graph
from tasks.evaluate.metrics import confusion_matrix, split_metrics
from tasks.config import ScoreConfig
from tasks.score.score import (ScoreRows, block_probabilities, partition_to_snapshot_order, publish_scores,
                               scores_key, weights_digest)
from tasks.train.model import load_trained, resolve_device
from tasks.train.result import TrainResult

log = logging.getLogger(__name__)


def embedding_sample(hidden_rows: np.ndarray) -> np.ndarray:
    """2-D PCA coordinates of the given embedding rows."""
    h = np.asarray(hidden_rows, dtype=np.float64)
    h -= h.mean(axis=0)
    _, _, vt = np.linalg.svd(h, full_matrices=False)
    coords = h @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([h[:, 0], np.zeros(len(h))])
    return coords.astype(np.float32)


EVALUATION_VERSION = 1  # bump when the evaluation of the same model changes


def evaluation_key(train_result: TrainResult, node_data: NodeDataRef, seed: int, embedding_nodes: int) -> str:
    """Key of an evaluation output: the trained model (its checkpoint key and how its training
    ended), the node data it is scored on, and the evaluation's own settings."""
    trained = (train_result.key, train_result.best_epoch, train_result.best_val_acc, train_result.epochs_run)
    return fingerprint_value("evaluation", EVALUATION_VERSION, trained, node_data.fingerprint,
                             {"seed": seed, "embedding_nodes": embedding_nodes})


def _scores_rows(saved: dict[str, Any], node_data: NodeDataRef, snapshot: SnapshotRef, store: Store,
                 scores: ScoreConfig | None, num_nodes: int) -> tuple[ScoreRows | None, str | None]:
    """``(rows to gather, weights digest)`` when this evaluation also writes the ``scores`` output
    the scoring stage would compute for the weights of ``saved`` (the run's loaded model record;
    ``scores`` given, and no such output published yet); ``(None, None)`` otherwise."""
    if scores is None:
        return None, None
    digest = weights_digest(saved)
    if store.output(snapshot.name, "scores", scores_key(digest, node_data, scores)).reusable("scores"):
        return None, None
    return ScoreRows(num_nodes, scores.top_k, scores.embeddings), digest


def _infer(model: Any, graph: Any, device: Any, workers: int, scratch: Any, reopen: Any, sample: np.ndarray,
           rows: ScoreRows | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One full-graph inference: ``(prediction, confidence, hidden rows of the sample)`` in
    partition order; ``rows`` (or None) gathers every node's scores from the same blocks."""
    n = graph.num_nodes
    pred = np.empty(n, dtype=np.int32)
    confidence = np.empty(n, dtype=np.float32)
    sample_hidden: list[np.ndarray] = []
    for blk in iter_full_graph_ranks(model.to(device), graph, device, workers, scratch_dir=scratch, reopen=reopen):
        a, b = blk.start, blk.stop
        probs = block_probabilities(blk.logits)
        confidence[a:b], pred[a:b] = (t.numpy() for t in probs.max(dim=1))
        sample_hidden.append(np.array(blk.hidden[sample[(sample >= a) & (sample < b)] - a], dtype=np.float32))
        if rows is not None:
            rows.add(a, b, probs, blk.hidden)
    return pred, confidence, np.concatenate(sample_hidden)


def evaluate_model(
    train_result: TrainResult,
    node_data: NodeDataRef,
    snapshot: SnapshotRef,
    store: Store,
    *,
    device: str = "auto",
    seed: int = 0,
    embedding_nodes: int = 5000,
    workers: int = 1,
    scores: ScoreConfig | None = None,
) -> EvaluationRef:
    """Score every node with the best-validation model and publish the ``evaluation`` output:
    metrics, predictions (in the user's node ids), the test confusion matrix and a 2-D embedding
    of a node sample (:mod:`storage.evaluation`).

    Args:
        train_result: the finished training (its checkpoint).
        node_data: the node data it was trained on (scored in full).
        snapshot: the snapshot, for the user's node ids.
        store: the store receiving the output (inputs are read where their references point).
        device: ``train.device`` (``auto``, ``cpu``, ``cuda``).
        seed: seeds the node sample of the embedding plot (``train.seed``).
        embedding_nodes: the sample's size (``track.embedding_plot_nodes``).
        workers: local processes sharing the full-graph inference (``train.world_size``; CPU only,
            same result as one, see :mod:`tasks.evaluate.parallel`).
        scores: the ``score`` section when the pipeline will score the snapshot with its champion:
            the same inference pass then also publishes the ``scores`` output of this model
            (:func:`tasks.score.score.publish_scores`, keyed by the weights like the scoring
            stage's), so that if the model becomes the champion, scoring is a cache hit.

    An evaluation of the same model on the same node data that is already published is reused
    (``reused=True``); a damaged one is logged and rebuilt. A reused evaluation writes no scores.
    """
    key = evaluation_key(train_result, node_data, seed, embedding_nodes)
    out = store.output(snapshot.name, "evaluation", key)
    if out.reusable("evaluation"):
        log.info("evaluate: cache hit %s", out.location)
        return EvaluationRef(path=out.location, metrics=read_metrics(out), key=key, reused=True)
    reopen = functools.partial(open_graph, node_data.partition.path, node_data.path)
    graph = reopen()
    model, saved = load_trained(train_result.checkpoint_dir)
    n = graph.num_nodes
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(embedding_nodes, n), replace=False))
    rows, digest = _scores_rows(saved, node_data, snapshot, store, scores, n)
    pred, confidence, hidden = _infer(model, graph, resolve_device(device), workers,
                                      Checkpoints.at(train_result.checkpoint_dir).local_dir(), reopen, sample, rows)
    y, split = np.array(graph.y), np.array(graph.split)
    num_classes = train_result.num_classes
    metrics = split_metrics(pred, y, split, num_classes).flat()
    metrics["best_epoch"] = float(saved["best_epoch"])
    test = (split == SPLIT_TEST) & (y >= 0)
    cm = confusion_matrix(y[test], pred[test], num_classes)
    coords = embedding_sample(hidden)
    order = partition_to_snapshot_order(graph.perm)  # partition order -> snapshot order -> the user's ids
    graph.release()
    if rows is not None:
        publish_scores(rows, order, store, digest=digest, node_data=node_data, snapshot=snapshot, config=scores,
                       model_label=f"evaluated model (checkpoint {train_result.key})")
        del rows
    predictions = pa.table({
        "node_id": read_node_ids(output_at(snapshot.path)),
        "prediction": pa.array(pred[order]),
        "confidence": pa.array(confidence[order]),
        "label": pa.array(y[order].astype(np.int32)),
        "split": pa.array(split[order].astype(np.int8)),
    })
    inputs = {"checkpoint": train_result.key, "node_data": node_data.fingerprint, "snapshot": snapshot.fingerprint}
    with store.publish(out, params={"seed": seed, "embedding_nodes": embedding_nodes}, inputs=inputs, replace=True) as w:
        write_evaluation(w, metrics=metrics, predictions=predictions, confusion=cm, embedding_coords=coords,
                         embedding_labels=y[sample])
    log.info("evaluate: %s", {k: round(v, 4) for k, v in metrics.items()})
    return EvaluationRef(path=out.location, metrics=metrics, key=key)
