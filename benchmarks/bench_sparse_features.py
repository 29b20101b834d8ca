"""Sparse bag-of-words features through the first layer vs the dense matrix, on Coauthor CS.

Coauthor CS (``../shared/data/coauthor_cs``: 18,333 nodes, 6,805 word-count features with 0.9%
non-zeros, 15 classes; graphpipe's per-class 20/30 split, ``split.seed=0``) through graphpipe's
real stages, twice, each side in its own process and its own store, with the same config except
``normalize.sparse_below``:

- ``dense``: ``normalize.sparse_below=0``: the normalized features as a dense ``x.npy`` (18,333 x
  6,805 float32, 499 MB), batches carry dense rows, the first layer is a dense ``x @ W^T`` (what
  graphpipe did before);
- ``sparse``: the default: CSR node data, batches carry CSR rows, the first layer is
  ``torch.sparse.mm`` (see ``tasks/train/model.py``).

Both: the same normalization (``--normalize``, default: the config's default), the default model
and training settings, ``--epochs`` epochs (default 30, no early stopping so both run the same
number), the same seed. Reported per side: median seconds of a training epoch (``epoch_seconds``
of training's history: batches only), median seconds of the full-graph evaluation after each epoch
(``eval_seconds``), the whole ``train_cluster_gcn`` call, and ``evaluate_model``'s test accuracy
(best-validation epoch). The ratio dense / sparse is the speed-up. The sides run one after the
other (``--repeats`` alternates their order), with ``--threads`` torch threads (default 1).

    nice -n 10 .venv/bin/python benchmarks/bench_sparse_features.py [--smoke] [--record] [--epochs 30] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402
from storage.store import Store

DATA = B.REPO.parent / "shared" / "data" / "coauthor_cs"
SIDES_ORDER = ["dense", "sparse"]


def side_run(p: dict) -> dict:
    """One side: the stages, then training and evaluation; timings from training's history."""
    import torch

    from tasks.config import load_config
    from tasks.evaluate.evaluate import evaluate_model
    from storage.checkpoints import Checkpoints
    from storage.store import Store
    from tasks.prepare import prepare_graph
    from tasks.train.loop import train_cluster_gcn

    if p["threads"]:
        torch.set_num_threads(p["threads"])
    d = Path(p["data"])
    base = {"store": p["store"], "data": {"name": "coauthor_cs", "edges": [str(d / "edges.csv")],
                                          "nodes": str(d / "nodes.parquet"), "features": str(d / "features.npz")}}
    overrides = {"train.epochs": p["epochs"], "train.patience": None, "train.seed": 0,
                 "normalize.sparse_below": 0.0 if p["side"] == "dense" else p["sparse_below"]}
    if p["normalize"]:
        overrides["normalize.method"] = p["normalize"]
    cfg = load_config(base=base, overrides=overrides)
    t0 = B.timer()
    snap, feats, part, nd = prepare_graph(cfg)
    prep = B.timer() - t0
    t0 = B.timer()
    trained = train_cluster_gcn(nd, cfg.train, Store(cfg.store), num_classes=cfg.data.num_classes)
    train_s = B.timer() - t0
    ev = evaluate_model(trained, nd, snap, Store(cfg.store), device=cfg.train.device, seed=cfg.train.seed, embedding_nodes=cfg.track.embedding_plot_nodes)
    history = Checkpoints(Store(cfg.store), trained.graph, trained.key).history()
    epoch_s = statistics.median(h["epoch_seconds"] for h in history)
    eval_s = statistics.median(h["eval_seconds"] for h in history if "eval_seconds" in h)
    sparse = (Path(nd.path) / "x_indptr.npy").exists()
    B.log(f"{p['side']}: {feats.method}, sparse node data {sparse}; epoch {epoch_s:.2f} s, eval {eval_s:.2f} s, "
          f"train {train_s:.0f} s; test {ev.metrics['test_acc']:.4f} (best epoch {int(ev.metrics['best_epoch'])})")
    return {"epoch_s": epoch_s, "eval_s": eval_s, "train_s": train_s, "prep_s": prep, "test_acc": ev.metrics["test_acc"],
            "val_acc": ev.metrics["val_acc"], "best_epoch": int(ev.metrics["best_epoch"]), "normalization": feats.method,
            "sparse_node_data": sparse, "clusters_per_batch": trained.clusters_per_batch, "num_parts": part.num_parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B.add_common_args(ap)
    ap.add_argument("--epochs", type=int, default=None, help="epochs per side (default 30; smoke 2)")
    ap.add_argument("--normalize", default=None, help="normalize.method for both sides (default: the config default)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per side (default 1)")
    args = ap.parse_args()
    if args.side:
        return B.child_main({"run": side_run}, "run", args.params)
    if not DATA.is_dir():
        sys.exit(f"dataset folder missing: {DATA}")
    from tasks.config import NormalizeConfig

    epochs = args.epochs or (2 if args.smoke else 30)
    repeats = args.repeats or 1
    scratch = args.workdir / "sparse_features"
    scratch.mkdir(parents=True, exist_ok=True)
    B.say(f"bench_sparse_features: coauthor_cs, {epochs} epochs, normalize {args.normalize or NormalizeConfig().method}, "
          f"{repeats} repeat(s); machine {B.machine()}")
    results: dict[str, list[dict]] = {s: [] for s in SIDES_ORDER}
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        for side in B.alternate(SIDES_ORDER, repeats):
            params = {"side": side, "store": str(Path(tmp) / side), "data": str(DATA), "epochs": epochs,
                      "threads": args.threads, "normalize": args.normalize,
                      "sparse_below": NormalizeConfig().sparse_below}
            results[side].append(B.run_side(__file__, "run", params))
    med = {s: {k: statistics.median(r[k] for r in rs) for k in ("epoch_s", "eval_s", "train_s", "test_acc")}
           for s, rs in results.items()}
    speedup = med["dense"]["epoch_s"] / med["sparse"]["epoch_s"]
    eval_speedup = med["dense"]["eval_s"] / med["sparse"]["eval_s"]
    total_speedup = med["dense"]["train_s"] / med["sparse"]["train_s"]
    first = results["sparse"][0]
    header = ["date", "machine (load 1/5/15)", "command", "setup", "dense: s/epoch, eval s, train s, test acc",
              "sparse: s/epoch, eval s, train s, test acc", "speed-up (dense / sparse): epoch, eval, whole training",
              "peak RSS dense / sparse"]
    row = [B.today(), B.machine(), f"`{B.command_line()}`",
           f"coauthor_cs, {first['normalization']}, {first['num_parts']} parts, {first['clusters_per_batch']} per batch, "
           f"{epochs} epochs, {args.threads} thread(s), {repeats} repeat(s) (medians)",
           *(f"{med[s]['epoch_s']:.2f}, {med[s]['eval_s']:.2f}, {med[s]['train_s']:.0f}, {100 * med[s]['test_acc']:.2f}"
             for s in SIDES_ORDER),
           f"{speedup:.1f}x, {eval_speedup:.1f}x, {total_speedup:.1f}x",
           " / ".join(B.fmt_mb(statistics.median(r.get("peak_tree_mb") or r.get("peak_rss_mb", 0) for r in results[s]))
                      for s in SIDES_ORDER)]
    B.say(B.table(header, [row]))
    if args.smoke:
        B.say("smoke: a few epochs, the ratio means little")
    if args.record:
        B.record("sparse_features", "bench_sparse_features: Coauthor CS, sparse first layer vs dense features",
                 header, [row])


if __name__ == "__main__":
    main()
