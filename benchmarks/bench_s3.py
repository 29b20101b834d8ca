"""The data stages on a local store vs a store on a local S3-compatible server (moto).

Input: a generated community graph (``tasks.synthetic.generate``; ``--nodes`` default 1M, average
degree 16, 64 features, 10 classes), generated once into the work directory.

Each case runs :func:`tasks.prepare.prepare_graph` (ingest -> normalize -> partition -> layout, no
Prefect, no training) and then opens the cluster graph that training memory-maps
(``ClusterGraph.open``: on a remote store this fetches the partition and node data into the local
cache, verified against their manifests):

- ``local``: a fresh local store;
- ``s3 cold``: a fresh prefix in the bucket and a fresh cache directory (every output computed,
  staged locally, uploaded data-first-manifest-last, adopted into the cache);
- ``s3 reuse``: the same prefix and cache again (every output reused: manifest checks only);
- ``s3 new worker``: the same prefix with a fresh cache directory (every output reused, the
  training inputs downloaded and verified);
- ``local reuse``: the local store again, for comparison;
- ``s3 cold (2nd)``, ``local (2nd)``: both cold cases again (fresh prefix, cache and store), in
  the other order, to show how much of a difference is the shared machine's noise.

The S3 server is moto's standalone server (``python -m moto.server``, the ``test`` extra) on
127.0.0.1: an in-memory, single-threaded Python server, so its upload and download rates are a
floor, not what S3 or MinIO would give.

    .venv/bin/python benchmarks/bench_s3.py [--smoke] [--nodes N] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(log: Path) -> tuple[subprocess.Popen, str]:
    """moto's S3 server on 127.0.0.1 and its URL (waits until it answers)."""
    port = _free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=5).close()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.3)


def run_case(config, store) -> dict:
    """prepare_graph + open the cluster graph; seconds for each part."""
    from storage.arrays import ClusterGraph
    from storage.store import output_at
    from tasks.prepare import prepare_graph

    t0 = time.perf_counter()
    prepared = prepare_graph(config, store=store)
    t1 = time.perf_counter()
    graph = ClusterGraph.open(output_at(prepared.node_data.partition.path), output_at(prepared.node_data.path))
    n = graph.num_nodes
    graph.release()
    t2 = time.perf_counter()
    return {"stages_s": t1 - t0, "open_s": t2 - t1, "total_s": t2 - t0, "nodes": n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1_000_000)
    p.add_argument("--smoke", action="store_true", help="20,000 nodes")
    p.add_argument("--workdir", default=os.environ.get("GRAPHPIPE_BENCH_DIR", "/tmp/graphpipe-bench") + "/s3")
    args = p.parse_args(argv)
    nodes = 20_000 if args.smoke else args.nodes
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    from storage.store import store_for
    from tasks.config import DataConfig, PipelineConfig
    from tasks.synthetic.generate import GeneratorConfig, generate_graph

    inp = work / f"input-{nodes}"
    if not (inp / "nodes.parquet").exists():
        gen = generate_graph(GeneratorConfig(num_nodes=nodes, seed=0), inp)
        edges = gen.edges_path
    else:
        edges = next(inp.glob("edges.*"))
    data = DataConfig(name="bench", edges=[str(edges)], nodes=str(inp / "nodes.parquet"))

    proc, url = start_moto(work / "moto.log")
    try:
        os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        import pyarrow.fs as pafs

        pafs.S3FileSystem(endpoint_override=url.split("://")[1], scheme="http", region="us-east-1",
                          allow_bucket_creation=True).create_dir("bench")
        for d in ("store-local", "store-local-2", "cache-a", "cache-b", "cache-c"):
            shutil.rmtree(work / d, ignore_errors=True)
        local, local2 = str(work / "store-local"), str(work / "store-local-2")
        # (case, store, cache directory): the cold cases twice, in alternating order, to show the noise
        cases = [("local", local, None), ("s3 cold", "s3://bench/store", "cache-a"),
                 ("s3 reuse", "s3://bench/store", "cache-a"), ("s3 new worker", "s3://bench/store", "cache-b"),
                 ("local reuse", local, None), ("s3 cold (2nd)", "s3://bench/store2", "cache-c"),
                 ("local (2nd)", local2, None)]
        rows = []
        for name, where, cache in cases:
            # as a flow does: store_for exports the cache settings, so every Store of the run uses them
            cfg = PipelineConfig(store=where, data=data, cache_dir=str(work / (cache or "unused")))
            r = run_case(cfg, store_for(cfg))
            rows.append((name, r))
            print(f"{name}: stages {r['stages_s']:.1f} s, open {r['open_s']:.1f} s, total {r['total_s']:.1f} s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    base = rows[0][1]["total_s"]
    print(f"\n{nodes:,} nodes; S3 = moto on 127.0.0.1\n")
    print("| case | stages (s) | open for training (s) | total (s) | vs local |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['stages_s']:.1f} | {r['open_s']:.2f} | {r['total_s']:.1f} | {r['total_s'] / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
