"""The named steps of Cluster-GCN training, and one process's loop over them.

:func:`train_rank` runs :func:`setup` (graph, model, optimizer; resume from the checkpoint set or
warm start), then per epoch :func:`run_epoch` (this rank's share of the shuffled batches),
:func:`validate` (full-graph accuracy, best weights kept), :func:`save_checkpoint` and
:func:`should_stop` (early stopping), and :func:`finish` (the best weights and history to the
checkpoint set, the :class:`~tasks.train.result.TrainResult`). In data-parallel training
(:mod:`tasks.train.distributed`) every rank runs the same loop; rank 0 alone validates, writes
the checkpoint set and reports epochs. Entry point: :func:`tasks.train.loop.train_cluster_gcn`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from storage.arrays import ClusterGraph
from storage.checkpoints import Checkpoints, graph_of
from storage.fingerprint import fingerprint_value
from storage.snapshot import SPLIT_TRAIN
from storage.store import NodeDataRef, Store, output_at
from tasks.config import TrainConfig
from tasks import progress
from tasks.errors import InputError
from tasks.evaluate.inference import predict_full_graph
from tasks.evaluate.metrics import split_metrics
from tasks.train.batching import epoch_batches
from tasks.train.loaders import BatchLoader, EpochBatches, open_loader
from tasks.train.model import GNN, ModelSpec, load_checkpoint, plain_checkpoint, resolve_device
from tasks.train.result import TrainResult

log = logging.getLogger(__name__)

_NOT_IN_KEY = {"device", "prefetch", "resume", "loader_workers"}
_WARM_ONLY = ("warm_epochs", "warm_patience")  # in the key of warm-started runs only
PROGRESS_SECONDS = 10.0

OnEpoch = Callable[[int, dict[str, float]], None]


def resolve_clusters_per_batch(graph: ClusterGraph, config: TrainConfig, cut_fraction: float | None = None) -> int:
    """Clusters per batch: the configured number, or for ``"auto"`` the larger of

    - ``round(target_batch_nodes / mean cluster size)`` (batch size), and
    - the smallest ``q`` whose expected kept edge share reaches ``train.min_edge_share``
      (:func:`expected_edge_share`; needs ``cut_fraction``, the partition's edge cut as a share
      of its edges) when that ``q`` stays within ``max_batch_nodes`` nodes per batch (when it
      does not, batches many times larger would gain little: the batch-size choice is kept, and
      training warns about the low edge share),

    clamped to ``[1, max(1, num_parts // 2)]`` so that an epoch has at least two batches. A
    well-clustered graph (small edge cut) keeps the batch-size choice unchanged.
    """
    k = graph.num_parts
    if config.clusters_per_batch != "auto":
        q = int(config.clusters_per_batch)
        if not 1 <= q <= k:
            raise InputError(f"train.clusters_per_batch={q} must be between 1 and the {k} partitions")
        return q
    mean_size = max(graph.num_nodes / k, 1e-9)
    top = max(1, k // 2)
    q = max(1, round(config.target_batch_nodes / mean_size))
    if cut_fraction is not None and k > 1:
        q_edges = clusters_for_edge_share(k, cut_fraction, config.min_edge_share)
        cap = max(1, int(config.max_batch_nodes // mean_size))
        if q < q_edges <= cap:
            chosen = min(q_edges, top)
            log.info("train: clusters_per_batch auto: %d instead of %d so that batches keep %.0f%% of the edges "
                     "(edge cut %.1f%%; expected %.0f%%)", chosen, min(q, top), 100 * config.min_edge_share,
                     100 * cut_fraction, 100 * expected_edge_share(k, cut_fraction, chosen))
            q = chosen
        elif q_edges > max(q, cap):
            log.info("train: clusters_per_batch auto: %.0f%% of the edges would need %d clusters per batch (edge cut "
                     "%.1f%%), over train.max_batch_nodes=%d nodes: keeping %d", 100 * config.min_edge_share, q_edges,
                     100 * cut_fraction, config.max_batch_nodes, min(q, top))
    return int(min(q, top))


def expected_edge_share(num_parts: int, cut_fraction: float, q: int) -> float:
    """The expected share of the graph's edges inside batches of ``q`` clusters drawn at random
    from ``num_parts``: every edge within a cluster, and a cut edge when its other cluster is among
    the batch's other ``q - 1`` (probability ``(q - 1) / (num_parts - 1)``)."""
    if num_parts <= 1:
        return 1.0
    return (1.0 - cut_fraction) + cut_fraction * (q - 1) / (num_parts - 1)


def clusters_for_edge_share(num_parts: int, cut_fraction: float, target: float) -> int:
    """The smallest ``q`` with :func:`expected_edge_share` at least ``target`` (``num_parts`` if
    no ``q`` reaches it)."""
    within = 1.0 - cut_fraction
    if within >= target or num_parts <= 1:
        return 1
    q = 1 + math.ceil((num_parts - 1) * (target - within) / cut_fraction - 1e-9)
    return int(min(max(q, 1), num_parts))


def partition_cut_fraction(node_data: NodeDataRef, graph: ClusterGraph) -> float:
    """The partition's edge cut as a share of its edges: from the partition's statistics, or
    counted on ``graph`` (its adjacency entries between different clusters) when they lack it."""
    try:
        return float(output_at(node_data.partition.path).json("stats")["edge_cut_fraction"])
    except (OSError, KeyError, TypeError, ValueError):
        pass
    indptr = np.asarray(graph.indptr, dtype=np.int64)
    if indptr[-1] == 0:
        return 0.0
    cluster = np.repeat(np.arange(graph.num_parts), np.diff(graph.cluster_ptr))
    rows = np.repeat(cluster, np.diff(indptr))
    return float(np.count_nonzero(rows != cluster[np.asarray(graph.indices)]) / indptr[-1])


def num_classes_of(graph: ClusterGraph, configured: int | None) -> int:
    """``data.num_classes`` (``configured``) or one more than the largest label, whichever is larger."""
    labels_max = int(np.max(graph.y)) if graph.num_nodes else -1
    return max(configured or 0, labels_max + 1)


def checkpoint_key(node_data: NodeDataRef, config: TrainConfig, init_from: str | None = None) -> str:
    """Checkpoints are shared by runs with the same node data, settings and initial weights.

    Settings that do not change the result (device, prefetch, loader processes) are left out;
    ``world_size`` only when it is 1, so that single-process keys stay what they always were;
    the fine-tuning budget (``warm_epochs``, ``warm_patience``) only with ``init_from`` (a cold
    run ignores it, so its key does not change with it)."""
    params = {k: v for k, v in config.model_dump(mode="json").items() if k not in _NOT_IN_KEY}
    if params.get("world_size", 1) == 1:
        params.pop("world_size", None)
    if init_from is None:
        for k in _WARM_ONLY:
            params.pop(k, None)
    return fingerprint_value("train-v1", node_data.fingerprint, params, init_from)


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: EpochBatches,
    device: torch.device,
    label: str = "",
    *,
    distributed: bool = False,
) -> dict[str, float]:
    """One pass over ``batches``; loss and accuracy are averaged over training nodes, not batches.

    Args:
        model: the model (a ``DistributedDataParallel`` wrapper when ``distributed``).
        optimizer: stepped once per batch with labeled training nodes.
        batches: the epoch's batches (:mod:`tasks.train.loaders`).
        device: where the model is.
        label: prefix of the progress messages (``"epoch 3/100"``), reported every
            ``PROGRESS_SECONDS`` as step ``train batches`` (:mod:`tasks.progress`; shown only when
            progress is switched on).
        distributed: every rank steps on every batch, also one without labeled training nodes
            (a zero loss: the collective gradient average needs every rank), and the metrics are
            summed over the ranks.

    Returns ``loss``, ``batch_train_acc`` and ``batch_edges``: the adjacency entries (self-loops
    excluded) of all the epoch's batches, with or without training nodes.
    """
    model.train()
    sums = torch.zeros(4, dtype=torch.float64)  # loss * nodes, correct, nodes, batch edges
    t0 = time.perf_counter()
    total = len(batches)  # type: ignore[arg-type]  (loaders' epochs and plain lists of built batches)
    ticker = progress.Ticker("train batches", total, seconds=PROGRESS_SECONDS)
    for i, batch in enumerate(batches):
        if i:
            ticker.tick(i, "%s: batch %d/%d, %.0f s, loss %.4f", label, i, total,
                        time.perf_counter() - t0, float(sums[0] / max(float(sums[2]), 1.0)))
        n = int(batch.train_mask.sum())
        sums[3] += batch.num_edges
        if n == 0 and not distributed:
            continue
        batch = batch.to(device)
        optimizer.zero_grad(set_to_none=True)
        out = model(batch.x, batch.adj)[batch.train_mask]
        target = batch.y[batch.train_mask]
        loss = F.cross_entropy(out, target) if n else out.sum() * 0.0
        loss.backward()
        optimizer.step()
        sums[:3] += torch.tensor([float(loss.detach()) * n, int((out.argmax(dim=1) == target).sum()), n], dtype=torch.float64)
    if distributed:
        torch.distributed.all_reduce(sums)
    seen = max(float(sums[2]), 1.0)
    return {"loss": float(sums[0]) / seen, "batch_train_acc": float(sums[1]) / seen, "batch_edges": float(sums[3])}


@dataclass
class Rank:
    """This process's place in data-parallel training (rank 0 of 1 when training alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def lead(self) -> bool:
        """Rank 0: validates, writes checkpoints, reports metrics."""
        return self.rank == 0

    def share(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """This rank's batches of an epoch: every ``world_size``-th, starting at ``rank``, after
        padding the list (repeating its first batches) to a multiple of ``world_size``, so that
        every rank takes the same number of steps."""
        if self.world_size == 1:
            return batches
        padded = batches + batches[: (-len(batches)) % self.world_size]
        return padded[self.rank :: self.world_size]


@dataclass
class Training:
    """Everything the steps share: the data, the model, the optimizer and the bookkeeping that a
    checkpoint saves (``state``). ``config`` is the run's effective train section: for a warm
    start that happened, ``epochs``/``patience`` are the fine-tuning budget (:func:`fine_tuning`)."""

    node_data: NodeDataRef
    config: TrainConfig
    ckpt: Checkpoints
    graph: ClusterGraph
    device: torch.device
    num_classes: int
    clusters_per_batch: int
    spec: ModelSpec
    model: GNN
    optimizer: torch.optim.Optimizer
    rank: Rank
    net: torch.nn.Module  # what trains: the model, or its DistributedDataParallel wrapper
    state: dict[str, Any] = field(default_factory=lambda: {
        "epoch": 0, "best_val": -1.0, "best_epoch": 0, "best_state": None, "history": [], "stale": 0})
    warm: bool = False
    feature_layout: dict[str, Any] = field(default_factory=dict)
    edge_share_warned: bool = False
    resumed_from: int = 0
    wait_total: float = 0.0
    train_total: float = 0.0
    batches_run: int = 0
    started: float = field(default_factory=time.perf_counter)


def feature_layout(node_data: NodeDataRef, graph: ClusterGraph) -> dict[str, Any]:
    """What the first layer's weights mean: the number of feature columns and how they were
    normalized (method, structural encoding, sparse standardization), from the node data's
    features output. Weights trained on another layout do not fit, even with equal shapes."""
    layout: dict[str, Any] = {"num_features": int(graph.num_features), "input_shift": graph.x_shift is not None}
    try:
        features = output_at(node_data.path).manifest()["inputs"]["features"]["path"]
        params = output_at(features).manifest().get("params", {})
    except (OSError, KeyError, TypeError, ValueError) as e:
        log.info("train: the features' normalization of %s is not recorded (%s)", node_data.path, e)
        return layout
    layout.update(normalization=params.get("resolved_method"), structural=params.get("resolved_structural"),
                  sparse=params.get("sparse"))
    return layout


def warm_start_mismatch(spec: ModelSpec, layout: dict[str, Any], saved: dict[str, Any]) -> str | None:
    """Why weights ``saved`` (a model file's contents) cannot start a model ``spec`` on features
    ``layout`` (:func:`feature_layout`), or None when they fit: the same architecture
    (:meth:`ModelSpec.same_architecture`: every setting but dropout) and the same feature layout
    and normalization. Weights that do not record their feature layout never fit."""
    old = ModelSpec(**saved["spec"])
    if not spec.same_architecture(old):
        diff = {k: (v, spec.to_dict()[k]) for k, v in old.to_dict().items() if k != "dropout" and spec.to_dict()[k] != v}
        return "the model differs (" + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items()) + ")"
    old_layout = saved.get("feature_layout")
    if old_layout is None:
        return "the weights do not record their feature layout and normalization"
    diff = {k: (old_layout.get(k), v) for k, v in layout.items() if old_layout.get(k) != v}
    if diff:
        return "the features differ (" + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items()) + ")"
    return None


def _warm_start(model: GNN, spec: ModelSpec, layout: dict[str, Any], path: str) -> bool:
    """Load weights saved by an earlier run if they fit ``spec`` and ``layout``; log why not otherwise."""
    saved = load_checkpoint(path)
    why = warm_start_mismatch(spec, layout, saved)
    if why is not None:
        log.warning("train: not warm-starting from %s: %s; starting from random weights", path, why)
        return False
    model.load_state_dict(saved["state_dict"])
    log.info("train: warm start from %s (same architecture and feature layout)", path)
    return True


def fine_tuning(config: TrainConfig) -> TrainConfig:
    """The train section of a warm-started run: ``epochs`` = ``warm_epochs`` and ``patience`` =
    ``warm_patience`` (None: exactly ``warm_epochs`` epochs). A cold run keeps ``config``."""
    return config.model_copy(update={"epochs": config.warm_epochs, "patience": config.warm_patience})


def _agree(rank: Rank, value: bool) -> bool:
    """Rank 0's ``value`` on every rank (it alone loads the warm-start weights)."""
    if rank.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return bool(box[0])


def _resumable(t: Training) -> dict[str, Any] | None:
    """The saved state to resume from (rank 0 reads it; every rank gets it), or None."""
    saved = t.ckpt.last() if t.rank.lead and t.config.resume else None
    if saved is not None and (saved.get("complete") or saved.get("key") != t.ckpt.key):
        saved = None
    if t.rank.world_size > 1:
        box = [saved]
        torch.distributed.broadcast_object_list(box, src=0)
        saved = box[0]
    return saved


def _open_graph(node_data: NodeDataRef) -> ClusterGraph:
    graph = ClusterGraph.open(output_at(node_data.partition.path), output_at(node_data.path))
    split = np.asarray(graph.split)
    if not np.count_nonzero((split == SPLIT_TRAIN) & (np.asarray(graph.y) >= 0)):
        raise InputError(f"no labeled training nodes in {node_data.path}: the graph needs labels and a train split")
    return graph


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` (its construction broadcasts rank 0's weights)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def setup(node_data: NodeDataRef, config: TrainConfig, ckpt: Checkpoints, *, num_classes: int | None,
          init_from: str | None, rank: Rank, device: torch.device) -> Training:
    """Open the graph, build the model and optimizer; resume from the checkpoint set or warm
    start from ``init_from`` (on rank 0; other ranks receive the state)."""
    graph = _open_graph(node_data)
    classes = num_classes_of(graph, num_classes)
    spec = ModelSpec.from_config(config, graph.num_features, classes, input_shift=graph.x_shift is not None)
    torch.manual_seed(config.seed)
    model = GNN(spec).to(device)
    layout = feature_layout(node_data, graph)
    warm = _agree(rank, rank.lead and init_from is not None and _warm_start(model, spec, layout, init_from))
    if warm:
        config = fine_tuning(config)
        log.info("train: fine-tuning budget: at most %d epochs, %s", config.epochs,
                 f"stopping after {config.patience} without beating the loaded weights" if config.patience
                 else "no early stopping")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    cut = partition_cut_fraction(node_data, graph) if config.clusters_per_batch == "auto" else None
    t = Training(node_data, config, ckpt, graph, device, classes, resolve_clusters_per_batch(graph, config, cut), spec,
                 model, optimizer, rank, net=model, warm=warm, feature_layout=layout)
    saved = _resumable(t)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        t.state = {k: saved[k] for k in t.state}
        log.info("train: resuming %s after epoch %d", ckpt.location, t.state["epoch"])
    if graph.x_shift is not None:  # this graph's standardization, whatever weights were loaded
        model.set_input_shift(graph.x_shift)
    t.resumed_from = t.state["epoch"]
    if rank.world_size > 1:
        t.net = wrap(model, device)  # DistributedDataParallel: rank 0's weights to every rank
    log.info("train: %s, %d nodes, %d clusters, %d per batch, %d classes, device %s, rank %d of %d",
             spec.kind, graph.num_nodes, graph.num_parts, t.clusters_per_batch, classes, device, rank.rank,
             rank.world_size)
    return t


def validate_loaded(t: Training) -> None:
    """Epoch 0 of a warm-started run (rank 0, not on a resume that already did it): the loaded
    weights validated on this graph, recorded in the history and kept as the best so far, so that
    fine-tuning must beat them and the champion's weights are what is saved when nothing does."""
    if not (t.warm and t.rank.lead and not t.state["history"]):
        return
    metrics: dict[str, float] = {}
    validate(t, 0, metrics)
    t.state["history"].append({"epoch": 0, **metrics})
    save_checkpoint(t)
    log.info("train: the loaded weights on this graph (epoch 0): val_acc %.4f, train_acc %.4f",
             metrics["val_acc"], metrics["train_acc"])


def run_epoch(t: Training, loader: BatchLoader, epoch: int) -> dict[str, float]:
    """Train one epoch on this rank's share of the epoch's shuffled batches (the same shuffle on
    every rank: seeded by ``train.seed`` and the epoch)."""
    t0 = time.perf_counter()
    if t.rank.world_size > 1:  # dropout differs per rank, reproducibly (a resume repeats it)
        torch.manual_seed(int(np.random.SeedSequence([t.config.seed, epoch, t.rank.rank]).generate_state(1)[0]))
    order = epoch_batches(t.graph.num_parts, t.clusters_per_batch, np.random.default_rng([t.config.seed, epoch]))
    batches = loader.epoch(t.rank.share(order))
    metrics = train_epoch(t.net, t.optimizer, batches, t.device, f"epoch {epoch}/{t.config.epochs}",
                          distributed=t.rank.world_size > 1)
    _edge_share(t, metrics)
    metrics["epoch_seconds"] = time.perf_counter() - t0
    metrics["batch_wait_seconds"] = batches.wait_seconds
    t.wait_total += batches.wait_seconds
    t.train_total += metrics["epoch_seconds"]
    t.batches_run += len(batches.batches)
    return metrics


def _edge_share(t: Training, metrics: dict[str, float]) -> None:
    """Replace ``batch_edges`` by ``batch_edge_share``, the share of the graph's adjacency entries
    that the epoch's batches kept (with several ranks, a batch repeated to even out their steps
    counts twice: at most 1); warn once when it is below ``train.min_edge_share``."""
    total = len(t.graph.indices)
    share = min(1.0, metrics.pop("batch_edges") / total) if total else 1.0
    metrics["batch_edge_share"] = share
    if share < t.config.min_edge_share and not t.edge_share_warned and t.rank.lead:
        t.edge_share_warned = True
        log.warning(
            "train: the batches keep only %.0f%% of the graph's edges (train.min_edge_share %.0f%%; %d clusters, %d per "
            "batch): the model sees little of the graph. Use train.clusters_per_batch=auto (it takes enough "
            "clusters for that share), more clusters per batch, a larger train.max_batch_nodes, or fewer "
            "partitions (partition.num_parts / target_cluster_size)", 100 * share, 100 * t.config.min_edge_share,
            t.graph.num_parts, t.clusters_per_batch)


def validate(t: Training, epoch: int, metrics: dict[str, float]) -> None:
    """Every ``eval_every`` epochs (and the last): full-graph accuracy; keep the best weights."""
    if epoch % t.config.eval_every and epoch != t.config.epochs:
        return
    t1 = time.perf_counter()
    pred = predict_full_graph(t.model, t.graph, t.device, scratch_dir=t.ckpt.local_dir())
    sm = split_metrics(pred, np.asarray(t.graph.y), np.asarray(t.graph.split), t.num_classes)
    metrics.update(train_acc=sm.acc["train"], val_acc=sm.acc["val"], eval_seconds=time.perf_counter() - t1)
    val = sm.acc["val"] if not np.isnan(sm.acc["val"]) else sm.acc["train"]
    if val > t.state["best_val"]:
        t.state.update(best_val=val, best_epoch=epoch, best_state=copy.deepcopy(t.model.state_dict()), stale=0)
    else:
        t.state["stale"] += t.config.eval_every


def save_checkpoint(t: Training, complete: bool = False) -> None:
    """The resumable state (model, optimizer, RNG, bookkeeping) into the checkpoint set."""
    t.ckpt.save_last(plain_checkpoint({
        **t.state, "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(), "key": t.ckpt.key, "complete": complete, "spec": t.spec.to_dict(),
        "world_size": t.rank.world_size}))


def should_stop(t: Training, epoch: int) -> bool:
    """Early stopping: ``patience`` epochs without a better validation accuracy (rank 0 decides,
    every rank follows)."""
    stop = bool(t.rank.lead and t.config.patience is not None and t.state["stale"] >= t.config.patience)
    if t.rank.world_size > 1:
        flag = torch.tensor([int(stop)])
        torch.distributed.broadcast(flag, src=0)
        stop = bool(flag.item())
    if stop and t.rank.lead:
        log.info("train: early stop at epoch %d (best %d)", epoch, t.state["best_epoch"])
    return stop


def _lead_epoch_end(t: Training, epoch: int, metrics: dict[str, float], on_epoch: OnEpoch | None) -> None:
    validate(t, epoch, metrics)
    t.state["epoch"] = epoch
    t.state["history"].append({"epoch": epoch, **metrics})
    save_checkpoint(t)
    progress.report("train epochs", epoch, t.config.epochs, "epoch %d/%d %s", epoch, t.config.epochs,
                    {k: round(v, 4) for k, v in metrics.items()})
    if on_epoch is not None:
        on_epoch(epoch, metrics)


def finish(t: Training) -> TrainResult:
    """Save the best-validation weights and the history (rank 0); the run's :class:`TrainResult`."""
    rank_batches = [t.batches_run] * t.rank.world_size
    if t.rank.world_size > 1:
        counts = torch.zeros(t.rank.world_size, dtype=torch.int64)
        counts[t.rank.rank] = t.batches_run
        torch.distributed.all_reduce(counts)
        rank_batches = [int(c) for c in counts]
    if t.rank.lead:
        best_state = t.state["best_state"] if t.state["best_state"] is not None else t.model.state_dict()
        if t.warm and t.state["best_epoch"] == 0:
            log.info("train: fine-tuning did not beat the loaded weights (val %.4f) in %d epochs: the saved model "
                     "is the champion's weights", t.state["best_val"], t.state["epoch"])
        t.ckpt.save_model(plain_checkpoint({
            "spec": t.spec.to_dict(), "state_dict": best_state, "num_classes": t.num_classes,
            "feature_layout": t.feature_layout,
            "best_epoch": t.state["best_epoch"], "history": t.state["history"]}))
        save_checkpoint(t, complete=True)
    return TrainResult(
        checkpoint_dir=t.ckpt.location, key=t.ckpt.key, spec=t.spec.to_dict(), num_classes=t.num_classes,
        clusters_per_batch=t.clusters_per_batch, best_epoch=t.state["best_epoch"],
        best_val_acc=float(t.state["best_val"]), epochs_run=t.state["epoch"], resumed_from_epoch=t.resumed_from,
        device=str(t.device), seconds=time.perf_counter() - t.started,
        batch_wait_fraction=t.wait_total / t.train_total if t.train_total else 0.0, warm_started=t.warm,
        graph=t.ckpt.graph, world_size=t.rank.world_size, rank_batches=rank_batches)


def train_rank(node_data: NodeDataRef, config: TrainConfig, ckpt: Checkpoints, *, num_classes: int | None = None,
               init_from: str | None = None, rank: Rank | None = None, device: torch.device | None = None,
               on_epoch: OnEpoch | None = None) -> TrainResult:
    """The training loop of one process (the only one, or one rank of a process group that is
    already initialized). The caller holds the checkpoint set's lock. Arguments as for
    :func:`train_cluster_gcn`; ``on_epoch`` is called on rank 0 only."""
    rank = rank or Rank()
    t = setup(node_data, config, ckpt, num_classes=num_classes, init_from=init_from, rank=rank,
              device=device or resolve_device(config.device))
    loader = open_loader(node_data, t.graph, t.spec.adjacency, config, t.device)
    try:
        validate_loaded(t)
        for epoch in range(t.state["epoch"] + 1, t.config.epochs + 1):
            metrics = run_epoch(t, loader, epoch)
            if rank.lead:
                _lead_epoch_end(t, epoch, metrics, on_epoch)
            else:
                t.state["epoch"] = epoch
            if should_stop(t, epoch):
                break
        return finish(t)
    finally:
        loader.close()


def checkpoints_for(node_data: NodeDataRef, config: TrainConfig, store: Store, init_from: str | None = None) -> Checkpoints:
    """The checkpoint set a training of ``node_data`` with ``config`` (and ``init_from``) uses."""
    return Checkpoints(store, graph_of(node_data.path), checkpoint_key(node_data, config, init_from))


