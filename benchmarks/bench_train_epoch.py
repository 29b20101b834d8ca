"""The headline: one Cluster-GCN training epoch, graphpipe vs PyG's ClusterData + ClusterLoader.

Input: a generated community graph (``tasks.synthetic.generate``; default 200K nodes, avg degree 20, 128
features, 10 classes, 60/20/20 split), ingested, normalized, METIS-partitioned into ``--parts``
(default 128) by graphpipe and laid out, once, in the work directory.

Both sides use the same METIS assignment, the same normalized features, the same architecture and
optimizer (2 x ``GCNConv``, hidden 128, ReLU, dropout 0.5 before each layer, Adam lr 0.01
weight_decay 5e-4, loss on the batch's training nodes), ``torch.manual_seed(0)``, and batches of
``--clusters-per-batch`` (default 8) shuffled clusters with the edges between them:

- ``pyg``: ``torch_geometric.loader.ClusterData`` (a subclass whose ``_metis`` returns graphpipe's
  assignment in the snapshot's node order: PyG's METIS backends are not installed here) +
  ``ClusterLoader(batch_size=8, shuffle=True)``; ``GCNConv`` with its default ``normalize=True``
  on ``edge_index``; the epoch = loader + forward + backward + step;
- ``graphpipe``: ``storage.arrays.ClusterGraph`` (memory-mapped node data of
  ``tasks.partition.partition.layout_node_data``), batches from ``tasks.train.batching.epoch_batches`` /
  ``build_batch`` through ``tasks.train.loaders.Prefetcher`` (background thread, depth 2), ``tasks.train.model.GNN``,
  one epoch = ``tasks.train.steps.train_epoch``;

Each side is its own process (its own peak RSS). The machine is shared and noisy, so the sides run
**interleaved epoch by epoch** (A B, B A, ...): each pair of epochs sees about the same load. Per
side: set up, 1 warm-up epoch, ``--epochs`` timed epochs (median and min wall time, and CPU
time, reported), then a breakdown (loader alone; compute alone on pre-built batches), then accuracy
on the full graph after the same number of epochs (PyG: one full-batch forward; graphpipe:
``tasks.evaluate.evaluate.infer_full_graph``). Peak RSS is read before evaluation (training) and at the end.

Target (issue): graphpipe >= 2x faster per epoch.

    .venv/bin/python benchmarks/bench_train_epoch.py [--smoke] [--record] [--epochs 8] [--threads N] [--profile]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

SEED = 0


def _setup_torch(p: dict) -> None:
    import torch

    if p.get("threads"):
        torch.set_num_threads(int(p["threads"]))
    torch.manual_seed(SEED)


def _metrics(pred, y, split) -> dict[str, float]:
    from storage.snapshot import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL

    out = {}
    for name, code in (("train", SPLIT_TRAIN), ("val", SPLIT_VAL), ("test", SPLIT_TEST)):
        m = (split == code) & (y >= 0)
        out[f"{name}_acc"] = float((pred[m] == y[m]).mean()) if m.any() else float("nan")
    return out


def _torch_profile(run_epoch, label: str, rows: int = 18) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_epoch()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    for line in table.splitlines():
        B.log(f"prof {label} " + line)


def _cprofile(fn, label: str, rows: int = 15) -> None:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(rows)
    for line in s.getvalue().splitlines():
        B.log(f"prof {label} " + line)


# -- the sides (persistent child processes) ---------------------------------------------------------


class PygSide:
    def __init__(self, p: dict):
        import numpy as np
        import torch
        import torch.nn.functional as F
        from torch_geometric.data import Data
        from torch_geometric.loader import ClusterData, ClusterLoader

        from storage.snapshot import SPLIT_TRAIN, read_edges, read_nodes

        _setup_torch(p)
        self.p, self.torch, self.F = p, torch, F
        refs = p["refs"]
        t0 = time.perf_counter()
        src, dst = read_edges(refs["snapshot"]["path"])
        src, dst = torch.from_numpy(src.astype(np.int64)), torch.from_numpy(dst.astype(np.int64))
        edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
        del src, dst
        x = torch.from_numpy(np.load(Path(refs["features"]["path"]) / "x.npy"))
        self.labels, self.split = read_nodes(refs["snapshot"]["path"])
        assignment = torch.from_numpy(np.load(Path(refs["partition"]["path"]) / "assignment.npy").astype(np.int64))
        num_classes = int(self.labels.max()) + 1
        self.data = Data(x=x, y=torch.from_numpy(self.labels), edge_index=edge_index,
                         train_mask=torch.from_numpy(self.split == SPLIT_TRAIN))

        class GivenClusterData(ClusterData):
            """ClusterData with a given METIS assignment (PyG's METIS backends are not installed)."""

            def _metis(self, edge_index, num_nodes):
                return assignment

        cluster_data = GivenClusterData(self.data, num_parts=int(assignment.max()) + 1, log=False)
        self.loader = ClusterLoader(cluster_data, batch_size=p["q"], shuffle=True)
        self.setup_s = time.perf_counter() - t0

        torch.manual_seed(SEED)
        self.model = B.pyg_gcn([x.size(1), p["hidden"], num_classes], p["dropout"])
        self.opt = torch.optim.Adam(self.model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        self.epochs = 0

    def ready(self) -> dict:
        return {"setup_s": self.setup_s, "batches": len(self.loader), "threads": self.torch.get_num_threads()}

    def _step(self, batch) -> None:
        self.opt.zero_grad(set_to_none=True)
        out = self.model(batch.x, batch.edge_index)
        loss = self.F.cross_entropy(out[batch.train_mask], batch.y[batch.train_mask])
        loss.backward()
        self.opt.step()

    def epoch(self) -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        self.model.train()
        for batch in self.loader:
            self._step(batch)
        self.epochs += 1
        return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}

    def finish(self, profile: bool = False) -> dict:
        torch = self.torch
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        opt_state = self.opt.state_dict()
        t0 = time.perf_counter()
        batches = list(self.loader)
        loader_s = time.perf_counter() - t0
        self.model.train()
        t0 = time.perf_counter()
        for b in batches:
            self._step(b)
        compute_s = time.perf_counter() - t0
        if profile:
            _torch_profile(lambda: [self._step(b) for b in batches], "pyg")
        del batches
        self.model.load_state_dict(state)  # accuracy after the same epochs as the other side
        self.opt.load_state_dict(opt_state)
        train_rss = B.peak_rss_mb()
        self.model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = self.model(self.data.x, self.data.edge_index)
        eval_s = time.perf_counter() - t0
        acc = _metrics(logits.argmax(1).numpy(), self.labels, self.split)
        return {"loader_s": loader_s, "compute_s": compute_s, "eval_s": eval_s, "train_peak_rss_mb": train_rss,
                "epochs_trained": self.epochs, **acc}


class GraphpipeSide:
    def __init__(self, p: dict):
        import numpy as np
        import torch

        from storage.arrays import ClusterGraph
        from tasks.train.batching import build_batch, epoch_batches
        from tasks.evaluate.evaluate import infer_full_graph, split_metrics
        from tasks.train.model import GNN, ModelSpec
        from tasks.train.loaders import Prefetcher
        from tasks.train.steps import train_epoch

        _setup_torch(p)
        self.p, self.np, self.torch = p, np, torch
        self.build_batch, self.epoch_batches = build_batch, epoch_batches
        self.infer_full_graph, self.split_metrics = infer_full_graph, split_metrics
        self.Prefetcher, self.train_epoch = Prefetcher, train_epoch
        refs = p["refs"]
        t0 = time.perf_counter()
        nd = refs["node_data"]
        self.graph = ClusterGraph.open(nd["partition"]["path"], nd["path"])
        self.y, self.split = np.asarray(self.graph.y), np.asarray(self.graph.split)
        self.num_classes = int(self.y.max()) + 1
        self.setup_s = time.perf_counter() - t0
        torch.manual_seed(SEED)
        spec = ModelSpec("gcn", self.graph.num_features, p["hidden"], self.num_classes, 2, p["dropout"])
        self.model = GNN(spec)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        self.device = torch.device("cpu")
        self.epochs = 0

    def ready(self) -> dict:
        return {"setup_s": self.setup_s, "batches": -(-self.graph.num_parts // self.p["q"]),
                "threads": self.torch.get_num_threads()}

    def _batches(self, epoch: int):
        return self.epoch_batches(self.graph.num_parts, self.p["q"], self.np.random.default_rng([SEED, epoch]))

    def epoch(self) -> dict:
        t0, c0 = time.perf_counter(), time.process_time()
        pf = self.Prefetcher(self.graph, self._batches(self.epochs + 1), "gcn", self.p["prefetch"])
        self.train_epoch(self.model, self.opt, pf, self.device)
        self.epochs += 1
        return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "wait_s": pf.wait_seconds}

    def finish(self, profile: bool = False) -> dict:
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        opt_state = self.opt.state_dict()
        t0 = time.perf_counter()
        built = [self.build_batch(self.graph, c, "gcn") for c in self._batches(999)]
        loader_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.train_epoch(self.model, self.opt, built, self.device)
        compute_s = time.perf_counter() - t0
        if profile:
            _torch_profile(lambda: self.train_epoch(self.model, self.opt, built, self.device), "graphpipe")
            _cprofile(lambda: [self.build_batch(self.graph, c, "gcn") for c in self._batches(998)], "build_batch")
        del built
        self.model.load_state_dict(state)
        self.opt.load_state_dict(opt_state)
        train_rss = B.peak_rss_mb()
        t0 = time.perf_counter()
        logits, _ = self.infer_full_graph(self.model, self.graph, self.device)
        eval_s = time.perf_counter() - t0
        sm = self.split_metrics(logits.argmax(axis=1), self.y, self.split, self.num_classes)
        return {"loader_s": loader_s, "compute_s": compute_s, "eval_s": eval_s, "train_peak_rss_mb": train_rss,
                "epochs_trained": self.epochs, **{f"{k}_acc": v for k, v in sm.acc.items()}}


def side_prepare(p: dict) -> dict:
    return {"refs": B.prepared(Path(p["workdir"]), p["nodes"], p["avg_degree"], p["features"], num_parts=p["parts"])}


SIDES = {"pyg": PygSide, "graphpipe": GraphpipeSide}


def child(side: str, params: str) -> None:
    p = json.loads(params)
    if side == "prepare":
        return B.emit(side_prepare(p))
    s = SIDES[side](p)
    B.serve({"epoch": s.epoch, "finish": s.finish}, s.ready())


# -- the parent ------------------------------------------------------------------------------------


def run_interleaved(names: list[str], params: dict, epochs: int, profile: bool) -> dict[str, dict]:
    """Start one worker per side, run 1 + ``epochs`` epochs interleaved (order alternating), finish."""
    workers = {n: B.Worker(__file__, n, params) for n in names}
    out = {n: {**w.ready, "epoch_times": [], "epoch_cpu": [], "wait_times": [], "loads": []} for n, w in workers.items()}
    try:
        for e in range(1 + epochs):
            order = names if e % 2 == 0 else names[::-1]
            line = []
            for n in order:
                r = workers[n].call("epoch")
                if e > 0:  # epoch 0 is the warm-up
                    out[n]["epoch_times"].append(r["seconds"])
                    out[n]["epoch_cpu"].append(r["cpu_s"])
                    out[n]["wait_times"].append(r.get("wait_s", 0.0))
                    out[n]["loads"].append(r["load"])
                line.append(f"{n} {r['seconds']:.2f} s (cpu {r['cpu_s']:.2f})")
            B.say(f"    epoch {e}{' (warm-up)' if e == 0 else ''}: " + ", ".join(line) + f"  load {B.load_avg()}")
        for n in names:
            out[n].update(workers[n].call("finish", profile=profile))
    finally:
        for n, w in workers.items():
            out[n].update(w.close())
    for n in names:
        r = out[n]
        r["median_s"] = B.median(r["epoch_times"])
        r["min_s"] = min(r["epoch_times"])
        r["cpu_s"] = B.median(r["epoch_cpu"])
        r["wait_share"] = B.median([w / t for w, t in zip(r["wait_times"], r["epoch_times"])])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B.add_common_args(ap)
    ap.add_argument("--nodes", type=int, default=None, help="default 200,000")
    ap.add_argument("--avg-degree", type=float, default=20.0)
    ap.add_argument("--features", type=int, default=128)
    ap.add_argument("--parts", type=int, default=None, help="METIS parts (default 128)")
    ap.add_argument("--clusters-per-batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=None, help="timed epochs per side after 1 warm-up (default 8)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (0 = torch's default; --smoke: 1)")
    ap.add_argument("--prefetch", type=int, default=2, help="graphpipe's Prefetcher depth (train.prefetch)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler of one epoch per side, cProfile of build_batch")
    args = ap.parse_args()
    if args.side:
        return child(args.side, args.params)

    nodes = args.nodes or (5_000 if args.smoke else 200_000)
    parts = args.parts or (16 if args.smoke else 128)
    q = min(args.clusters_per_batch, max(1, parts // 2))
    epochs = args.epochs or (2 if args.smoke else 8)
    repeats = args.repeats or 1
    features = 16 if args.smoke and args.features == 128 else args.features
    threads = args.threads if args.threads is not None else (1 if args.smoke else 0)
    B.say(f"bench_train_epoch: {nodes:,} nodes, avg degree {args.avg_degree:g}, {features} features, {parts} parts, "
          f"{q} per batch, 1 + {epochs} epochs per side, interleaved, {repeats} repeat(s); machine {B.machine()}")
    prep = B.run_side(__file__, "prepare", {"workdir": str(args.workdir), "nodes": nodes,
                                            "avg_degree": args.avg_degree, "features": features, "parts": parts})
    params = {"refs": prep["refs"], "q": q, "hidden": 128, "dropout": 0.5, "lr": 0.01,
              "weight_decay": 5e-4, "threads": threads, "prefetch": args.prefetch}
    names = ["graphpipe", "pyg"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(repeats):
        order = names if rep % 2 == 0 else names[::-1]
        res = run_interleaved(order, params, epochs, args.profile)
        for n in names:
            r = res[n]
            runs[n].append(r)
            extra = f"  batch wait {100 * r['wait_share']:.0f}%" if n != "pyg" else ""
            B.say(f"  {n:9s} {r['median_s']:6.2f} s/epoch median, {r['min_s']:.2f} min, cpu {r['cpu_s']:.2f} s/epoch{extra}; "
                  f"loader alone {r['loader_s']:.2f} s, compute alone {r['compute_s']:.2f} s; train peak RSS "
                  f"{r['train_peak_rss_mb']:,.0f} MB, with eval {r['peak_rss_mb']:,.0f} MB; test acc {r['test_acc']:.4f} "
                  f"after {r['epochs_trained']} epochs")
    best = {s: min(runs[s], key=lambda r: r["median_s"]) for s in runs}
    g, pg = best["graphpipe"], best["pyg"]
    min_s = {s: min(r["min_s"] for r in runs[s]) for s in runs}
    cpu_s = {s: min(r["cpu_s"] for r in runs[s]) for s in runs}
    # paired ratio: epoch k of PyG / epoch k of graphpipe (adjacent in time), median over pairs
    pairs = [a / b for r_p, r_g in zip(runs["pyg"], runs["graphpipe"]) for a, b in zip(r_p["epoch_times"], r_g["epoch_times"])]
    paired = B.median(pairs)
    speedup = pg["median_s"] / g["median_s"]
    header = ["date", "machine (load 1/5/15)", "command", "graph", "PyG s/epoch (median / min)",
              "graphpipe s/epoch (median / min)", "speedup: median of paired epochs (target >= 2x)",
              "speedup of min epochs / of CPU s per epoch", "graphpipe batch wait", "PyG peak RSS (train / +eval)",
              "graphpipe peak RSS (train / +eval)", f"test acc after {g['epochs_trained']} epochs (PyG / graphpipe)",
              "breakdown: loader alone / compute alone (PyG; graphpipe)"]
    row = [B.today(), B.machine(), f"`{B.command_line()}`",
           f"generated {nodes / 1e3:g}K nodes, avg deg {args.avg_degree:g}, {features} feats, {parts} parts, {q}/batch, "
           f"{g['batches']} batches, torch threads {g['threads']}",
           f"{pg['median_s']:.2f} / {min_s['pyg']:.2f}", f"{g['median_s']:.2f} / {min_s['graphpipe']:.2f}",
           f"{paired:.2f}x ({'met' if paired >= 2 else 'MISSED'}; ratio of medians {speedup:.2f}x)",
           f"{min_s['pyg'] / min_s['graphpipe']:.2f}x / {cpu_s['pyg'] / cpu_s['graphpipe']:.2f}x "
           f"({cpu_s['pyg']:.2f} vs {cpu_s['graphpipe']:.2f} CPU s)",
           f"{100 * g['wait_share']:.0f}%",
           f"{B.fmt_mb(pg['train_peak_rss_mb'])} / {B.fmt_mb(pg['peak_rss_mb'])}",
           f"{B.fmt_mb(g['train_peak_rss_mb'])} / {B.fmt_mb(g['peak_rss_mb'])}",
           f"{pg['test_acc']:.4f} / {g['test_acc']:.4f}",
           f"{pg['loader_s']:.2f} / {pg['compute_s']:.2f}; {g['loader_s']:.2f} / {g['compute_s']:.2f}"]
    B.say(B.table(header, [row]))
    if args.record:
        B.record("train_epoch", "bench_train_epoch: Cluster-GCN epoch, graphpipe vs PyG ClusterLoader + GCNConv",
                 header, [row])


if __name__ == "__main__":
    main()
