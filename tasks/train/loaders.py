"""Batch loaders for Cluster-GCN training, behind one small interface.

A :class:`BatchLoader` turns one epoch's list of batches (arrays of cluster ids) into an iterable of
:class:`~tasks.train.batching.Batch` that measures how long training waited for batches::

    loader = open_loader(node_data, graph, kind, config, device)
    try:
        for epoch in ...:
            batches = loader.epoch(order)        # len(batches), iter(batches), batches.wait_seconds
            ...
    finally:
        loader.close()

Two implementations give the same batches in the same order:

- :class:`ThreadLoader` (``train.loader_workers=0``, the default on CPU): one background thread
  builds batches ``prefetch`` ahead (:class:`Prefetcher`), enough to keep CPU training busy;
- :class:`WorkerLoader` (``loader_workers=n``, the default on CUDA): ``n`` processes of a persistent
  PyTorch ``DataLoader`` assemble batches, for a GPU that one thread could not feed.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import torch

from storage.arrays import ClusterGraph
from storage.store import NodeDataRef, output_at
from tasks.config import TrainConfig
from tasks.train.batching import AdjacencyNorm as Kind, Batch, batch_arrays, batch_from_arrays, build_batch


class EpochBatches(Protocol):
    """One epoch's batches: iterate once; ``wait_seconds`` is the time spent waiting for them."""

    batches: list[np.ndarray]
    wait_seconds: float

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


class BatchLoader(Protocol):
    """Makes each epoch's :class:`EpochBatches`; :meth:`close` releases threads or processes."""

    def epoch(self, batches: list[np.ndarray]) -> EpochBatches: ...

    def close(self) -> None: ...


class Prefetcher:
    """Builds batches in a background thread, ``depth`` ahead; measures time spent waiting.

    Args:
        graph: the memory-mapped partitioned graph.
        batches: the epoch's batches (arrays of cluster ids), in training order.
        kind: the adjacency normalization (the model kind).
        depth: batches built ahead; 0 builds each batch in the training thread when it is needed.
    """

    def __init__(self, graph: ClusterGraph, batches: list[np.ndarray], kind: Kind, depth: int):
        self.graph, self.batches, self.kind, self.depth = graph, batches, kind, depth
        self.wait_seconds = 0.0

    def __len__(self) -> int:
        return len(self.batches)

    def _build(self, clusters: np.ndarray) -> Batch:
        batch = build_batch(self.graph, clusters, self.kind)
        self.graph.release()  # the batch is a copy: the graph's pages need not stay resident
        return batch

    def _inline(self) -> Iterator[Batch]:
        for clusters in self.batches:
            t0 = time.perf_counter()
            batch = self._build(clusters)
            self.wait_seconds += time.perf_counter() - t0
            yield batch

    def __iter__(self) -> Iterator[Batch]:
        if self.depth == 0:
            yield from self._inline()
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


class ThreadLoader:
    """:class:`BatchLoader` of :class:`Prefetcher` epochs (one background thread per epoch)."""

    def __init__(self, graph: ClusterGraph, kind: Kind, depth: int):
        self.graph, self.kind, self.depth = graph, kind, depth

    def epoch(self, batches: list[np.ndarray]) -> Prefetcher:
        """The epoch's batches, built ``depth`` ahead in a background thread."""
        return Prefetcher(self.graph, batches, self.kind, self.depth)

    def close(self) -> None:
        """Nothing to release: each epoch's thread ends with the epoch."""


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
    :class:`Prefetcher`; :meth:`close` at the end (the worker processes stay up between epochs).

    Args:
        node_data: the laid-out node data (its partition holds the graph).
        kind: the adjacency normalization (the model kind).
        workers: number of assembly processes (spawned).
        depth: batches prefetched per worker.
    """

    def __init__(self, node_data: NodeDataRef, kind: Kind, workers: int, depth: int):
        self.sampler = _EpochSampler()
        self.loader: torch.utils.data.DataLoader | None = torch.utils.data.DataLoader(
            _BatchDataset(str(output_at(node_data.partition.path).local_dir()), str(output_at(node_data.path).local_dir()), kind),
            batch_size=None, sampler=self.sampler, num_workers=workers, collate_fn=_as_is,
            prefetch_factor=max(depth, 1), persistent_workers=True, multiprocessing_context="spawn",
            generator=torch.Generator(),  # its per-epoch seed draws must not consume the training RNG
        )

    def epoch(self, batches: list[np.ndarray]) -> _WorkerEpoch:
        """The epoch's batches, from the worker processes."""
        self.sampler.batches = batches
        return _WorkerEpoch(self, batches)

    def close(self) -> None:
        """Stop the worker processes."""
        loader, self.loader = self.loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


class _WorkerEpoch:
    def __init__(self, owner: WorkerLoader, batches: list[np.ndarray]):
        self.owner, self.batches = owner, batches
        self.wait_seconds = 0.0

    def __len__(self) -> int:
        return len(self.batches)

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


def open_loader(node_data: NodeDataRef, graph: ClusterGraph, kind: Kind, config: TrainConfig,
                device: torch.device) -> BatchLoader:
    """The loader ``config`` asks for on ``device`` (see :func:`resolve_loader_workers`)."""
    import logging

    workers = resolve_loader_workers(config, device)
    if workers:
        logging.getLogger(__name__).info("train: %d batch-assembly processes", workers)
        return WorkerLoader(node_data, kind, workers, config.prefetch)
    return ThreadLoader(graph, kind, config.prefetch)
