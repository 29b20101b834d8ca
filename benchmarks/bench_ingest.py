"""Ingest vs the floor: read an edge-list CSV and write it as Parquet.

Input: a CSV (header ``src,dst``) of ``--edges`` rows (default 50M) of community-structured int ids
(``--nodes`` ids, a random permutation of ``0..N-1``; 80% of edges inside a 1000-node community;
self-loops and duplicates occur as in real dumps), written once with numpy/pyarrow into
``--workdir``.

Sides, each in its own process, timed and their peak RSS read at the end:

- ``floor``: ``pyarrow.csv.read_csv(path)`` + ``pyarrow.parquet.write_table(table, out)``, nothing else;
- ``graphpipe``: ``tasks.ingest.snapshot.ingest_graph`` on the same file (no node table) into a fresh store:
  fingerprint the file, read, map ids, deduplicate, validate, write the snapshot.

Target (issue): graphpipe <= 1.5x the floor's time.

    .venv/bin/python benchmarks/bench_ingest.py [--smoke] [--record] [--edges N] [--repeats R] [--profile]
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
from storage.store import Store

COMMUNITY = 1000
P_INTRA = 0.8
CHUNK = 5_000_000


def make_csv(path: Path, num_edges: int, num_nodes: int, seed: int = 0) -> None:
    """Write the benchmark CSV (atomically) in chunks of CHUNK rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    perm = rng.permutation(num_nodes).astype(np.int64)
    tmp = path.with_suffix(".tmp")
    options = pacsv.WriteOptions(include_header=False, batch_size=1 << 16)
    t0 = time.perf_counter()
    with open(tmp, "wb") as f:
        f.write(b"src,dst\n")
        for start in range(0, num_edges, CHUNK):
            m = min(CHUNK, num_edges - start)
            src = rng.integers(0, num_nodes, m)
            base = (src // COMMUNITY) * COMMUNITY
            span = np.minimum(COMMUNITY, num_nodes - base)
            intra = base + (rng.random(m) * span).astype(np.int64)
            dst = np.where(rng.random(m) < P_INTRA, intra, rng.integers(0, num_nodes, m))
            table = pa.table({"src": perm[src], "dst": perm[dst]})
            buf = pa.BufferOutputStream()
            pacsv.write_csv(table, buf, write_options=options)
            f.write(buf.getvalue())
    tmp.rename(path)
    B.log(f"wrote {path} ({num_edges:,} edges, {path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t0:.1f} s")


def input_path(workdir: Path, num_edges: int, num_nodes: int) -> Path:
    d = workdir / "ingest"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"edges-{num_edges}-n{num_nodes}.csv"
    if not path.exists():
        make_csv(path, num_edges, num_nodes)
    return path


# -- the sides (child processes) -----------------------------------------------------------------


def side_floor(p: dict) -> dict:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    out = Path(tempfile.mkdtemp(dir=p["scratch"])) / "edges.parquet"
    try:
        t0 = time.perf_counter()
        table = pacsv.read_csv(p["path"])
        t1 = time.perf_counter()
        pq.write_table(table, out)
        t2 = time.perf_counter()
        rows = table.num_rows
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    return {"seconds": t2 - t0, "read_s": t1 - t0, "write_s": t2 - t1, "rows": rows}


def side_graphpipe(p: dict) -> dict:
    from tasks.config import PipelineConfig
    from tasks.ingest.snapshot import ingest_counts, ingest_graph

    store = Path(tempfile.mkdtemp(dir=p["scratch"]))
    try:
        cfg = PipelineConfig.model_validate({"store": str(store), "data": {"name": "bench", "edges": [p["path"]]}})
        prof = None
        if p.get("profile"):
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0 = time.perf_counter()
        ref = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
        t1 = time.perf_counter()
        if prof is not None:
            prof.disable()
            _print_profile(prof)
        counts = ingest_counts(ref)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return {"seconds": t1 - t0, "rows": counts["edge_rows_total"], "edges": counts["undirected_edges"],
            "nodes": counts["num_nodes"]}


def _print_profile(prof) -> None:
    import io
    import pstats

    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    for line in s.getvalue().splitlines():
        B.log("prof " + line)


SIDES = {"floor": side_floor, "graphpipe": side_graphpipe}


def child(side: str, params: str) -> None:
    B.child_main(SIDES, side, params)


# -- the parent ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B.add_common_args(ap)
    ap.add_argument("--edges", type=int, default=None, help="edge rows in the CSV (default 50,000,000)")
    ap.add_argument("--nodes", type=int, default=None, help="distinct node ids (default edges / 10)")
    ap.add_argument("--profile", action="store_true", help="cProfile graphpipe's side (top 25 by own time)")
    args = ap.parse_args()
    if args.side:
        return child(args.side, args.params)

    edges = args.edges or (200_000 if args.smoke else 50_000_000)
    nodes = args.nodes or max(1000, edges // 10)
    repeats = args.repeats or (1 if args.smoke else 3)
    B.say(f"bench_ingest: {edges:,} edges, {nodes:,} node ids, {repeats} run(s) per side; machine {B.machine()}")
    path = input_path(args.workdir, edges, nodes)
    scratch = args.workdir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    params = {"path": str(path), "scratch": str(scratch)}
    # read the file once so that neither side pays for the first read from disk
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass
    names = ["floor", "graphpipe"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for i, side in enumerate(B.alternate(names, repeats)):
        r = B.run_side(__file__, side, {**params, "profile": args.profile and side != "floor"})
        runs[side].append(r)
        B.say(f"  run {i + 1}: {side:9s} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mb']:,.0f} MB "
              f"(anon {r['peak_anon_mb']:,.0f})  load {r['load_start']}")
    best = {s: min(runs[s], key=lambda r: r["seconds"]) for s in runs}
    med = {s: B.median([r["seconds"] for r in runs[s]]) for s in runs}
    ratio = best["graphpipe"]["seconds"] / best["floor"]["seconds"]
    rss = {s: max(r["peak_rss_mb"] for r in runs[s]) for s in runs}
    target = "met" if ratio <= 1.5 else f"MISSED by {ratio / 1.5:.2f}x"
    header = ["date", "machine (load 1/5/15)", "command", "input", "floor s (best/median)",
              "graphpipe s (best/median)", "ratio (target <= 1.5)", "floor peak RSS", "graphpipe peak RSS", "notes"]
    g = best["graphpipe"]
    row = [B.today(), B.machine(), f"`{B.command_line()}`",
           f"{edges / 1e6:g}M edge rows, {path.stat().st_size / 1e6:,.0f} MB CSV -> {g['edges']:,} edges, {g['nodes']:,} nodes",
           f"{B.fmt_s(best['floor']['seconds'])} / {B.fmt_s(med['floor'])}",
           f"{B.fmt_s(best['graphpipe']['seconds'])} / {B.fmt_s(med['graphpipe'])}",
           f"{ratio:.2f}x ({target})", B.fmt_mb(rss["floor"]), B.fmt_mb(rss["graphpipe"]),
           f"floor: read {best['floor']['read_s']:.2f} s + write {best['floor']['write_s']:.2f} s"]
    B.say(B.table(header, [row]))
    if args.record:
        B.record("ingest", "bench_ingest: ingest vs read_csv + write_table", header, [row])


if __name__ == "__main__":
    main()
