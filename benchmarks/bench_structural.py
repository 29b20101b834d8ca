"""Graphs without node features: which input encoding learns (``normalize.structural``).

Each dataset's features are dropped: the node table is rewritten into a temporary directory with
only ``node_id``, ``label`` and ``split`` (Cora and CiteSeer from ``../shared/data``, keeping their
Planetoid split; ``generated``: a graph from ``tasks.synthetic.generate`` with 20,000 nodes, 10 classes and the
generator's other defaults, its per-class 20/30 split made by ingest). Then the pipeline's real
stages run without Prefect or MLflow (ingest -> normalize -> partition -> layout -> train ->
evaluate) with the project's default config except ``normalize.structural`` /
``normalize.structural_dim`` (the encodings compared, ``--encodings``) and the seeds
(``train.seed`` = ``partition.seed`` = seed). Reported: test accuracy of the best-validation epoch
(``evaluate_model``), mean over ``--seeds``, and the encoding's seconds (from ``stats.json``).

``--scale N``: instead, time the default encoding alone on a generated graph of ``N`` nodes with
its features dropped (ingest, then ``normalize_features``; the encoding's own seconds and the
stage's peak RSS).

    .venv/bin/python benchmarks/bench_structural.py [--datasets cora,citeseer,generated]
        [--encodings none,degree,spectral:32] [--seeds 0,1] [--epochs N] [--threads 1] [--scale N] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402
from storage.store import Store

DATA = B.REPO.parent / "shared" / "data"


def featureless_input(name: str, workdir: Path) -> tuple[Path, Path]:
    """``(edges, nodes)`` with the node table reduced to ``node_id, label, split``."""
    import pyarrow.parquet as pq

    if name == "generated":
        from tasks.synthetic.generate import GeneratorConfig, generate_graph

        g = generate_graph(GeneratorConfig(num_nodes=20_000, num_features=1, edge_format="parquet", seed=0),
                           workdir / "generated-input")
        edges, nodes = g.edges_path, g.nodes_path
    else:
        edges, nodes = DATA / name / "edges.csv", DATA / name / "nodes.parquet"
    table = pq.read_table(nodes)
    keep = [c for c in ("node_id", "label", "split") if c in table.column_names]
    out = workdir / f"{name}-nodes.parquet"
    pq.write_table(table.select(keep), out)
    return edges, out


def run_one(name: str, edges: Path, nodes: Path, store: Path, encoding: str, seed: int, epochs: int | None) -> dict:
    from tasks.config import PipelineConfig
    from tasks.evaluate.evaluate import evaluate_model
    from tasks.ingest.snapshot import ingest_graph
    from tasks.normalize.features import load_stats, normalize_features
    from storage.store import Store
    from tasks.partition.layout import layout_node_data
    from tasks.partition.partition import partition_graph
    from tasks.train.loop import train_cluster_gcn

    method, _, k = encoding.partition(":")
    normalize = {"structural": method} | ({"structural_dim": int(k)} if k else {})
    train = {"seed": seed} | ({"epochs": epochs} if epochs else {})
    cfg = PipelineConfig.model_validate({
        "store": str(store), "data": {"name": name, "edges": [str(edges)], "nodes": str(nodes)},
        "normalize": normalize, "partition": {"seed": seed}, "train": train,
    })
    snap = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
    feats = normalize_features(snap, cfg.normalize, Store(cfg.store))
    stats = load_stats(feats)
    nd = layout_node_data(partition_graph(snap, cfg.partition, Store(cfg.store)), snap, feats, Store(cfg.store))
    t0 = time.perf_counter()
    trained = train_cluster_gcn(nd, cfg.train, Store(cfg.store), num_classes=cfg.data.num_classes)
    m = evaluate_model(trained, nd, snap, Store(cfg.store), device=cfg.train.device, seed=cfg.train.seed, embedding_nodes=cfg.track.embedding_plot_nodes).metrics
    seconds = (stats.structural or {}).get("seconds", 0.0)
    B.log(f"{name} {encoding} seed {seed}: test {m['test_acc']:.4f} val {m['val_acc']:.4f} (best epoch "
          f"{int(m['best_epoch'])}), encoding {seconds:.2f} s, train+eval {time.perf_counter() - t0:.1f} s")
    return {"test_acc": m["test_acc"], "val_acc": m["val_acc"], "encoding_s": seconds, "columns": stats.num_features or 1}


def scale(num_nodes: int, workdir: Path) -> None:
    from tasks.config import PipelineConfig
    from tasks.synthetic.generate import GeneratorConfig, generate_graph
    from tasks.ingest.snapshot import ingest_graph
    from tasks.normalize.features import load_stats, normalize_features

    g = generate_graph(GeneratorConfig(num_nodes=num_nodes, num_features=1, edge_format="parquet", seed=0),
                       workdir / "input")
    import pyarrow.parquet as pq

    nodes = workdir / "nodes.parquet"
    pq.write_table(pq.read_table(g.nodes_path, columns=["node_id", "label", "split"]), nodes)
    cfg = PipelineConfig.model_validate({"store": str(workdir / "store"),
                                         "data": {"name": "scale", "edges": [str(g.edges_path)], "nodes": str(nodes)}})
    snap = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
    rss0 = B.peak_rss_mb()
    t0 = time.perf_counter()
    stats = load_stats(normalize_features(snap, cfg.normalize, Store(cfg.store)))
    wall = time.perf_counter() - t0
    s = stats.structural or {}
    B.say(f"scale: {num_nodes:,} nodes, {g.num_edges:,} edge rows, {s.get('components')} components: "
          f"{stats.encoding()} encoding {s.get('seconds')} s ({s.get('solver')}), normalize stage {wall:.1f} s; "
          f"peak RSS {B.peak_rss_mb():.0f} MB (after ingest {rss0:.0f} MB); eigenvalues "
          f"{s.get('eigenvalues', [])[:3]} .. {s.get('eigenvalues', [])[-1:]}; load {B.load_avg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="cora,citeseer,generated")
    ap.add_argument("--encodings", default="none,degree,spectral:16,spectral:32,spectral:64")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale", type=int, default=None, help="time the encoding on a generated graph of N nodes")
    ap.add_argument("--smoke", action="store_true", help="Cora, none and spectral:8, one seed, 3 epochs (CI)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temporary directory goes")
    args = ap.parse_args()
    if args.smoke:
        args.datasets, args.encodings, args.seeds, args.epochs = "cora", "none,spectral:8", "0", 3
    import torch

    torch.set_num_threads(args.threads)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-structural-", dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.scale:
            scale(args.scale, work)
            return
        seeds = [int(s) for s in args.seeds.split(",")]
        rows = []
        for name in args.datasets.split(","):
            edges, nodes = featureless_input(name, work)
            for enc in args.encodings.split(","):
                runs = [run_one(name, edges, nodes, work / "store", enc, s, args.epochs) for s in seeds]
                accs = [r["test_acc"] for r in runs]
                rows.append([name, enc, str(runs[0]["columns"]), f"{statistics.mean(accs):.3f}",
                             " ".join(f"{a:.3f}" for a in accs), f"{runs[0]['encoding_s']:.2f}"])
                B.say(json.dumps(rows[-1]))
        B.say(f"{B.command_line()}  (load {B.load_avg()})")
        B.say(B.table(["dataset", "encoding", "columns", "test acc (mean)", "per seed", "encoding s"], rows))


if __name__ == "__main__":
    main()
