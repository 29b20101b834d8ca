"""Cluster-GCN training (Chiang et al. 2019, https://arxiv.org/abs/1905.07953).

Each epoch shuffles the METIS clusters into batches of ``clusters_per_batch``; a batch is the
subgraph induced by its clusters' nodes, so the edges between the batch's clusters are restored.
Batches are assembled in a background thread while the model trains on the previous one. The loss
is the cross-entropy over the batch's labeled training nodes.

After every ``eval_every`` epochs the model is evaluated on the full graph (layer-wise, all
neighbours); the weights of the epoch with the best validation accuracy are kept. A checkpoint is
written atomically after every epoch; a run that is killed resumes from it when started again with
the same data and settings.
"""

from __future__ import annotations

import copy
import functools
import inspect
import io
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from storage.arrays import ClusterGraph
from storage.atomic import disk_full_as_error, write_bytes
from storage.fingerprint import fingerprint_value
from storage.locks import checkpoint_lock
from storage.snapshot import SPLIT_TRAIN
from storage.store import NodeDataRef, Store
from tasks.train.batching import AdjacencyNorm as Kind, Batch, batch_arrays, batch_from_arrays, build_batch, epoch_batches
from tasks.config import PipelineConfig, TrainConfig
from tasks.errors import InputError
from tasks.evaluate.inference import predict_full_graph
from tasks.evaluate.metrics import split_metrics
from tasks.train.model import GNN, MODEL_FILE, ModelSpec, load_checkpoint, plain_checkpoint, resolve_device
from tasks.train.records import TrainResult

log = logging.getLogger(__name__)

LAST = "last.pt"
_NOT_IN_KEY = {"device", "prefetch", "resume", "loader_workers"}


def resolve_clusters_per_batch(graph: ClusterGraph, config: TrainConfig) -> int:
    """The configured value, or ``round(target_batch_nodes / mean cluster size)`` clamped to
    ``[1, max(1, num_parts // 2)]`` so that an epoch has at least two batches."""
    k = graph.num_parts
    if config.clusters_per_batch != "auto":
        q = int(config.clusters_per_batch)
        if not 1 <= q <= k:
            raise InputError(f"train.clusters_per_batch={q} must be between 1 and the {k} partitions")
        return q
    mean_size = graph.num_nodes / k
    q = max(1, round(config.target_batch_nodes / mean_size))
    return int(min(q, max(1, k // 2)))


def num_classes_of(graph: ClusterGraph, config: PipelineConfig) -> int:
    labels_max = int(np.max(graph.y)) if graph.num_nodes else -1
    return max(config.data.num_classes or 0, labels_max + 1)


def checkpoint_key(node_data: NodeDataRef, config: TrainConfig, init_from: str | None = None) -> str:
    """Checkpoints are shared by runs with the same node data, settings and initial weights."""
    params = {k: v for k, v in config.model_dump(mode="json").items() if k not in _NOT_IN_KEY}
    return fingerprint_value("train-v1", node_data.fingerprint, params, init_from)


class Prefetcher:
    """Builds batches in a background thread, ``depth`` ahead; measures time spent waiting."""

    def __init__(self, graph: ClusterGraph, batches: list[np.ndarray], kind: Kind, depth: int):
        self.graph, self.batches, self.kind, self.depth = graph, batches, kind, depth
        self.wait_seconds = 0.0

    def _build(self, clusters: np.ndarray) -> Batch:
        batch = build_batch(self.graph, clusters, self.kind)
        self.graph.release()  # the batch is a copy: the graph's pages need not stay resident
        return batch

    def __iter__(self) -> Iterator[Batch]:
        if self.depth == 0:
            for clusters in self.batches:
                t0 = time.perf_counter()
                batch = self._build(clusters)
                self.wait_seconds += time.perf_counter() - t0
                yield batch
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches") as pool:
            pending: deque[Future[Batch]] = deque()
            todo = iter(self.batches)
            for clusters in todo:
                pending.append(pool.submit(self._build, clusters))
                if len(pending) >= self.depth:
                    break
            while pending:
                t0 = time.perf_counter()
                batch = pending.popleft().result()
                self.wait_seconds += time.perf_counter() - t0
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self._build, nxt))
                yield batch


def resolve_loader_workers(config: TrainConfig, device: torch.device) -> int:
    """``train.loader_workers``, with ``"auto"``: 0 on CPU, on CUDA one process per spare core
    (at most 8; two cores stay for the training process and its prefetch)."""
    if config.loader_workers != "auto":
        return int(config.loader_workers)
    if device.type != "cuda":
        return 0
    return min(8, max(1, (os.cpu_count() or 2) - 2))


class _BatchDataset(torch.utils.data.Dataset):
    """Batch assembly inside a worker process: opens the memory-mapped graph on first use."""

    def __init__(self, partition_dir: str, node_data_dir: str, kind: Kind):
        self.partition_dir, self.node_data_dir, self.kind = partition_dir, node_data_dir, kind
        self._graph: ClusterGraph | None = None

    def __getitem__(self, clusters: np.ndarray) -> dict[str, Any]:
        if self._graph is None:
            self._graph = ClusterGraph.open(self.partition_dir, self.node_data_dir)
        arrays = batch_arrays(self._graph, clusters, self.kind)
        self._graph.release()
        return arrays


class _EpochSampler(torch.utils.data.Sampler):
    """Yields the current epoch's batches (arrays of cluster ids), replaced before each epoch."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _as_is(arrays: dict[str, Any]) -> dict[str, Any]:
    return arrays  # keep numpy arrays: the sparse adjacency is built in the training process


class WorkerLoader:
    """Batches assembled by ``workers`` processes (a persistent PyTorch ``DataLoader``), for a GPU
    that one assembly thread could not keep busy. Same batches in the same order as
    :class:`Prefetcher`; use :meth:`epoch` like a Prefetcher, and :meth:`close` at the end."""

    def __init__(self, node_data: NodeDataRef, kind: Kind, workers: int, depth: int):
        self.sampler = _EpochSampler()
        self.loader: torch.utils.data.DataLoader | None = torch.utils.data.DataLoader(
            _BatchDataset(node_data.partition.path, node_data.path, kind),
            batch_size=None, sampler=self.sampler, num_workers=workers, collate_fn=_as_is,
            prefetch_factor=max(depth, 1), persistent_workers=True, multiprocessing_context="spawn",
            generator=torch.Generator(),  # its per-epoch seed draws must not consume the training RNG
        )

    def epoch(self, batches: list[np.ndarray]) -> _WorkerEpoch:
        self.sampler.batches = batches
        return _WorkerEpoch(self, batches)

    def close(self) -> None:
        loader, self.loader = self.loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


class _WorkerEpoch:
    def __init__(self, owner: WorkerLoader, batches: list[np.ndarray]):
        self.owner, self.batches = owner, batches
        self.wait_seconds = 0.0

    def __iter__(self) -> Iterator[Batch]:
        assert self.owner.loader is not None, "WorkerLoader is closed"
        it = iter(self.owner.loader)
        while True:
            t0 = time.perf_counter()
            arrays = next(it, None)
            self.wait_seconds += time.perf_counter() - t0
            if arrays is None:
                return
            yield batch_from_arrays(arrays)


def _save(path: Path, obj: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(plain_checkpoint(obj), buf)  # plain data only: loaded back with weights_only=True
    write_bytes(path, buf.getvalue())


def _warm_start(model: GNN, spec: ModelSpec, path: str) -> bool:
    """Load weights saved by an earlier run if they fit ``spec``; say why not otherwise."""
    saved = load_checkpoint(path)
    old = ModelSpec(**saved["spec"])
    if not spec.same_architecture(old):
        log.info("train: not warm-starting from %s: its model %s differs from %s (feature layout or settings changed)",
                 path, saved["spec"], spec.to_dict())
        return False
    model.load_state_dict(saved["state_dict"])
    log.info("train: warm start from %s", path)
    return True


PROGRESS_SECONDS = 10.0


def train_epoch(
    model: GNN,
    optimizer: torch.optim.Optimizer,
    batches: Prefetcher,
    device: torch.device,
    progress: str | None = None,
) -> dict[str, float]:
    """One pass over the batches; loss and accuracy are averaged over training nodes, not batches.
    ``progress``: a label (``"epoch 3/100"``) to log the batches done every ``PROGRESS_SECONDS``."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    t0 = last = time.perf_counter()
    for i, batch in enumerate(batches):
        if progress and time.perf_counter() - last >= PROGRESS_SECONDS:
            last = time.perf_counter()
            log.info("%s: batch %d/%d, %.0f s, loss %.4f", progress, i, len(batches.batches), last - t0,
                     loss_sum / max(seen, 1))
        mask = batch.train_mask
        n = int(mask.sum())
        if n == 0:
            continue
        batch = batch.to(device)
        optimizer.zero_grad(set_to_none=True)
        out = model(batch.x, batch.adj)[batch.train_mask]
        target = batch.y[batch.train_mask]
        loss = F.cross_entropy(out, target)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * n
        correct += int((out.argmax(dim=1) == target).sum())
        seen += n
    return {"loss": loss_sum / max(seen, 1), "batch_train_acc": correct / max(seen, 1)}


def _one_training_per_checkpoint_dir(fn: Callable[..., TrainResult]) -> Callable[..., TrainResult]:
    """Hold the checkpoint directory's lock (:func:`storage.locks.checkpoint_lock`) for the whole
    training: two runs with the same data and settings never write one directory at once; the
    second waits up to ``lock_timeout_seconds``, then stops with a clear error."""

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> TrainResult:
        bound = signature.bind(*args, **kwargs).arguments
        config: PipelineConfig = bound["config"]
        key = checkpoint_key(bound["node_data"], config.train, bound.get("init_from"))
        ckpt_dir = Store(config.store).checkpoint_dir(config.data.name, key)
        with checkpoint_lock(ckpt_dir, timeout=config.lock_timeout_seconds), disk_full_as_error(ckpt_dir):
            return fn(*args, **kwargs)

    return locked


@_one_training_per_checkpoint_dir
def train_cluster_gcn(
    node_data: NodeDataRef,
    config: PipelineConfig,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool | None = None,
    init_from: str | None = None,
) -> TrainResult:
    """Train (or resume training) and save the best-validation weights as ``model.pt``.

    ``init_from``: a ``model.pt`` to start from (warm start) when its architecture and the
    graph's feature layout match; otherwise training starts from random weights.
    """
    tc = config.train
    progress = config.progress if progress is None else progress
    graph = ClusterGraph.open(node_data.partition.path, node_data.path)
    split = np.asarray(graph.split)
    labeled_train = int(np.count_nonzero((split == SPLIT_TRAIN) & (np.asarray(graph.y) >= 0)))
    if labeled_train == 0:
        raise InputError(f"no labeled training nodes in {node_data.path}: the graph needs labels and a train split")
    device = resolve_device(tc.device)
    num_classes = num_classes_of(graph, config)
    q = resolve_clusters_per_batch(graph, tc)
    spec = ModelSpec.from_config(tc, graph.num_features, num_classes, input_shift=graph.x_shift is not None)
    key = checkpoint_key(node_data, tc, init_from)
    ckpt_dir = Store(config.store).checkpoint_dir(config.data.name, key)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(tc.seed)
    model = GNN(spec).to(device)
    warm = init_from is not None and _warm_start(model, spec, init_from)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    state: dict[str, Any] = {"epoch": 0, "best_val": -1.0, "best_epoch": 0, "best_state": None, "history": [], "stale": 0}
    last = ckpt_dir / LAST
    if tc.resume and last.exists():
        saved = load_checkpoint(last)
        if not saved.get("complete") and saved.get("key") == key:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["torch_rng"])
            state = {k: saved[k] for k in state}
            log.info("train: resuming %s after epoch %d", ckpt_dir, state["epoch"])
    if graph.x_shift is not None:  # this graph's standardization, whatever weights were loaded
        model.set_input_shift(graph.x_shift)
    resumed_from = state["epoch"]

    log.info(
        "train: %s, %d nodes, %d clusters, %d per batch, %d classes, device %s",
        spec.kind, graph.num_nodes, graph.num_parts, q, num_classes, device,
    )
    workers = resolve_loader_workers(tc, device)
    loader = WorkerLoader(node_data, spec.adjacency, workers, tc.prefetch) if workers else None
    if workers:
        log.info("train: %d batch-assembly processes", workers)
    try:
        t_start = time.perf_counter()
        wait_total, train_total = 0.0, 0.0
        for epoch in range(state["epoch"] + 1, tc.epochs + 1):
            t0 = time.perf_counter()
            rng = np.random.default_rng([tc.seed, epoch])
            order = epoch_batches(graph.num_parts, q, rng)
            batches = loader.epoch(order) if loader is not None else Prefetcher(graph, order, spec.adjacency, tc.prefetch)
            metrics = train_epoch(model, optimizer, batches, device, f"epoch {epoch}/{tc.epochs}" if progress else None)
            metrics["epoch_seconds"] = time.perf_counter() - t0
            metrics["batch_wait_seconds"] = batches.wait_seconds
            wait_total += batches.wait_seconds
            train_total += metrics["epoch_seconds"]
            if epoch % tc.eval_every == 0 or epoch == tc.epochs:
                t1 = time.perf_counter()
                pred = predict_full_graph(model, graph, device, scratch_dir=ckpt_dir)
                sm = split_metrics(pred, np.asarray(graph.y), split, num_classes)
                metrics.update(train_acc=sm.acc["train"], val_acc=sm.acc["val"], eval_seconds=time.perf_counter() - t1)
                val = sm.acc["val"] if not np.isnan(sm.acc["val"]) else sm.acc["train"]
                if val > state["best_val"]:
                    state.update(best_val=val, best_epoch=epoch, best_state=copy.deepcopy(model.state_dict()), stale=0)
                else:
                    state["stale"] += tc.eval_every
            state["epoch"] = epoch
            state["history"].append({"epoch": epoch, **metrics})
            _save(last, {**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "torch_rng": torch.get_rng_state(), "key": key, "complete": False, "spec": spec.to_dict()})
            if progress:
                log.info("epoch %d/%d %s", epoch, tc.epochs, {k: round(v, 4) for k, v in metrics.items()})
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if tc.patience is not None and state["stale"] >= tc.patience:
                log.info("train: early stop at epoch %d (best %d)", epoch, state["best_epoch"])
                break

        best_state = state["best_state"] if state["best_state"] is not None else model.state_dict()
        _save(ckpt_dir / MODEL_FILE, {"spec": spec.to_dict(), "state_dict": best_state, "num_classes": num_classes,
                                 "best_epoch": state["best_epoch"], "history": state["history"]})
        _save(last, {**state, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "torch_rng": torch.get_rng_state(), "key": key, "complete": True, "spec": spec.to_dict()})
        return TrainResult(
            checkpoint_dir=str(ckpt_dir),
            key=key,
            spec=spec.to_dict(),
            num_classes=num_classes,
            clusters_per_batch=q,
            best_epoch=state["best_epoch"],
            best_val_acc=float(state["best_val"]),
            epochs_run=state["epoch"],
            resumed_from_epoch=resumed_from,
            device=str(device),
            seconds=time.perf_counter() - t_start,
            batch_wait_fraction=wait_total / train_total if train_total else 0.0,
            warm_started=warm,
        )
    finally:
        if loader is not None:
            loader.close()
