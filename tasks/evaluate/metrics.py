"""Classification metrics on predicted classes: accuracy, macro-F1, confusion matrix, and the
per-split summary every stage reports. Plain numpy: no model or store imports."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.snapshot import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[t, p]`` = number of nodes of true class ``t`` predicted as ``p`` (``num_classes`` square,
    int64). Labels must lie in ``[0, num_classes)``."""
    idx = np.asarray(y_true).astype(np.int64) * num_classes + np.asarray(y_pred).astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The fraction of equal entries; ``nan`` for no nodes."""
    return float((np.asarray(y_true) == np.asarray(y_pred)).mean()) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``
    (scikit-learn's ``f1_score(average="macro")`` with ``labels`` = those classes); ``nan`` for no
    nodes. A class never predicted but present has F1 0."""
    if len(y_true) == 0:
        return float("nan")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    denom = support + predicted
    present = denom > 0
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=present)
    return float(f1[present].mean())


def split_masks(split: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the train, val and test nodes of a split column."""
    return {"train": split == SPLIT_TRAIN, "val": split == SPLIT_VAL, "test": split == SPLIT_TEST}


@dataclass
class SplitMetrics:
    """Accuracy and macro-F1 per split (``train``, ``val``, ``test``)."""

    acc: dict[str, float]
    macro_f1: dict[str, float]

    def flat(self) -> dict[str, float]:
        """``{"train_acc": ..., "test_macro_f1": ...}``: the names logged to MLflow."""
        out = {f"{s}_acc": v for s, v in self.acc.items()}
        out.update({f"{s}_macro_f1": v for s, v in self.macro_f1.items()})
        return out


def split_metrics(pred: np.ndarray, y: np.ndarray, split: np.ndarray, num_classes: int) -> SplitMetrics:
    """Accuracy and macro-F1 of the predicted classes ``pred`` on the train/val/test masks
    (unlabeled nodes, ``y < 0``, never count)."""
    acc, f1 = {}, {}
    for name, mask in split_masks(np.asarray(split)).items():
        mask = mask & (y >= 0)
        acc[name] = accuracy(y[mask], pred[mask])
        f1[name] = macro_f1(y[mask], pred[mask], num_classes)
    return SplitMetrics(acc, f1)
