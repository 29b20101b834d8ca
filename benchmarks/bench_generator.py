"""How real the generated graphs are: structure of the real graphs in ../shared/data vs the generator's.

For each graph (the real ones from ``../shared/data``, then ``tasks.synthetic.generate`` graphs of
``--nodes`` nodes at the generator's defaults and at the settings named in ``--variants``):

- **edge-cut**: the share of the distinct undirected edges that cross clusters when ``pymetis``
  (k-way, seed 0) cuts the graph into ``k = max(2, round(nodes / --cluster-size))`` parts, i.e.
  clusters of about ``--cluster-size`` (default 1500) nodes. A Cluster-GCN batch of ``q`` of the
  ``k`` clusters keeps about ``(1 - cut) + cut * (q - 1) / (k - 1)`` of the edges;
- **degrees** of the deduplicated simple graph (no self-loops): mean, median, max, max / mean and
  the power-law exponent of the tail (the discrete maximum-likelihood estimate
  ``1 + n / Σ ln(d / (d_min - 0.5))`` over the nodes with degree ``>= d_min``, ``d_min`` the 90th
  percentile of the degrees, Clauset, Shalizi and Newman 2009, eq. 3.7);
- **homophily**: the share of edges whose two ends have the same label (edges with an unlabelled
  end, label ``-1``, left out; ``-`` for graphs without labels).

The generator's graphs are written with one feature column (features do not change the structure)
and read back from the files, as ingest would read them.

    .venv/bin/python benchmarks/bench_generator.py [--nodes 200000] [--cluster-size 1500]
        [--real cora,amazon_computers,coauthor_cs,snap_com_dblp] [--variants NAME=k:v,k:v;...]
        [--smoke] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

DATA = B.REPO.parent / "shared" / "data"
REAL = ("cora", "amazon_computers", "coauthor_cs", "snap_com_dblp")
#: Generator settings compared with its defaults: the previous defaults (before the calibration),
#: and the Amazon2M shape (47 classes, raw degree 61.3) with the previous and the current defaults.
VARIANTS = (
    "previous defaults=p_intra:0.5,degree_exponent:2.5,label_noise:0.05;"
    "amazon2m shape=num_classes:47,avg_degree:61.3;"
    "amazon2m shape, previous defaults=num_classes:47,avg_degree:61.3,p_intra:0.5,degree_exponent:2.5,label_noise:0.05"
)


def real_graph(name: str):
    """``(src, dst, num_nodes, labels or None)`` of a dataset in ../shared/data, ids made contiguous."""
    import numpy as np
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder = DATA / name
    edge_file = folder / "edges.csv" if (folder / "edges.csv").exists() else folder / "edges.csv.gz"
    edges = pacsv.read_csv(edge_file)
    nodes = pq.read_table(folder / "nodes.parquet", columns=[c for c in ("node_id", "label")
                                                              if c in pq.read_schema(folder / "nodes.parquet").names])
    ids = nodes.column("node_id").to_numpy()
    src, dst = edges.column("src").to_numpy(), edges.column("dst").to_numpy()
    order = np.argsort(ids)
    index = lambda v: order[np.searchsorted(ids, v, sorter=order)]  # noqa: E731
    labels = nodes.column("label").to_numpy() if "label" in nodes.column_names else None
    if labels is not None and (labels < 0).all():
        labels = None
    return index(src), index(dst), len(ids), labels


def generated_graph(workdir: Path, num_nodes: int, settings: dict):
    """``(src, dst, num_nodes, labels)`` of a generated graph (``settings`` over the defaults)."""
    import pyarrow.parquet as pq

    from tasks.synthetic.generate import GeneratorConfig, generate_graph

    config = GeneratorConfig(num_nodes=num_nodes, num_features=1, edge_format="parquet", seed=0, **settings)
    key = "-".join(f"{k}{v}" for k, v in sorted(settings.items())) or "defaults"
    g = generate_graph(config, workdir / f"gen-{num_nodes}-{key}")
    edges = pq.read_table(g.edges_path)
    labels = pq.read_table(g.nodes_path, columns=["label"]).column("label").to_numpy()
    return edges.column("src").to_numpy(), edges.column("dst").to_numpy(), num_nodes, labels


def structure(src, dst, num_nodes: int, labels, cluster_size: int) -> dict:
    """Edge-cut of METIS at ``cluster_size`` nodes per part, degree statistics and homophily."""
    import numpy as np
    import pymetis
    import scipy.sparse as sp

    keep = src != dst
    a = sp.coo_matrix((np.ones(int(keep.sum()), np.int8), (src[keep], dst[keep])), shape=(num_nodes, num_nodes))
    a = (a + a.T).tocsr()
    a.sum_duplicates()
    a.data[:] = 1
    deg = np.diff(a.indptr)
    lo, hi = sp.triu(a, k=1).nonzero()
    parts = max(2, round(num_nodes / cluster_size))
    t0 = time.perf_counter()
    _, membership = pymetis.part_graph(parts, adjacency=pymetis.CSRAdjacency(a.indptr.astype(np.int64),
                                                                              a.indices.astype(np.int64)),
                                       recursive=False, options=pymetis.Options(seed=0))
    metis_s = time.perf_counter() - t0
    membership = np.asarray(membership)
    d_min = max(1.0, float(np.percentile(deg, 90)))
    tail = deg[deg >= d_min]
    alpha = 1 + len(tail) / np.sum(np.log(tail / (d_min - 0.5)))
    homophily = None
    if labels is not None:
        labelled = (labels[lo] >= 0) & (labels[hi] >= 0)
        homophily = float(np.mean(labels[lo][labelled] == labels[hi][labelled]))
    return {
        "nodes": num_nodes, "edges": len(lo), "parts": parts,
        "cut": float(np.mean(membership[lo] != membership[hi])),
        "mean": float(deg.mean()), "median": float(np.median(deg)), "max": int(deg.max()),
        "alpha": float(alpha), "d_min": d_min, "homophily": homophily, "metis_s": metis_s,
    }


def parse_variants(text: str) -> list[tuple[str, dict]]:
    """``NAME=key:value,key:value;NAME=...`` -> ``[(name, {key: number})]``."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(";"))):
        name, _, body = item.partition("=")
        settings = {}
        for pair in filter(None, body.split(",")):
            key, _, value = pair.partition(":")
            settings[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        out.append((name.strip(), settings))
    return out


def row(name: str, s: dict) -> list[str]:
    """One Markdown table row of :func:`structure`'s figures."""
    h = "-" if s["homophily"] is None else f"{s['homophily']:.3f}"
    return [name, f"{s['nodes']:,}", f"{s['edges']:,}", f"{s['parts']}", f"**{s['cut']:.3f}**",
            f"{s['mean']:.1f}", f"{s['median']:.0f}", f"{s['max']:,}", f"{s['max'] / s['mean']:.0f}",
            f"{s['alpha']:.2f} (d >= {s['d_min']:.0f})", h]


HEADER = ["graph", "nodes", "edges (distinct)", "METIS parts", "edge-cut", "mean degree", "median", "max",
          "max / mean", "tail exponent", "edge homophily"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    B.add_common_args(parser)
    parser.add_argument("--nodes", type=int, default=200_000, help="nodes of each generated graph")
    parser.add_argument("--cluster-size", type=int, default=1500, help="nodes per METIS part")
    parser.add_argument("--real", default=",".join(REAL), help="datasets of ../shared/data ('' for none)")
    parser.add_argument("--variants", default=VARIANTS, help="generator settings besides the defaults")
    args = parser.parse_args()
    real = [r for r in args.real.split(",") if r]
    variants = [("defaults", {})] + parse_variants(args.variants)
    if args.smoke:
        real, args.nodes, args.cluster_size = ["cora"], 5000, 500
        variants = variants[:2]
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in real:
        s = structure(*real_graph(name), args.cluster_size)
        rows.append(row(name, s))
        B.say(" | ".join(rows[-1]) + f"  (METIS {s['metis_s']:.1f} s)")
    for name, settings in variants:
        s = structure(*generated_graph(args.workdir, args.nodes, settings), args.cluster_size)
        label = f"generated: {name}" + (f" ({', '.join(f'{k}={v}' for k, v in settings.items())})" if settings else "")
        rows.append(row(label, s))
        B.say(" | ".join(rows[-1]) + f"  (METIS {s['metis_s']:.1f} s)")
    B.say("")
    B.say(f"{B.command_line()}  ({B.today()}, load {B.load_avg()})")
    B.say(B.table(HEADER, rows))
    if args.record:
        stamp = [B.today(), f"`{B.command_line()}`"]
        B.record("generator", "bench_generator: real graphs vs the generator (edge-cut, degrees, homophily)",
                 ["date", "command", *HEADER], [stamp + r for r in rows])


if __name__ == "__main__":
    main()
