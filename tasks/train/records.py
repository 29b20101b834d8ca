"""Records handed from training to the stages after it (evaluation, tracking, quality checks),
kept apart from the training loop so that those stages need not import it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainResult:
    """A finished training run: where its weights are and how it went."""

    checkpoint_dir: str
    key: str
    spec: dict
    num_classes: int
    clusters_per_batch: int
    best_epoch: int
    best_val_acc: float
    epochs_run: int
    resumed_from_epoch: int
    device: str
    seconds: float
    batch_wait_fraction: float
    warm_started: bool = False
