"""Cluster-GCN training (Chiang et al. 2019, https://arxiv.org/abs/1905.07953): the entry point.

Each epoch shuffles the METIS clusters into batches of ``clusters_per_batch``; a batch is the
subgraph induced by its clusters' nodes, so the edges between the batch's clusters are restored.
Batches are assembled ahead of the model (:mod:`tasks.train.loaders`). The loss is the
cross-entropy over the batch's labeled training nodes.

After every ``eval_every`` epochs the model is evaluated on the full graph (layer-wise, all
neighbours); the weights of the epoch with the best validation accuracy are kept. The resumable
state goes to the store's checkpoint set (:mod:`storage.checkpoints`) after every epoch; a run that
is killed resumes from it when started again with the same data and settings.

The loop and its named steps are in :mod:`tasks.train.steps`; ``train.world_size > 1`` runs them in
that many data-parallel processes (:mod:`tasks.train.distributed`).
"""

from __future__ import annotations

from storage.store import NodeDataRef, Store
from tasks.config import TrainConfig
from tasks.train import distributed
from tasks.train.result import TrainResult
from tasks.train.steps import OnEpoch, checkpoints_for, train_rank


def train_cluster_gcn(
    node_data: NodeDataRef,
    config: TrainConfig,
    store: Store,
    *,
    num_classes: int | None = None,
    lock_timeout: float | None = None,
    on_epoch: OnEpoch | None = None,
    init_from: str | None = None,
) -> TrainResult:
    """Train (or resume training) Cluster-GCN; the best-validation weights go to the checkpoint set.

    Args:
        node_data: the laid-out node data (in the store ``store``).
        config: the ``train`` section. ``world_size > 1`` starts that many local processes (or,
            inside a process group started by ``torchrun``, this process joins it as its rank).
        store: the store; the checkpoint set is :func:`checkpoints_for`.
        num_classes: ``data.num_classes`` (at least one more than the largest label is used).
        lock_timeout: how long to wait for another training of the same checkpoint set
            (``lock_timeout_seconds``); None waits indefinitely.
        on_epoch: called with ``(epoch, metrics)`` after each epoch (in this process, also when
            the ranks are other processes).
        init_from: a ``model.pt`` to start from (warm start) when its architecture and the graph's
            feature layout match; otherwise training starts from random weights. Part of the key.

    Raises:
        tasks.errors.InputError: no labeled training nodes, bad ``clusters_per_batch``, a
            checkpoint that is not plain data, the lock not free within ``lock_timeout``.
    """
    ckpt = checkpoints_for(node_data, config, store, init_from)
    group = distributed.joined_group()
    if group is not None:  # started by torchrun: this process is one rank; rank 0 writes
        return distributed.train_in_group(node_data, config, ckpt, group, num_classes=num_classes,
                                          lock_timeout=lock_timeout, on_epoch=on_epoch, init_from=init_from)
    with ckpt.lock(timeout=lock_timeout):
        if config.world_size > 1:
            return distributed.spawn_ranks(node_data, config, ckpt, num_classes=num_classes, on_epoch=on_epoch,
                                           init_from=init_from)
        return train_rank(node_data, config, ckpt, num_classes=num_classes, init_from=init_from, on_epoch=on_epoch)
