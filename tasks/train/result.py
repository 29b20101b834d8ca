"""The record a finished training hands to evaluation, tracking and the flow (no torch import)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainResult:
    """A finished training run: where its weights are and how it went.

    ``checkpoint_dir`` is the location of the run's checkpoint set in the store
    (:class:`storage.checkpoints.Checkpoints`; read it through that class, by ``graph`` and
    ``key``). ``world_size`` is the number of data-parallel processes that trained;
    ``rank_batches[r]`` the batches rank ``r`` trained on over the run (equal for every rank: an
    epoch's batches are dealt out evenly, padded by repeating the first ones).
    """

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
    graph: str = ""
    world_size: int = 1
    rank_batches: list[int] = field(default_factory=list)
