"""The run's pictures: learning curves, confusion matrix, learned embeddings (PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Loss and train/validation accuracy per epoch (a warm start's epoch 0, the loaded weights
    validated before fine-tuning, has accuracies and no loss)."""
    trained = [h for h in history if "loss" in h]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([h["epoch"] for h in trained], [h["loss"] for h in trained], label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    evals = [h for h in history if "val_acc" in h]
    for key, label in (("train_acc", "train (full graph)"), ("val_acc", "validation")):
        ax_acc.plot([h["epoch"] for h in evals], [h[key] for h in evals], label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion(cm: np.ndarray, path: Path, title: str = "test confusion matrix") -> Path:
    """Row-normalized confusion matrix (true class in rows), with counts in the cells when small."""
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    size = min(12, 3 + 0.4 * len(cm))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    if len(cm) <= 20:
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="black" if frac[i, j] < 0.6 else "white")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def embeddings(coords: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """2-D projection (PCA) of the learned node embeddings, coloured by label."""
    fig, ax = plt.subplots(figsize=(7, 6))
    unlabeled = labels < 0
    if unlabeled.any():
        ax.scatter(coords[unlabeled, 0], coords[unlabeled, 1], s=3, c="lightgrey", label="unlabeled")
    num_classes = int(labels.max()) + 1 if len(labels) else 1
    cmap = "tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"
    sc = ax.scatter(coords[~unlabeled, 0], coords[~unlabeled, 1], s=3, c=labels[~unlabeled], cmap=cmap,
                    vmin=-0.5, vmax=num_classes - 0.5)
    fig.colorbar(sc, ax=ax, label="class")
    ax.set_title(f"learned embeddings (PCA of the last hidden layer, {len(coords)} nodes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
