"""Defaults from evidence: candidate configs x graphs, test accuracy of the whole pipeline.

Each cell runs graphpipe's real stages (ingest -> normalize -> partition -> layout -> train ->
evaluate, no Prefect or MLflow) with the project's default config plus the candidate's overrides,
in one store per graph (so ingest, partition and each normalization's node data are computed once
and reused by every candidate). Reported per cell: the test accuracy of the best-validation epoch,
with the best epoch and the epochs run.

Graphs (``--graphs``): every labeled dataset in ``../shared/data`` (cora and citeseer with their
public split; amazon_computers and coauthor_cs with graphpipe's per-class 20/30 split) and three
generated DC-SBM graphs (``tasks/synthetic/generate.py``; 8,000 nodes, 8 classes, 64 Gaussian features,
average degree 10, the per-class 20/30 split forced):

- ``gen_homophilous``: ``p_intra=0.6`` (about 65% same-class edges), ``feature_signal=1.75``;
- ``gen_heterophilous``: ``p_intra=0.1`` (about 21% same-class edges), ``feature_signal=1.75``;
- ``gen_weak_features``: ``p_intra=0.5``, ``feature_signal=0.75``.

Candidates (``--candidates``, names from :data:`CANDIDATES`): overrides of the default config. Every
candidate trains with the same budget, ``train.epochs`` and ``train.patience`` from
:data:`BUDGET` (unless it sets them), so they differ only in what they name.

Results are kept in ``WORKDIR/defaults/results.json`` (one entry per graph, candidate and seed) and
reused by later runs, so the sweep can be run in pieces; ``--fresh`` ignores them. Output: a
Markdown table, one row per candidate, one column per graph (mean over seeds), then the mean over
graphs and the worst shortfall against the best candidate of each graph ("regret").

    nice -n 10 .venv/bin/python benchmarks/bench_defaults.py [--smoke] [--record] [--graphs cora,gen_homophilous]
        [--candidates today,standard,none] [--seeds 0] [--threads 1] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402
from storage.store import Store

DATA = B.REPO.parent / "shared" / "data"
REAL = ("cora", "citeseer", "amazon_computers", "coauthor_cs")
GENERATED = {
    "gen_homophilous": {"p_intra": 0.6, "feature_signal": 1.75},
    "gen_heterophilous": {"p_intra": 0.1, "feature_signal": 1.75},
    "gen_weak_features": {"p_intra": 0.5, "feature_signal": 0.75},
}
# degree_exponent and label_noise pinned to the generator's defaults when docs/defaults.md was measured
GEN_COMMON = {"num_nodes": 8000, "avg_degree": 10.0, "num_classes": 8, "num_features": 64, "seed": 0,
              "degree_exponent": 2.5, "label_noise": 0.05}
GRAPHS = REAL + tuple(GENERATED)
BUDGET = {"train.epochs": 300, "train.patience": 50}

#: name -> overrides of the default config (applied on top of BUDGET)
CANDIDATES: dict[str, dict] = {
    # the defaults before issue 8 (auto = row on non-negative features), with the common budget
    "today": {"normalize.method": "auto_v1", "train.lr": 0.01, "train.weight_decay": 5e-4, "train.hidden": 128,
              "train.dropout": 0.5},
    "row": {"normalize.method": "row"},
    "l2": {"normalize.method": "l2"},
    "none_wd5e-3": {"normalize.method": "none", "train.weight_decay": 5e-3},
    "none_lr005": {"normalize.method": "none", "train.lr": 0.005},
    "standard": {"normalize.method": "standard"},
    "none": {"normalize.method": "none"},
    "standard_lr005": {"normalize.method": "standard", "train.lr": 0.005},
    "standard_lr02": {"normalize.method": "standard", "train.lr": 0.02},
    "standard_wd5e-5": {"normalize.method": "standard", "train.weight_decay": 5e-5},
    "standard_wd5e-3": {"normalize.method": "standard", "train.weight_decay": 5e-3},
    "standard_h64": {"normalize.method": "standard", "train.hidden": 64},
    "standard_h256": {"normalize.method": "standard", "train.hidden": 256},
    "standard_do03": {"normalize.method": "standard", "train.dropout": 0.3},
    "standard_do07": {"normalize.method": "standard", "train.dropout": 0.7},
    "standard_batch2k": {"normalize.method": "standard", "train.target_batch_nodes": 2000},
    "standard_batch10k": {"normalize.method": "standard", "train.target_batch_nodes": 10000},
    "none_wd5e-5": {"normalize.method": "none", "train.weight_decay": 5e-5},
    "none_h256": {"normalize.method": "none", "train.hidden": 256},
}
#: one change at a time against the chosen defaults (``auto`` normalization: l2 / standard)
VARIANTS: dict[str, dict] = {
    "lr005": {"train.lr": 0.005},
    "lr02": {"train.lr": 0.02},
    "wd5e-5": {"train.weight_decay": 5e-5},
    "wd5e-3": {"train.weight_decay": 5e-3},
    "h64": {"train.hidden": 64},
    "h256": {"train.hidden": 256},
    "do03": {"train.dropout": 0.3},
    "do07": {"train.dropout": 0.7},
    "batch2k": {"train.target_batch_nodes": 2000},
    "batch10k": {"train.target_batch_nodes": 10000},
}
CANDIDATES["auto"] = {"normalize.method": "auto"}
CANDIDATES.update({f"auto_{k}": {"normalize.method": "auto", **v} for k, v in VARIANTS.items()})
SMOKE = {"graphs": ["cora"], "candidates": ["standard", "none"], "epochs": 3}


def resolve_auto_v1(overrides: dict, graph: str) -> dict:
    """``auto_v1``: the old ``auto`` rule (``row`` when every feature is non-negative, else
    ``standard``): the real datasets have non-negative features, the generated ones Gaussian."""
    out = dict(overrides)
    if out.get("normalize.method") == "auto_v1":
        out["normalize.method"] = "row" if graph in REAL else "standard"
    return out


def graph_inputs(graph: str, workdir: Path) -> dict:
    """``data`` and ``split`` sections for a graph (generating it into ``workdir`` once)."""
    if graph in REAL:
        d = DATA / graph
        data = {"name": graph, "edges": [str(d / "edges.csv")], "nodes": str(d / "nodes.parquet")}
        if (d / "features.npz").exists():
            data["features"] = str(d / "features.npz")
        return {"data": data, "split": {"seed": 0}}
    from tasks.synthetic.generate import GeneratorConfig, generate_graph

    out = workdir / "generated" / graph
    cfg = GeneratorConfig(**GEN_COMMON, **GENERATED[graph])
    if not (out / "DONE").exists():
        generate_graph(cfg, out)
        (out / "DONE").write_text("ok")
    data = {"name": graph, "edges": [str(out / cfg.edge_file_name)], "nodes": str(out / "nodes.parquet")}
    return {"data": data, "split": {"seed": 0, "force": True, "method": "per_class"}}


def run_cell(graph: str, candidate: str, seed: int, epochs: int | None, workdir: Path) -> dict:
    """One pipeline run (stages in this process); returns test/val accuracy and timings."""
    from tasks.config import load_config
    from tasks.evaluate.evaluate import evaluate_model
    from tasks.prepare import prepare_graph
    from storage.store import Store
    from tasks.train.loop import train_cluster_gcn

    base = {"store": str(workdir / "store" / graph), **graph_inputs(graph, workdir)}
    overrides = {**BUDGET, **resolve_auto_v1(CANDIDATES[candidate], graph), "train.seed": seed,
                 "partition.seed": seed}
    if epochs is not None:
        overrides["train.epochs"] = epochs
    cfg = load_config(base=base, overrides=overrides)
    t0 = time.perf_counter()
    snap, feats, part, nd = prepare_graph(cfg)
    prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = train_cluster_gcn(nd, cfg.train, Store(cfg.store), num_classes=cfg.data.num_classes)
    ev = evaluate_model(trained, nd, snap, Store(cfg.store), device=cfg.train.device, seed=cfg.train.seed, embedding_nodes=cfg.track.embedding_plot_nodes)
    secs = time.perf_counter() - t0
    m = ev.metrics
    return {"test_acc": m["test_acc"], "val_acc": m["val_acc"], "train_acc": m["train_acc"],
            "best_epoch": int(m["best_epoch"]), "epochs_run": trained.epochs_run, "seconds": secs, "prep_s": prep,
            "normalization": feats.method, "clusters_per_batch": trained.clusters_per_batch,
            "num_parts": part.num_parts}


def summarize(results: dict, graphs: list[str], candidates: list[str], seeds: list[int]) -> tuple[list[str], list[list[str]]]:
    """Rows: candidate, one cell per graph (test acc %, mean over seeds, best epoch), mean, regret."""
    means: dict[tuple[str, str], float] = {}
    cells: dict[tuple[str, str], str] = {}
    for c in candidates:
        for g in graphs:
            runs = [results[k] for s in seeds if (k := f"{g}|{c}|{s}") in results]
            if not runs:
                cells[(c, g)] = "-"
                continue
            means[(c, g)] = statistics.fmean(r["test_acc"] for r in runs)
            epochs = "/".join(str(r["best_epoch"]) for r in runs)
            cells[(c, g)] = f"{100 * means[(c, g)]:.1f} (e{epochs})"
    best = {g: max((means[(c, g)] for c in candidates if (c, g) in means), default=float("nan")) for g in graphs}
    header = ["candidate", "overrides", *graphs, "mean", "worst shortfall vs best (points)"]
    rows = []
    for c in candidates:
        vals = [means[(c, g)] for g in graphs if (c, g) in means]
        complete = len(vals) == len(graphs)
        mean = f"{100 * statistics.fmean(vals):.1f}" + ("" if complete else " (partial)") if vals else "-"
        regret = max((100 * (best[g] - means[(c, g)]) for g in graphs if (c, g) in means), default=float("nan"))
        over = ", ".join(f"{k}={v}" for k, v in CANDIDATES[c].items()) or "(defaults)"
        rows.append([c, over, *(cells[(c, g)] for g in graphs), mean, f"{regret:.1f}"])
    return header, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B.add_common_args(ap)
    ap.add_argument("--graphs", default=None, help=f"comma-separated (default {','.join(GRAPHS)})")
    ap.add_argument("--candidates", default=None, help=f"comma-separated (default all: {','.join(CANDIDATES)})")
    ap.add_argument("--seeds", default="0", help="comma-separated train/partition seeds (default 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--fresh", action="store_true", help="ignore results kept from earlier runs")
    args = ap.parse_args()
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    graphs = args.graphs.split(",") if args.graphs else (SMOKE["graphs"] if args.smoke else list(GRAPHS))
    candidates = args.candidates.split(",") if args.candidates else (SMOKE["candidates"] if args.smoke else list(CANDIDATES))
    for name in candidates:
        if name not in CANDIDATES:
            sys.exit(f"unknown candidate {name!r}; known: {', '.join(CANDIDATES)}")
    for g in graphs:
        if g not in GRAPHS:
            sys.exit(f"unknown graph {g!r}; known: {', '.join(GRAPHS)}")
        if g in REAL and not (DATA / g).is_dir():
            sys.exit(f"dataset folder missing: {DATA / g}")
    seeds = [int(s) for s in args.seeds.split(",")]
    epochs = SMOKE["epochs"] if args.smoke else None
    workdir = args.workdir / ("defaults-smoke" if args.smoke else "defaults")
    workdir.mkdir(parents=True, exist_ok=True)
    results_path = workdir / "results.json"
    results = {} if (args.fresh or args.smoke or not results_path.exists()) else json.loads(results_path.read_text())
    B.say(f"bench_defaults: graphs {graphs}; candidates {candidates}; seeds {seeds}; budget {BUDGET}; "
          f"machine {B.machine()}")
    t_all = time.perf_counter()
    for c in candidates:  # candidate by candidate: a partial run still compares whole rows
        for g in graphs:
            for s in seeds:
                key = f"{g}|{c}|{s}"
                if key in results:
                    continue
                r = run_cell(g, c, s, epochs, workdir)
                results[key] = r
                if not args.smoke:
                    results_path.write_text(json.dumps(results, indent=1, sort_keys=True))
                B.say(f"  {g:18s} {c:18s} seed {s}: test {100 * r['test_acc']:.2f} val {100 * r['val_acc']:.2f} "
                      f"(best epoch {r['best_epoch']} of {r['epochs_run']}, {r['normalization']}, "
                      f"{r['clusters_per_batch']}/{r['num_parts']} clusters per batch) {r['seconds']:.0f} s")
    header, rows = summarize(results, graphs, candidates, seeds)
    B.say(B.table(header, rows))
    B.say(f"test accuracy %, mean over seeds {seeds}; (eN): best-validation epoch; wall {time.perf_counter() - t_all:.0f} s; "
          f"load {B.load_avg()}")
    if args.record:
        B.record("defaults", "bench_defaults: candidate default configs on real and generated graphs",
                 ["date", "command", *header], [[B.today(), f"`{B.command_line()}`", *r] for r in rows])


if __name__ == "__main__":
    main()
