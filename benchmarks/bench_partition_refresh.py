"""Partition refresh vs a full METIS run, through the partition stage, on real graphs grown by 1%.

For each dataset in ``/work/shared/data`` (``--datasets``): the nodes are shuffled (``--seed``),
the first 99% (and the edges among them) are the *previous* snapshot, the whole graph the *new*
one (so the previous node ids are a prefix and every previous edge is kept, as after a nightly
ingest of a growing graph). Both snapshots are published into a fresh store; the previous one is
partitioned (full METIS), then the new one twice: with the refresh (default config) and with
``partition.refresh=false`` (full METIS). Reported: stage wall time, edge-cut fraction and size
imbalance of each, and the mode the stage chose. One process, sides one after the other.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_partition_refresh.py [--datasets a,b] [--grow 0.01]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from storage.fingerprint import fingerprint_value  # noqa: E402
from storage.snapshot import GraphTables, write_snapshot  # noqa: E402
from storage.store import SnapshotRef, Store  # noqa: E402
from tasks.config import PartitionConfig  # noqa: E402
from tasks.partition.partition import partition_graph, partition_lineage  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def load_edges(name: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Canonical edges of a dataset with contiguous ids (SNAP ids are mapped)."""
    path = next(p for p in (DATA / name / "edges.csv", DATA / name / "edges.csv.gz") if p.exists())
    t = pacsv.read_csv(path)
    src, dst = t.column("src").to_numpy(), t.column("dst").to_numpy()
    ids, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    return inv[: len(src)], inv[len(src):], len(ids)


def canonical(src: np.ndarray, dst: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    key = np.unique(a[a != b].astype(np.int64) * n + b[a != b])
    return (key // n).astype(np.int32), (key % n).astype(np.int32)


def publish(store: Store, src: np.ndarray, dst: np.ndarray, n: int) -> SnapshotRef:
    s, d = canonical(src, dst, n)
    fp = fingerprint_value(s, d, n)
    out = store.output("g", "snapshot", fp)
    with store.publish(out, params={}, inputs={}) as w:
        write_snapshot(w, GraphTables(s, d, pa.array(np.arange(n)), np.full(n, -1), np.zeros(n, np.int8), None))
        w.counts.update(num_nodes=n, num_edges=len(s))
    return SnapshotRef(path=out.location, name="g", fingerprint=fp)


def timed(snap: SnapshotRef, cfg: PartitionConfig, store: Store) -> tuple[float, dict]:
    start = time.perf_counter()
    ref = partition_graph(snap, cfg, store)
    return time.perf_counter() - start, partition_lineage(ref)


def run(name: str, grow: float, seed: int) -> str:
    src, dst, n = load_edges(name)
    order = np.random.default_rng(seed).permutation(n)  # new internal id of each node
    src, dst = order[src], order[dst]
    n_old = n - max(1, int(round(grow * n)))
    keep = (src < n_old) & (dst < n_old)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        store = Store(Path(tmp) / "store")
        old, new = publish(store, src[keep], dst[keep], n_old), publish(store, src, dst, n)
        t0, base = timed(old, PartitionConfig(), store)
        t1, refreshed = timed(new, PartitionConfig(), store)
        t2, full = timed(new, PartitionConfig(refresh=False), store)
    return (f"| {name} | {n_old:,} -> {n:,} | {base['edge_cut_fraction']:.4f} ({t0:.2f} s) | {refreshed['mode']}: "
            f"{refreshed['edge_cut_fraction']:.4f}, imb {refreshed['imbalance']:.3f} ({t1:.2f} s) | "
            f"{full['edge_cut_fraction']:.4f}, imb {full['imbalance']:.3f} ({t2:.2f} s) | "
            f"{refreshed['edge_cut_fraction'] / full['edge_cut_fraction'] - 1:+.1%} | {t1 / t2:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="amazon_computers,coauthor_cs,snap_com_dblp")
    p.add_argument("--grow", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print("| dataset | nodes | previous: METIS cut (time) | new: stage with refresh | new: full METIS "
          "| cut vs METIS | time ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.datasets.split(","):
        print(run(name, args.grow, args.seed), flush=True)


if __name__ == "__main__":
    main()
