"""Data-parallel Cluster-GCN training with ``torch.distributed`` (``train.world_size``).

Cluster-GCN batches are independent, so each epoch's shuffled batches (the same shuffle on every
rank) are dealt out to the ranks (:meth:`tasks.train.loop.Rank.share`); every rank takes the same
number of steps, and ``DistributedDataParallel`` averages the gradients after each one (gloo on
CPU, NCCL on CUDA with one GPU per rank). Rank 0 validates on the full graph, writes the
checkpoints and reports each epoch's metrics; resume and warm start work as in one process.

Two ways to start the ranks:

- the training stage (``train.world_size=N``) starts N local processes itself
  (:func:`spawn_ranks`: ``torch.multiprocessing`` spawn, a free port on 127.0.0.1); their epochs
  and log records come back to the calling process, which reports them (MLflow, Prefect's log);
- ``torchrun`` starts them, on one machine or several, and each joins the process group from the
  environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)::

      torchrun --nnodes 2 --nproc-per-node 4 --node-rank 0 --master-addr HOST0 --master-port 29500 \\
          -m tasks.train.distributed --config graphpipe.yaml [--set train.epochs=50]

  Rank 0 prepares the graph (every data stage, reused from the store when cached) and the others
  use its node data: the store must be reachable from every machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import logging.handlers
import os
import queue as queue_mod
import socket
import sys
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

from storage.checkpoints import Checkpoints
from storage.store import NodeDataRef, PartitionRef, Store
from tasks.config import TrainConfig
from tasks.train.steps import OnEpoch, Rank, checkpoints_for, train_rank
from tasks.train.model import resolve_device
from tasks.train.result import TrainResult

log = logging.getLogger(__name__)

#: loggers whose records rank 0 sends back to the process that spawned it
FORWARDED_LOGGERS = ("graphpipe.progress", "tasks", "storage")
GROUP_TIMEOUT = dt.timedelta(hours=2)  # a rank waits this long for rank 0's full-graph validation


@dataclass(frozen=True)
class Group:
    """This process's rank in a process group, and its local rank (its GPU on CUDA)."""

    rank: int
    world_size: int
    local_rank: int


def joined_group() -> Group | None:
    """The process group this process belongs to: one already initialized, or the one described
    by ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``; joined here);
    None for a process started on its own."""
    env = os.environ
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size(), int(env.get("LOCAL_RANK", dist.get_rank())))
    if not all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return None
    group = Group(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
    _init(group, "env://")
    return group


def _init(group: Group, init_method: str) -> None:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(group.local_rank)
    dist.init_process_group(backend, init_method=init_method, rank=group.rank, world_size=group.world_size,
                            timeout=GROUP_TIMEOUT)


def rank_device(config: TrainConfig, group: Group) -> torch.device:
    """``cuda:<local rank>`` when training on CUDA (one GPU per rank), else the CPU."""
    device = resolve_device(config.device)
    return torch.device("cuda", group.local_rank) if device.type == "cuda" else device


def _ranked(config: TrainConfig, world_size: int) -> TrainConfig:
    return config if config.world_size == world_size else config.model_copy(update={"world_size": world_size})


def train_in_group(node_data: NodeDataRef, config: TrainConfig, ckpt: Checkpoints, group: Group, *,
                   num_classes: int | None, lock_timeout: float | None, on_epoch: OnEpoch | None,
                   init_from: str | None) -> TrainResult:
    """Train as rank ``group.rank`` of a process group started by ``torchrun``; rank 0 holds the
    checkpoint set's lock. The group's size overrides ``config.world_size`` (and the key)."""
    config = _ranked(config, group.world_size)
    ckpt = checkpoints_for(node_data, config, ckpt.store, init_from)
    rank = Rank(group.rank, group.world_size)
    kwargs = dict(num_classes=num_classes, init_from=init_from, rank=rank, device=rank_device(config, group),
                  on_epoch=on_epoch)
    if not rank.lead:
        return train_rank(node_data, config, ckpt, **kwargs)
    with ckpt.lock(timeout=lock_timeout):
        return train_rank(node_data, config, ckpt, **kwargs)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the spawned ranks' rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forward_logs(channel: Any) -> None:
    handler = logging.handlers.QueueHandler(channel)
    for name in FORWARDED_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False


def _rank_main(rank: int, world_size: int, port: int, job: dict[str, Any], channel: Any) -> None:
    """A spawned rank: join the group on 127.0.0.1, train, send epochs/logs/result back (rank 0)."""
    group = Group(rank, world_size, rank)
    try:
        if job["threads"]:
            torch.set_num_threads(job["threads"])
        _init(group, f"tcp://127.0.0.1:{port}")
        if rank == 0:
            _forward_logs(channel)
        ckpt = Checkpoints(Store(job["store"]), job["graph"], job["key"])
        on_epoch = (lambda epoch, metrics: channel.put(("epoch", epoch, metrics))) if rank == 0 else None
        result = train_rank(job["node_data"], job["config"], ckpt, num_classes=job["num_classes"],
                            init_from=job["init_from"], rank=Rank(rank, world_size),
                            device=rank_device(job["config"], group), on_epoch=on_epoch)
        if rank == 0:
            channel.put(("result", asdict(result)))
    except BaseException as e:
        try:
            channel.put(("error", e))
        except Exception:
            channel.put(("error", RuntimeError(f"rank {rank}: {type(e).__name__}: {e}")))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _handle(message: tuple, on_epoch: OnEpoch | None, box: dict[str, Any]) -> None:
    kind = message[0]
    if kind == "epoch" and on_epoch is not None:
        on_epoch(message[1], message[2])
    elif kind == "log":
        record = message[1]
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    elif kind in ("result", "error"):
        box.setdefault(kind, message[1])


class _Channel:
    """The spawn context's queue, with log records tagged as such."""

    def __init__(self, q: Any):
        self.q = q

    def put(self, item: Any) -> None:
        self.q.put(("log", item) if isinstance(item, logging.LogRecord) else item)

    def put_nowait(self, item: Any) -> None:  # what QueueHandler calls
        self.put(item)


def spawn_ranks(node_data: NodeDataRef, config: TrainConfig, ckpt: Checkpoints, *, num_classes: int | None,
                on_epoch: OnEpoch | None, init_from: str | None) -> TrainResult:
    """Start ``config.world_size`` local ranks (spawned processes, gloo or NCCL on a free port of
    127.0.0.1), relay rank 0's epochs to ``on_epoch`` and its log records to this process's
    loggers, and return rank 0's result. The caller holds the checkpoint set's lock.

    Caveat: if ``on_epoch`` raises, or a rank fails, every rank is stopped and the error is raised
    here (a rank's own exception type, e.g. :class:`tasks.errors.InputError`, is kept)."""
    import torch.multiprocessing as mp

    world = config.world_size
    if resolve_device(config.device).type == "cuda" and torch.cuda.device_count() < world:
        from tasks.errors import InputError

        raise InputError(f"train.world_size={world} needs one GPU per rank; {torch.cuda.device_count()} visible")
    threads = max(1, (os.cpu_count() or 1) // world) if resolve_device(config.device).type == "cpu" else 0
    job = {"node_data": node_data, "config": config, "store": ckpt.store.uri, "graph": ckpt.graph,
           "key": ckpt.key, "num_classes": num_classes, "init_from": init_from, "threads": threads}
    q = mp.get_context("spawn").Queue()
    ctx = mp.start_processes(_rank_main, args=(world, free_port(), job, _Channel(q)), nprocs=world, join=False,
                             start_method="spawn")
    box: dict[str, Any] = {}
    try:
        _relay(ctx, q, on_epoch, box)
    except BaseException:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
        for p in ctx.processes:
            p.join(30)
        _drain(q, None, box)  # a rank's own error may still be in the queue
        if "error" in box:
            raise box["error"] from None
        raise
    return TrainResult(**box["result"])


def _relay(ctx: Any, q: Any, on_epoch: OnEpoch | None, box: dict[str, Any]) -> None:
    done = False
    while not done:
        try:
            _handle(q.get(timeout=0.2), on_epoch, box)
            continue
        except queue_mod.Empty:
            pass
        done = ctx.join(timeout=0.01)
    _drain(q, on_epoch, box)  # what was sent just before the processes ended


def _drain(q: Any, on_epoch: OnEpoch | None, box: dict[str, Any]) -> None:
    while True:
        try:
            _handle(q.get(timeout=0.1), on_epoch, box)
        except (queue_mod.Empty, EOFError, OSError):
            break


# -- the torchrun entry point ----------------------------------------------------------------
def _node_data_of(config: Any, group: Group) -> NodeDataRef:
    """Rank 0 prepares the graph (cached stages reused); every rank gets its node data reference."""
    box: list[Any] = [None]
    if group.rank == 0:
        from tasks.prepare import prepare_graph

        box[0] = asdict(prepare_graph(config).node_data)
    dist.broadcast_object_list(box, src=0)
    nd = box[0]
    return NodeDataRef(**{**nd, "partition": PartitionRef(**nd["partition"])})


def main(argv: list[str] | None = None) -> int:
    """``torchrun ... -m tasks.train.distributed --config FILE [--set KEY=VALUE ...]``: one rank of
    data-parallel training on the configured graph; rank 0 prints the result as JSON."""
    from tasks.config import load_config

    ap = argparse.ArgumentParser(prog="python -m tasks.train.distributed", description=main.__doc__)
    ap.add_argument("--config", help="a graphpipe YAML config (data, store, train ...)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ap.add_argument("--result", help="rank 0 also writes the result JSON to this local file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank " + os.environ.get("RANK", "?") + " %(message)s")
    cfg = load_config(args.config, args.set)
    group = joined_group()
    if group is None:
        ap.error("start it with torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not set)")
    try:
        node_data = _node_data_of(cfg, group)
        ckpt = checkpoints_for(node_data, cfg.train, Store(cfg.store))
        result = train_in_group(node_data, cfg.train, ckpt, group, num_classes=cfg.data.num_classes,
                                lock_timeout=cfg.lock_timeout_seconds, on_epoch=None, init_from=None)
    finally:
        dist.destroy_process_group()
    if group.rank == 0:
        text = json.dumps(asdict(result), indent=1)
        print(text)
        if args.result:
            with open(args.result, "w") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
