"""The partition stage vs a bare ``pymetis.part_graph`` call on the same graph.

Input: a generated community graph (``tasks.synthetic.generate``: ``--nodes`` default 1M, ``--avg-degree``
default 16, 64 features), ingested once into the work directory's store; its symmetric CSR (int64,
METIS' own index type, built with ``tasks.partition.csr.build_csr``) saved once as ``.npy``.

Sides, each in its own process:

- ``bare``: load the CSR ``.npy`` files, then ``pymetis.part_graph(k, adjacency=CSRAdjacency(indptr,
  indices), recursive=False, options=Options(seed=0))``; time = the call only; peak RSS = the whole
  process (it only loads the CSR and calls METIS);
- ``graphpipe``: the whole ``tasks.partition.partition.partition_graph`` stage into a fresh store: read
  ``edges.parquet``, build the CSR, METIS, cluster order, permuted CSR, statistics, writing.
  graphpipe runs METIS in a child process, so its peak RSS is the peak of the process tree's summed
  RSS, sampled every 20 ms (``peak_tree_mb``), not one process's ``ru_maxrss``; the bare side's
  is measured the same way.

For each ``--k`` (default ``128`` and ``auto`` = ceil(N / 200)). Targets: time <= 1.3x and peak RSS
<= 1.3x the bare call's.

    .venv/bin/python benchmarks/bench_partition.py [--smoke] [--record] [--nodes N] [--k 128,auto]
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402
from storage.store import Store

FEATURES = 64  # shared with bench_memory's 1M graph


# -- the sides (child processes) -----------------------------------------------------------------


def side_prepare(p: dict) -> dict:
    """Generate + ingest the graph; save its CSR as .npy (each once)."""
    import numpy as np

    refs = B.prepared(Path(p["workdir"]), p["nodes"], p["avg_degree"], FEATURES, num_parts=None, layout=False)
    gdir = Path(p["workdir"]) / "graphs" / refs["key"]
    indptr_path, indices_path = gdir / "csr-indptr.npy", gdir / "csr-indices.npy"
    if not indices_path.exists():
        import pymetis

        from storage.snapshot import read_edges
        from tasks.partition.csr import build_csr

        src, dst = read_edges(refs["snapshot"]["path"])
        indptr, indices = build_csr(src, dst, p["nodes"], index_dtype=pymetis.zero_copy_dtype())
        np.save(indptr_path, indptr)
        np.save(indices_path.with_suffix(".tmp.npy"), indices)
        indices_path.with_suffix(".tmp.npy").rename(indices_path)
        B.log(f"saved CSR of {refs['key']}: {len(indices):,} entries")
    nnz = int(np.load(indptr_path, mmap_mode="r")[-1])
    return {"refs": refs, "indptr": str(indptr_path), "indices": str(indices_path), "nnz": nnz}


def side_bare(p: dict) -> dict:
    import numpy as np
    import pymetis

    indptr = np.load(p["indptr"])
    indices = np.load(p["indices"])
    t0 = time.perf_counter()
    cut, parts = pymetis.part_graph(
        p["k"], adjacency=pymetis.CSRAdjacency(indptr, indices), recursive=False, options=pymetis.Options(seed=0)
    )
    t1 = time.perf_counter()
    return {"seconds": t1 - t0, "edge_cut": int(cut), "nodes": len(parts)}


def side_graphpipe(p: dict) -> dict:
    from storage.store import SnapshotRef, read_manifest
    from tasks.config import PipelineConfig
    from tasks.partition.partition import partition_graph

    store = Path(tempfile.mkdtemp(dir=p["scratch"]))
    try:
        cfg = PipelineConfig.model_validate({**p["config"], "store": str(store), "partition": {"num_parts": p["k"]}})
        snap = SnapshotRef(**p["snapshot"])
        prof = None
        if p.get("profile"):
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        t0 = time.perf_counter()
        ref = partition_graph(snap, cfg.partition, Store(cfg.store))
        t1 = time.perf_counter()
        if prof is not None:
            prof.disable()
            import io
            import pstats

            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
            for line in s.getvalue().splitlines():
                B.log("prof " + line)
        counts = read_manifest(ref.path)["counts"]
    finally:
        shutil.rmtree(store, ignore_errors=True)
    steps = {k.removeprefix("seconds_"): v for k, v in counts.items() if k.startswith("seconds_")}
    return {"seconds": t1 - t0, "edge_cut": counts["metis_edge_cut"], "steps": steps}


SIDES = {"prepare": side_prepare, "bare": side_bare, "graphpipe": side_graphpipe}


def child(side: str, params: str) -> None:
    B.child_main(SIDES, side, params)


# -- the parent ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    B.add_common_args(ap)
    ap.add_argument("--nodes", type=int, default=None, help="generated graph size (default 1,000,000)")
    ap.add_argument("--avg-degree", type=float, default=16.0)
    ap.add_argument("--k", default=None, help="comma-separated part counts; 'auto' = ceil(N / 200) (default 128,auto)")
    ap.add_argument("--profile", action="store_true", help="cProfile graphpipe's side (top 20 by own time)")
    args = ap.parse_args()
    if args.side:
        return child(args.side, args.params)

    nodes = args.nodes or (20_000 if args.smoke else 1_000_000)
    ks = [k.strip() for k in (args.k or ("16,auto" if args.smoke else "128,auto")).split(",")]
    repeats = args.repeats or (1 if args.smoke else 2)
    B.say(f"bench_partition: {nodes:,} nodes, avg degree {args.avg_degree:g}, k={ks}, {repeats} run(s) per side; "
          f"machine {B.machine()}")
    prep = B.run_side(__file__, "prepare", {"workdir": str(args.workdir), "nodes": nodes,
                                            "avg_degree": args.avg_degree})
    refs = prep["refs"]
    scratch = args.workdir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    header = ["date", "machine (load 1/5/15)", "command", "graph", "k", "bare METIS s (best)", "graphpipe stage s (best)",
              "time ratio (<= 1.3)", "bare peak RSS", "graphpipe peak RSS (process tree)", "RSS ratio (<= 1.3)", "graphpipe steps (s)"]
    rows = []
    for kk in ks:
        k = math.ceil(nodes / 200) if kk == "auto" else int(kk)
        params = {"indptr": prep["indptr"], "indices": prep["indices"], "k": k, "scratch": str(scratch),
                  "config": refs["config"], "snapshot": refs["snapshot"]}
        runs: dict[str, list[dict]] = {"bare": [], "graphpipe": []}
        for i, side in enumerate(B.alternate(["bare", "graphpipe"], repeats)):
            r = B.run_side(__file__, side, {**params, "profile": args.profile and side == "graphpipe"})
            runs[side].append(r)
            B.say(f"  k={k} run {i + 1}: {side:9s} {r['seconds']:7.2f} s  peak RSS of the process tree "
                  f"{r['peak_tree_mb']:,.0f} MB (the process alone: ru_maxrss {r['peak_rss_mb']:,.0f} MB)  "
                  f"load {r['load_start']}")
        best = {s: min(runs[s], key=lambda r: r["seconds"]) for s in runs}
        rss = {s: min(r["peak_tree_mb"] for r in runs[s]) for s in runs}
        t_ratio = best["graphpipe"]["seconds"] / best["bare"]["seconds"]
        m_ratio = rss["graphpipe"] / rss["bare"]
        steps = best["graphpipe"]["steps"]
        rows.append([
            B.today(), B.machine(), f"`{B.command_line()}`",
            f"generated {nodes / 1e6:g}M nodes, avg deg {args.avg_degree:g}, {prep['nnz']:,} CSR entries",
            f"{k}{' (auto)' if kk == 'auto' else ''}",
            B.fmt_s(best["bare"]["seconds"]), B.fmt_s(best["graphpipe"]["seconds"]),
            f"{t_ratio:.2f}x ({'met' if t_ratio <= 1.3 else 'MISSED'})",
            B.fmt_mb(rss["bare"]), B.fmt_mb(rss["graphpipe"]),
            f"{m_ratio:.2f}x ({'met' if m_ratio <= 1.3 else 'MISSED'})",
            ", ".join(f"{s} {v:.1f}" for s, v in steps.items() if s != "total"),
        ])
    B.say(B.table(header, rows))
    if args.record:
        B.record("partition", "bench_partition: partition stage vs bare pymetis.part_graph", header, rows)


if __name__ == "__main__":
    main()
