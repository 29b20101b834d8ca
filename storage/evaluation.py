"""The evaluation output (``graphs/<name>/evaluation/<key>/``): what scoring a trained model on the
full graph produces, written and read by name so that neither the evaluate stage nor tracking knows
its files.

- ``metrics``: accuracy and macro-F1 per split, the best epoch (JSON);
- ``predictions``: one row per node in the user's ids: ``node_id``, ``prediction`` (int32),
  ``confidence`` (float32), ``label`` (int32, -1 unlabeled), ``split`` (int8) (Parquet, the file
  users open: :func:`predictions_location`);
- ``confusion_test``: the test nodes' confusion matrix, ``C[true, predicted]`` (int64);
- ``embedding_coords`` / ``embedding_labels``: 2-D coordinates of a sample of node embeddings and
  the sample's labels, for the embedding plot.

The key is chosen by the stage (the checkpoint key, the node data and the evaluation settings):
the same trained model scored on the same node data is the same output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from storage.outputs import file_name

if TYPE_CHECKING:
    import pyarrow as pa

    from storage.outputs import Output, Writer

METRICS, PREDICTIONS, CONFUSION = "metrics", "predictions", "confusion_test"
EMBEDDING_COORDS, EMBEDDING_LABELS = "embedding_coords", "embedding_labels"


def write_evaluation(w: Writer, *, metrics: dict[str, float], predictions: pa.Table, confusion: np.ndarray,
                     embedding_coords: np.ndarray, embedding_labels: np.ndarray) -> None:
    """Write an evaluation into the output being published by ``w``.

    Args:
        w: the writer of the ``evaluation`` output (:meth:`storage.store.Store.publish`).
        metrics: name -> value (NaN allowed: a split without labeled nodes).
        predictions: the per-node table described in the module docstring.
        confusion: the test confusion matrix (classes x classes).
        embedding_coords: ``float32 [sample, 2]``; embedding_labels: ``[sample]``.
    """
    w.json(METRICS, {k: float(v) for k, v in metrics.items()})
    w.table(PREDICTIONS, predictions)
    w.array(CONFUSION, np.asarray(confusion))
    w.array(EMBEDDING_COORDS, np.asarray(embedding_coords, dtype=np.float32))
    w.array(EMBEDDING_LABELS, np.asarray(embedding_labels))
    w.counts["num_nodes"] = predictions.num_rows


def read_metrics(out: Output) -> dict[str, float]:
    """The evaluation's metrics."""
    return {k: float(v) for k, v in out.json(METRICS).items()}


def read_predictions(out: Output, columns: list[str] | None = None) -> pa.Table:
    """The per-node predictions (optionally only ``columns``)."""
    return out.table(PREDICTIONS, columns=columns)


def read_confusion(out: Output) -> np.ndarray:
    """The test nodes' confusion matrix ``C[true, predicted]``."""
    return out.array(CONFUSION, mmap=False)


def read_embedding(out: Output) -> tuple[np.ndarray, np.ndarray]:
    """``(coords [sample, 2], labels [sample])`` of the embedding sample."""
    return out.array(EMBEDDING_COORDS, mmap=False), out.array(EMBEDDING_LABELS, mmap=False)


def predictions_location(out: Output) -> str:
    """Where the predictions table is, for users (the run's summary); read it with
    :func:`read_predictions`. On a remote store, its URI in the bucket."""
    if out.store.remote:
        return f"{out.location}/{file_name(PREDICTIONS, 'table')}"
    return str(out.local_dir() / file_name(PREDICTIONS, "table"))


__all__ = ["write_evaluation", "read_metrics", "read_predictions", "read_confusion", "read_embedding",
           "predictions_location"]
