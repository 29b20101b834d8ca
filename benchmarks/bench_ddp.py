"""Data-parallel training: epoch time and peak memory with ``train.world_size`` 1 vs 2 (gloo, CPU).

Input: a generated community graph (``tasks.synthetic.generate``, avg degree 16, ``--features``
features, default 100,000 nodes), generated, ingested, normalized, METIS-partitioned into
``--parts`` parts and laid out once in the work directory.

Sides, each in its own process (alternating order, ``--repeats`` each):

- ``w1``: ``tasks.train.loop.train_cluster_gcn`` with ``train.world_size=1`` (one process, torch's
  threads = all cores);
- ``w1t``: the same with torch's threads = cores / 2, the threads each rank of ``w2`` gets (on a
  shared, loaded machine, torch's OpenMP threads can lose more to contention than they gain);
- ``w2``: the same with ``train.world_size=2``: two spawned ranks (gloo on 127.0.0.1, each with
  cores / 2 threads), every epoch's batches dealt out to them, gradients averaged by
  ``DistributedDataParallel`` after each step.

Both train ``--epochs`` epochs (default 4) with the same clusters per batch, ``eval_every`` large (the
final epoch's full-graph validation runs on rank 0 only and is reported apart). Reported: the
median epoch time of epochs 2.. (training only: epoch 1 includes start-up), the wall time of the
whole call (process start-up included), and the peak RSS of the process tree (the side's process
plus its ranks, summed at the same instant, sampled every 20 ms).

On one machine DDP does not add compute: each rank does half the steps with half the cores, and
pays an all-reduce of the gradients per step plus one more copy of the interpreter, torch and the
model. The point of ``world_size`` is several GPUs or machines; this benchmark shows its cost on CPU.

    .venv/bin/python benchmarks/bench_ddp.py [--smoke] [--record] [--nodes 100000] [--epochs 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402


def side_prepare(p: dict) -> dict:
    return {"refs": B.prepared(Path(p["workdir"]), p["nodes"], 16, p["features"], num_parts=p["parts"])}


def side_train(p: dict) -> dict:
    from storage.store import Store
    from tasks.config import PipelineConfig
    from tasks.train.loop import train_cluster_gcn

    if p.get("threads"):
        import torch

        torch.set_num_threads(p["threads"])
    refs = p["refs"]
    store = Path(tempfile.mkdtemp(dir=p["scratch"]))
    epochs: list[dict] = []
    try:
        cfg = PipelineConfig.model_validate({
            **refs["config"], "store": str(store),
            "train": {"epochs": p["epochs"], "eval_every": 1_000_000, "clusters_per_batch": p["q"], "resume": False,
                      "world_size": p["world_size"], "patience": None},
        })
        t0 = time.perf_counter()
        result = train_cluster_gcn(B.node_data_ref(refs), cfg.train, Store(cfg.store), num_classes=cfg.data.num_classes,
                                   on_epoch=lambda e, m: epochs.append(dict(m)))
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(store, ignore_errors=True)
    listed = ", ".join(f"{m['epoch_seconds']:.2f}" for m in epochs)
    B.log(f"world_size {p['world_size']}: epochs {listed} s, "
          f"{result.rank_batches} batches per rank")
    return {"seconds": seconds, "epoch_s": [m["epoch_seconds"] for m in epochs],
            "eval_s": epochs[-1].get("eval_seconds", float("nan")), "rank_batches": result.rank_batches,
            "best_val_acc": result.best_val_acc}


SIDES = {"prepare": side_prepare, "train": side_train}
HALF = max(1, (os.cpu_count() or 2) // 2)
SETUPS = {"w1": {"world_size": 1, "threads": 0}, "w1t": {"world_size": 1, "threads": HALF},
          "w2": {"world_size": 2, "threads": 0}}  # w2's ranks take cores / 2 threads each themselves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B.add_common_args(ap)
    ap.add_argument("--nodes", type=int, default=None, help="graph size (default 100000; --smoke: 3000)")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--parts", type=int, default=None, help="METIS parts (default nodes / 500)")
    ap.add_argument("--clusters-per-batch", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=None, help="epochs per side (default 4; --smoke: 2)")
    args = ap.parse_args()
    if args.side:
        return B.child_main(SIDES, args.side, args.params)

    n = args.nodes or (3000 if args.smoke else 100_000)
    parts = args.parts or max(4, n // 500)
    q = min(args.clusters_per_batch, max(1, parts // 4))
    epochs = args.epochs or (2 if args.smoke else 4)
    repeats = args.repeats or (1 if args.smoke else 2)
    B.say(f"bench_ddp: {n:,} nodes, {parts} parts, {q} clusters per batch, {epochs} epochs, {repeats} repeats; "
          f"machine {B.machine()}")
    scratch = args.workdir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    prep = B.run_side(__file__, "prepare", {"workdir": str(args.workdir), "nodes": n, "parts": parts,
                                            "features": args.features})
    params = {"refs": prep["refs"], "scratch": str(scratch), "epochs": epochs, "q": q}
    runs: dict[str, list[dict]] = {s: [] for s in SETUPS}
    for side in B.alternate(list(SETUPS), repeats):
        r = B.run_side(__file__, "train", {**params, **SETUPS[side]})
        B.say(f"  {side}: epoch {B.median(r['epoch_s'][1:] or r['epoch_s']):.2f} s, whole call "
              f"{r['seconds']:.1f} s, peak RSS of the process tree {B.fmt_mb(r['peak_tree_mb'])}; load {r['load_start']}")
        runs[side].append(r)
    _report(args, n, parts, q, epochs, runs)


def _report(args, n: int, parts: int, q: int, epochs: int, runs: dict[str, list[dict]]) -> None:
    def epoch_s(side: str) -> float:
        return B.median([B.median(r["epoch_s"][1:] or r["epoch_s"]) for r in runs[side]])

    def peak(side: str) -> float:
        return max(r["peak_tree_mb"] for r in runs[side])

    header = ["date", "machine (load 1/5/15)", "command", "graph", "world_size (torch threads per process)", "epoch s (median of epochs 2..)",
              "whole call s (with start-up)", "final validation s (rank 0)", "peak RSS, process tree",
              "batches per rank", "vs world_size 1: epoch / memory"]
    rows = []
    for side in SETUPS:
        last = runs[side][-1]
        threads = SETUPS[side]["threads"] or (HALF if side == "w2" else os.cpu_count())
        rows.append([B.today(), B.machine(), f"`{B.command_line()}`", f"{n:,} nodes, {parts} parts, {q} per batch, {epochs} epochs",
                     f"{SETUPS[side]['world_size']} ({threads})", B.fmt_s(epoch_s(side)), B.fmt_s(B.median([r["seconds"] for r in runs[side]])),
                     B.fmt_s(last["eval_s"]), B.fmt_mb(peak(side)), ", ".join(str(b) for b in last["rank_batches"]),
                     f"{epoch_s(side) / epoch_s('w1'):.2f}x / {peak(side) / peak('w1'):.2f}x"])
    B.say(B.table(header, rows))
    if args.record:
        B.record("ddp", "bench_ddp: data-parallel training, world_size 1 vs 2 (gloo, CPU)", header, rows)


if __name__ == "__main__":
    main()
