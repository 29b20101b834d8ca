"""Incremental vs full ingest of a graph that grew by one day's edge file.

Input: a graph's edges split by row into ``--days`` dated CSV files (``day-01.csv``...) in one
directory, plus its node table; ``data.edges`` is the directory. Graphs: ``dblp`` (the real
SNAP com-DBLP graph from ``../shared/data/snap_com_dblp``, 1.05M edges, its node table), or
``synthetic`` (``--edges`` rows of bench_ingest's community graph, a node table of ids 0..N-1).

Sides, each in its own process on the same files, timed around ``ingest_graph`` only, with their peak RSS:

- ``full``: a fresh store: every file is parsed (what every nightly run did before issue 12);
- ``incremental``: a store whose current snapshot holds the first ``days - 1`` files:
  only the last file is parsed and appended.

Both must give the same fingerprint and edge count (checked).

    .venv/bin/python benchmarks/bench_ingest_incremental.py [--graph dblp|synthetic] [--days 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def prepare(work: Path, graph: str, days: int, edges: int) -> tuple[Path, Path]:
    """The day files and the node table under ``work`` (made once)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    d = work / f"{graph}-{days}" / "edges"
    nodes = work / f"{graph}-{days}" / "nodes.parquet"
    if nodes.exists():
        return d, nodes
    d.mkdir(parents=True, exist_ok=True)
    if graph == "dblp":
        table = pacsv.read_csv(DATA / "snap_com_dblp" / "edges.csv.gz")
        shutil.copyfile(DATA / "snap_com_dblp" / "nodes.parquet", nodes)
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_ingest import make_csv

        num_nodes = max(edges // 10, 1000)
        make_csv(work / "synthetic.csv", edges, num_nodes)
        table = pacsv.read_csv(work / "synthetic.csv")
        pq.write_table(pa.table({"node_id": np.arange(num_nodes, dtype=np.int64)}), nodes)
    bounds = np.linspace(0, table.num_rows, days + 1).astype(int)
    for k in range(days):
        pacsv.write_csv(table.slice(bounds[k], bounds[k + 1] - bounds[k]), d / f"day-{k + 1:02d}.csv")
    return d, nodes


def side(name: str, edges: Path, nodes: Path, store: Path) -> dict:
    """Run one side in this process; its timing and peak RSS."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    from storage.store import Store, output_at
    from tasks.config import PipelineConfig
    from tasks.ingest.snapshot import ingest_graph

    c = PipelineConfig.model_validate({"store": str(store), "data": {"name": "g", "edges": [str(edges)],
                                                                     "nodes": str(nodes)}})
    t0 = time.perf_counter()
    ref = ingest_graph(c.data, c.split, Store(store))
    seconds = time.perf_counter() - t0
    m = output_at(ref.path).manifest()
    return {"side": name, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "fingerprint": ref.fingerprint, "mode": m["ingest_mode"], "edges": m["counts"]["undirected_edges"],
            "appended_edges": m["appended_edges"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--graph", choices=["dblp", "synthetic"], default="dblp")
    p.add_argument("--days", type=int, default=10)
    p.add_argument("--edges", type=int, default=10_000_000, help="synthetic graph's edge rows")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/graphpipe-bench/incr"))
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        edges, nodes, store = map(Path, json.loads(a.paths))
        print("@@RESULT " + json.dumps(side(a.side, edges, nodes, store)))
        return
    edges, nodes = prepare(a.workdir, a.graph, a.days, a.edges)
    last = sorted(edges.iterdir())[-1]
    results: dict[str, list[dict]] = {"full": [], "incremental": []}
    for _ in range(a.repeats):
        for name in results:
            store = a.workdir / "run-store"
            shutil.rmtree(store, ignore_errors=True)
            if name == "incremental":  # the store as the previous night left it (untimed)
                hidden = last.with_name("." + last.name)
                last.rename(hidden)
                try:
                    run_side("base", edges, nodes, store)
                finally:
                    hidden.rename(last)
            results[name].append(run_side(name, edges, nodes, store))
    full, incr = (min(results[n], key=lambda r: r["seconds"]) for n in ("full", "incremental"))
    assert full["fingerprint"] == incr["fingerprint"] and full["edges"] == incr["edges"], (full, incr)
    assert full["mode"] == "full" and incr["mode"] == "incremental", (full, incr)
    print(f"| {a.graph}, {a.days} files, +1 file ({incr['appended_edges']:,} new edges of {full['edges']:,}) "
          f"| full {full['seconds']:.2f} s, {full['peak_rss_mb']:.0f} MB | incremental {incr['seconds']:.2f} s, "
          f"{incr['peak_rss_mb']:.0f} MB | {full['seconds'] / incr['seconds']:.1f}x |")
    print("all runs:", json.dumps({n: [round(r["seconds"], 3) for r in rs] for n, rs in results.items()}))


def run_side(name: str, edges: Path, nodes: Path, store: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--side", name, "--paths", json.dumps([str(edges), str(nodes), str(store)])],
                         capture_output=True, text=True, check=True, cwd=REPO)
    line = next(x for x in out.stdout.splitlines() if x.startswith("@@RESULT "))
    return json.loads(line[len("@@RESULT "):])


if __name__ == "__main__":
    main()
