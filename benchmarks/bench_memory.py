"""Peak RSS of graphpipe's training stage as the graph grows (same batch size, same cluster size).

Input: generated community graphs (``tasks.synthetic.generate``, avg degree 16, 64 features) of each size in
``--sizes`` (default 1M and 4M nodes), each generated, ingested, normalized, METIS-partitioned
into ``N / --cluster-size`` parts (default cluster size 1500, so METIS on 4M nodes stays a few
minutes) and laid out once in the work directory.

Sides, each in its own process:

- ``train``: ``tasks.train.loop.train_cluster_gcn`` for ``--epochs`` (default 2) with ``eval_every``
  large, fixed ``clusters_per_batch`` (default 8), into a fresh store. The final evaluation
  (``infer_full_graph``) always runs on the last epoch; the peak is reported both before it (after
  epoch 1: training only) and overall (with the final evaluation);
- ``floor``: the same imports and ``ClusterGraph.open`` without training: the fixed cost of the
  interpreter, torch and PyG (measured on the smallest graph only).

Reported per size: ``ru_maxrss`` (anonymous + file-backed pages), and the sampled peaks of
``RssAnon`` (heap) and ``RssFile`` (memory-mapped ``.npy`` pages, which the kernel can drop).
Target (issue): the largest graph's peak <= 1.5x the smallest graph's peak.

``--eval-only`` instead runs only the full-graph evaluation of an untrained model per size, two
ways: ``predict_full_graph`` with a disk scratch directory (what training and the evaluate stage
run) and ``infer_full_graph`` (every layer's output in memory, for small graphs and tests), to show
what keeping intermediate layers on disk saves.

    .venv/bin/python benchmarks/bench_memory.py [--smoke] [--record] [--sizes 1000000,4000000] [--eval-only]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

FEATURES = 64
AVG_DEGREE = 16.0


def side_prepare(p: dict) -> dict:
    t0 = time.perf_counter()
    refs = B.prepared(Path(p["workdir"]), p["nodes"], AVG_DEGREE, FEATURES, num_parts=p["parts"])
    return {"refs": refs, "prepare_s": time.perf_counter() - t0}


def side_floor(p: dict) -> dict:
    import numpy as np  # noqa: F401
    import torch  # noqa: F401

    from storage.arrays import ClusterGraph
    from tasks.train.loop import train_cluster_gcn  # noqa: F401  (same imports as the train side)

    nd = p["refs"]["node_data"]
    graph = ClusterGraph.open(nd["partition"]["path"], nd["path"])
    return {"num_nodes": graph.num_nodes}


def side_train(p: dict) -> dict:
    import torch

    from storage.store import Store
    from tasks.config import PipelineConfig
    from tasks.train.loop import train_cluster_gcn

    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    refs = p["refs"]
    store = Path(tempfile.mkdtemp(dir=p["scratch"]))
    sampler = p["_sampler"]
    marks: dict[int, dict] = {}

    def on_epoch(epoch: int, metrics: dict) -> None:
        marks[epoch] = {"rss_mb": B.peak_rss_mb(), **sampler.peaks(), **{k: float(v) for k, v in metrics.items()}}
        B.log(f"epoch {epoch}: {metrics.get('epoch_seconds', 0):.1f} s (wait {metrics.get('batch_wait_seconds', 0):.1f} s), "
              f"peak RSS so far {marks[epoch]['rss_mb']:,.0f} MB")

    try:
        cfg = PipelineConfig.model_validate({
            **refs["config"], "store": str(store),
            "train": {"epochs": p["epochs"], "eval_every": 1_000_000, "clusters_per_batch": p["q"], "resume": False},
        })
        t0 = time.perf_counter()
        result = train_cluster_gcn(B.node_data_ref(refs), cfg.train, Store(cfg.store), num_classes=cfg.data.num_classes,
                                   on_epoch=on_epoch)
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(store, ignore_errors=True)
    first = marks[1]
    last = marks[max(marks)]
    return {"seconds": seconds, "train_rss_mb": first["rss_mb"], "train_anon_mb": first["peak_anon_mb"],
            "train_file_mb": first["peak_file_mb"], "epoch_s": [m["epoch_seconds"] for m in marks.values()],
            "eval_s": last.get("eval_seconds", float("nan")), "wait_fraction": result.batch_wait_fraction,
            "val_acc": result.best_val_acc, "threads": torch.get_num_threads()}


def side_eval(p: dict) -> dict:
    """Only the full-graph evaluation of an untrained model (its memory does not depend on the
    weights): ``predict_full_graph`` with disk scratch, or ``infer_full_graph`` in memory."""
    import torch

    from storage.arrays import ClusterGraph
    from tasks.evaluate.evaluate import infer_full_graph, predict_full_graph
    from tasks.train.model import GNN, ModelSpec

    nd = p["refs"]["node_data"]
    graph = ClusterGraph.open(nd["partition"]["path"], nd["path"])
    torch.manual_seed(0)
    model = GNN(ModelSpec("gcn", graph.num_features, 128, 10, 2, 0.5))
    before = B.peak_rss_mb()
    t0 = time.perf_counter()
    if p["variant"] == "disk":
        scratch = tempfile.mkdtemp(dir=p["scratch"])
        try:
            predict_full_graph(model, graph, torch.device("cpu"), scratch_dir=scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        infer_full_graph(model, graph, torch.device("cpu"))
    return {"seconds": time.perf_counter() - t0, "rss_before_mb": before}


SIDES = {"prepare": side_prepare, "floor": side_floor, "train": side_train, "eval": side_eval}


def child(side: str, params: str) -> None:
    B.child_main(SIDES, side, params, pass_sampler=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B.add_common_args(ap)
    ap.add_argument("--sizes", default=None, help="comma-separated node counts (default 1000000,4000000)")
    ap.add_argument("--cluster-size", type=int, default=None, help="nodes per METIS part (default 1500)")
    ap.add_argument("--clusters-per-batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (0 = torch's default; --smoke: 1)")
    ap.add_argument("--eval-only", action="store_true",
                    help="instead of training: only the full-graph evaluation, disk scratch vs in memory")
    args = ap.parse_args()
    if args.side:
        return child(args.side, args.params)

    sizes = [int(s) for s in (args.sizes or ("3000,12000" if args.smoke else "1000000,4000000")).split(",")]
    cluster = args.cluster_size or (250 if args.smoke else 1500)
    q = args.clusters_per_batch
    threads = args.threads if args.threads is not None else (1 if args.smoke else 0)
    B.say(f"bench_memory: sizes {sizes}, cluster size {cluster}, {q} clusters per batch, {args.epochs} epochs; "
          f"machine {B.machine()}")
    scratch = args.workdir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    out = []
    for n in sizes:
        parts = max(2 * q, round(n / cluster))
        t0 = time.perf_counter()
        prep = B.run_side(__file__, "prepare", {"workdir": str(args.workdir), "nodes": n, "parts": parts})
        B.say(f"  {n:,} nodes: prepared ({parts} parts) in {time.perf_counter() - t0:.0f} s")
        params = {"refs": prep["refs"], "scratch": str(scratch), "epochs": args.epochs, "q": q, "threads": threads}
        if args.eval_only:
            for variant in ("disk", "memory"):
                r = B.run_side(__file__, "eval", {**params, "variant": variant})
                B.say(f"  {n:,} nodes: infer_full_graph {variant}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:,.0f} MB "
                      f"(anon {r['peak_anon_mb']:,.0f}, file {r['peak_file_mb']:,.0f}); load {r['load_start']}")
                out.append((n, parts, variant, r))
            continue
        if n == sizes[0]:  # the floor (interpreter + torch + PyG + open) hardly depends on the graph: once
            floor = B.run_side(__file__, "floor", params)
        r = B.run_side(__file__, "train", params)
        B.say(f"  {n:,} nodes: floor {floor['peak_rss_mb']:,.0f} MB; train peak RSS {r['train_rss_mb']:,.0f} MB "
              f"(anon {r['train_anon_mb']:,.0f}, file {r['train_file_mb']:,.0f}), with final eval {r['peak_rss_mb']:,.0f} MB "
              f"(anon {r['peak_anon_mb']:,.0f}, file {r['peak_file_mb']:,.0f}); epochs {', '.join(f'{s:.1f}' for s in r['epoch_s'])} s, "
              f"eval {r['eval_s']:.1f} s; load {r['load_start']}")
        out.append((n, parts, floor, r))
    if args.eval_only:
        header = ["date", "machine (load 1/5/15)", "command", "nodes", "infer_full_graph", "seconds", "peak RSS (anon / file)",
                  "ratio vs smallest graph, same variant"]
        base = {v: r["peak_rss_mb"] for n, _, v, r in out if n == sizes[0]}
        rows = [[B.today(), B.machine(), f"`{B.command_line()}`", f"{n:,}",
                 "predict_full_graph, disk scratch" if v == "disk" else "infer_full_graph, in memory",
                 f"{r['seconds']:.1f}", f"{B.fmt_mb(r['peak_rss_mb'])} ({r['peak_anon_mb']:,.0f} / {r['peak_file_mb']:,.0f})",
                 f"{r['peak_rss_mb'] / base[v]:.2f}x"] for n, _, v, r in out]
        B.say(B.table(header, rows))
        if args.record:
            B.record("memory_eval", "bench_memory --eval-only: full-graph evaluation, disk scratch vs in memory", header, rows)
        return
    base = out[0][3]
    header = ["date", "machine (load 1/5/15)", "command", "nodes", "parts (cluster size)", "peak RSS train only (anon / file)",
              "peak RSS with final eval (anon / file)", "ratio vs smallest: train / with eval (target <= 1.5)",
              "floor (imports + open)", "epoch s", "final eval s"]
    rows = []
    for n, parts, floor, r in out:
        rt, re_ = r["train_rss_mb"] / base["train_rss_mb"], r["peak_rss_mb"] / base["peak_rss_mb"]
        verdict = "" if n == sizes[0] else (" (met)" if re_ <= 1.5 else " (MISSED)")
        rows.append([B.today(), B.machine(), f"`{B.command_line()}`", f"{n:,}", f"{parts} ({n / parts:,.0f})",
                     f"{B.fmt_mb(r['train_rss_mb'])} ({r['train_anon_mb']:,.0f} / {r['train_file_mb']:,.0f})",
                     f"{B.fmt_mb(r['peak_rss_mb'])} ({r['peak_anon_mb']:,.0f} / {r['peak_file_mb']:,.0f})",
                     f"{rt:.2f}x / {re_:.2f}x{verdict}", B.fmt_mb(floor["peak_rss_mb"]),
                     ", ".join(f"{s:.1f}" for s in r["epoch_s"]), f"{r['eval_s']:.1f}"])
    B.say(B.table(header, rows))
    if args.record:
        B.record("memory", "bench_memory: peak RSS of the training stage vs graph size", header, rows)


if __name__ == "__main__":
    main()
