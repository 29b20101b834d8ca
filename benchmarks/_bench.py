"""Shared helpers for the benchmark scripts (not a test module, not part of graphpipe).

- each *side* of a benchmark (graphpipe, or its baseline) runs in its own child process, started as
  ``python <script> --side NAME --params JSON``; the child prints one ``@@RESULT {json}`` line with its
  timings and its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``), so one side's memory never
  pollutes the other's;
- a sampler thread in the child also tracks the peak of ``RssAnon`` (heap) and ``RssFile``
  (file-backed pages, e.g. memory-mapped ``.npy`` files) from ``/proc/self/status``, because
  ``ru_maxrss`` counts both;
- data preparation (generated graphs, ingested and partitioned once) is cached in a work directory;
- results are printed as Markdown table rows and appended to ``benchmarks/RESULTS.md`` with ``--record``.

Only the standard library is imported at module level, so a child's baseline RSS is not inflated.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
DEFAULT_WORKDIR = Path(os.environ.get("GRAPHPIPE_BENCH_DIR", "/tmp/graphpipe-bench"))
RESULT_MARK = "@@RESULT "

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from storage.store import Store  # noqa: E402  (after the line above: this checkout's packages, not an installed copy)


# -- measuring -------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set (MiB): ``ru_maxrss`` is in KiB on Linux."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_kb(fields: tuple[str, ...]) -> dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


class MemSampler:
    """Peak ``RssAnon`` and ``RssFile`` (MiB) of this process, sampled every ``interval`` seconds.

    ``ru_maxrss`` is exact but counts file-backed pages (memory maps); the sampler tells the two apart
    (it can miss a spike shorter than the interval).
    """

    FIELDS = ("RssAnon", "RssFile", "VmRSS")

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = {k: 0 for k in self.FIELDS}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="memsampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> dict[str, int]:
        now = _status_kb(self.FIELDS)
        for k, v in now.items():
            if v > self.peak[k]:
                self.peak[k] = v
        return now

    def start(self) -> MemSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peaks()

    def peaks(self) -> dict[str, float]:
        return {
            "peak_anon_mb": self.peak["RssAnon"] / 1024.0,
            "peak_file_mb": self.peak["RssFile"] / 1024.0,
        }

    def reset(self) -> None:
        self.peak = {k: 0 for k in self.FIELDS}


def load_avg() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f}/{b:.2f}/{c:.2f}"


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.machine()}, load {load_avg()}"


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def timer() -> float:
    return time.perf_counter()


# -- the child side ------------------------------------------------------------------------------


def child_main(sides: dict[str, Any], side: str, params: str, *, pass_sampler: bool = False) -> None:
    """Child process body: run one side with its memory sampled, then emit its result."""
    p = json.loads(params)
    sampler = MemSampler().start()
    if pass_sampler:
        p["_sampler"] = sampler
    result = sides[side](p)
    result.update(sampler.stop())
    emit(result)


def emit(result: dict[str, Any]) -> None:
    """Print the child's result (with its peak RSS and the load average at the end) for the parent."""
    result.setdefault("peak_rss_mb", peak_rss_mb())
    result.setdefault("load_end", load_avg())
    sys.stdout.write(RESULT_MARK + json.dumps(result) + "\n")
    sys.stdout.flush()


class ChildSampler:
    """Peak ``RssAnon``/``RssFile`` of another process, read from ``/proc/PID/status`` by the parent,
    and the peak of its whole process tree's ``VmRSS`` summed (the process and its descendants at the
    same instant: graphpipe runs METIS in a child process).

    Unlike a thread inside the child, it keeps sampling while the child holds the GIL (pymetis does
    for the whole METIS call). Can miss a spike shorter than ``interval``.
    """

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid = pid
        self.interval = interval
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.peak_tree_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _status(pid: int) -> dict[str, int]:
        out = {}
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in ("RssAnon", "RssFile", "VmRSS"):
                        out[key] = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return out

    @staticmethod
    def _descendants(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            try:
                kids = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
            except (OSError, ValueError):
                kids = []
            out += kids
            todo += kids
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            own = self._status(self.pid)
            for key in self.peak:
                self.peak[key] = max(self.peak[key], own.get(key, 0))
            tree = own.get("VmRSS", 0) + sum(self._status(c).get("VmRSS", 0) for c in self._descendants(self.pid))
            self.peak_tree_kb = max(self.peak_tree_kb, tree)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_anon_mb": self.peak["RssAnon"] / 1024.0, "peak_file_mb": self.peak["RssFile"] / 1024.0,
                "peak_tree_mb": self.peak_tree_kb / 1024.0}


def run_side(script: str | Path, side: str, params: dict[str, Any], *, timeout: float | None = None,
             env: dict[str, str] | None = None, echo: bool = True) -> dict[str, Any]:
    """Run ``script --side side --params JSON`` in a fresh interpreter; return its ``@@RESULT`` dict.

    The parent also samples the child's ``RssAnon``/``RssFile`` from ``/proc`` (keys
    ``peak_anon_mb``/``peak_file_mb``, overriding the child's own sampler, which stalls while the
    child holds the GIL).
    """
    cmd = [sys.executable, str(script), "--side", side, "--params", json.dumps(params)]
    load_start = load_avg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    sampler = ChildSampler(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    peaks = sampler.stop()
    wall = time.perf_counter() - t0
    result = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK):])
    if proc.returncode != 0 or result is None:
        sys.stderr.write(stdout[-4000:] + "\n" + stderr[-8000:] + "\n")
        raise RuntimeError(f"side {side!r} of {script} failed with status {proc.returncode}")
    if echo:
        for line in stderr.splitlines():
            if line.startswith("[bench]"):
                print("   ", line, flush=True)
    result.update(peaks)
    result["wall_s"] = wall
    result["load_start"] = load_start
    return result


class Worker:
    """A persistent child ``script --side NAME --params JSON --serve`` driven step by step.

    Used to interleave two sides at a fine grain (epoch by epoch) so that both see the same
    machine load on a shared, noisy host, while each keeps its own process and peak RSS. The child
    answers each command line on stdin with one ``@@RESULT`` line (see :func:`serve`).
    """

    def __init__(self, script: str | Path, side: str, params: dict[str, Any]):
        self.side = side
        cmd = [sys.executable, str(script), "--side", side, "--params", json.dumps(params), "--serve"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None, text=True, bufsize=1)
        self.sampler = ChildSampler(self.proc.pid)
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(RESULT_MARK):
                return json.loads(line[len(RESULT_MARK):])
        raise RuntimeError(f"worker {self.side!r} exited with status {self.proc.wait()}")

    def call(self, command: str, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": command, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict[str, float]:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        return self.sampler.stop()


def serve(handlers: dict[str, Any], ready: dict[str, Any]) -> None:
    """The child's loop for :class:`Worker`: emit ``ready``, then answer each JSON command line."""
    emit(dict(ready))
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        out = handlers[cmd](**msg)
        out["peak_rss_mb"] = peak_rss_mb()
        out["load"] = load_avg()
        sys.stdout.write(RESULT_MARK + json.dumps(out) + "\n")
        sys.stdout.flush()


def log(msg: str) -> None:
    """Progress message of a child (the parent echoes lines starting with ``[bench]``)."""
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


def say(msg: str) -> None:
    print(msg, flush=True)


# -- argument helpers ---------------------------------------------------------------------------


def add_common_args(parser) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI), under 30 s")
    parser.add_argument("--record", action="store_true", help="append the result rows to benchmarks/RESULTS.md")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache of generated inputs")
    parser.add_argument("--repeats", type=int, default=None, help="runs per side (order alternates)")
    parser.add_argument("--side", help=argparse_suppress())
    parser.add_argument("--params", help=argparse_suppress())
    parser.add_argument("--serve", action="store_true", help=argparse_suppress())


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


def command_line() -> str:
    args = [a for a in sys.argv[1:]]
    return ".venv/bin/python benchmarks/" + Path(sys.argv[0]).name + ("" if not args else " " + " ".join(args))


def alternate(names: list[str], repeats: int) -> list[str]:
    """``A B``, ``B A``, ``A B``... so neither side always runs first (page cache, thermal, load)."""
    order = []
    for r in range(repeats):
        order += names if r % 2 == 0 else names[::-1]
    return order


# -- results ----------------------------------------------------------------------------------------


def fmt_s(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def fmt_mb(x: float) -> str:
    return f"{x:,.0f} MB"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def record(bench: str, title: str, header: list[str], rows: list[list[str]]) -> None:
    """Append ``rows`` to the table of ``bench`` in RESULTS.md (created with ``header`` if missing).

    The table sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``; text outside the
    markers (notes, analysis) is left alone.
    """
    start, end = f"<!-- bench:{bench} -->", f"<!-- /bench:{bench} -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nSee benchmarks/README.md for what each benchmark measures.\n"
    new_rows = ["| " + " | ".join(r) + " |" for r in rows]
    if start in text and end in text:
        head, rest = text.split(start, 1)
        body, tail = rest.split(end, 1)
        lines = [ln for ln in body.strip("\n").splitlines() if ln.strip()]
        if not lines:
            lines = table(header, []).splitlines()
        body = "\n".join(lines + new_rows)
        text = f"{head}{start}\n{body}\n{end}{tail}"
    else:
        block = f"\n## {title}\n\n{start}\n{table(header, [])}\n" + "\n".join(new_rows) + f"\n{end}\n"
        text = text.rstrip("\n") + "\n" + block
    RESULTS.write_text(text)
    say(f"recorded {len(rows)} row(s) in {RESULTS}")


def today() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M")


# -- the baseline model ---------------------------------------------------------------------------


def pyg_gcn(dims: list[int], dropout: float, cached: bool = False):
    """The PyG baseline every benchmark compares against: ``GCNConv`` layers (PyG's own
    normalization and message passing) with dropout before and ReLU between them."""
    import torch.nn.functional as F
    from torch import nn
    from torch_geometric.nn import GCNConv

    class PygGCN(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(GCNConv(a, b, cached=cached) for a, b in zip(dims[:-1], dims[1:]))

        def forward(self, x, edge_index):
            for i, conv in enumerate(self.convs):
                x = F.dropout(x, p=dropout, training=self.training)
                x = conv(x, edge_index)
                if i < len(self.convs) - 1:
                    x = F.relu(x)
            return x

    return PygGCN()


# -- prepared graphs (generate -> ingest -> normalize -> partition -> layout), cached ----------------


#: the Cluster-GCN paper's Amazon2M graph (docs/generator.md): the shape that bench_amazon2m, bench_nightly
#: and bench_accuracy (``--datasets amazon2m:N``) generate, at its own size or at ``nodes`` = N
AMAZON2M = {"nodes": 2_449_029, "avg_degree": 61.3, "classes": 47, "features": 100}


def shaped_generator_config(graph: dict[str, Any], seed: int = 0):
    """The generator's config of a graph shape ``{"nodes", "avg_degree", "classes", "features"}``
    (:data:`AMAZON2M`'s keys), Parquet edges, every other field at the generator's default (so the
    generated graph follows the generator's calibration: docs/generator.md, its own 60/20/20 split)."""
    from tasks.synthetic.generate import GeneratorConfig

    return GeneratorConfig(num_nodes=graph["nodes"], avg_degree=graph["avg_degree"], num_classes=graph["classes"],
                           num_features=graph["features"], edge_format="parquet", seed=seed)



def graph_key(num_nodes: int, avg_degree: float, num_features: int, seed: int = 0) -> str:
    deg = f"{avg_degree:g}".replace(".", "p")
    return f"n{num_nodes}-d{deg}-f{num_features}-s{seed}"


def generated_input(workdir: Path, num_nodes: int, avg_degree: float, num_features: int, seed: int = 0,
                    fmt: str = "parquet") -> tuple[Path, Path]:
    """``(edges, nodes)`` files of a generated community graph, generated once into the workdir."""
    from tasks.synthetic.generate import GeneratorConfig, generate_graph

    key = graph_key(num_nodes, avg_degree, num_features, seed)
    out = workdir / "graphs" / key / "input"
    done = out / "DONE"
    cfg = GeneratorConfig(num_nodes=num_nodes, avg_degree=avg_degree, num_features=num_features,
                          edge_format=fmt, seed=seed)
    settings = cfg.model_dump(mode="json")
    # the key names only the sizes: a graph made with other generator defaults is made again
    if not done.exists() or json.loads(done.read_text()).get("config") != settings:
        t0 = time.perf_counter()
        g = generate_graph(cfg, out)
        done.write_text(json.dumps({"edges": g.num_edges, "seconds": g.seconds, "config": settings}))
        log(f"generated {key}: {g.num_edges:,} edge rows in {time.perf_counter() - t0:.1f} s")
    return out / cfg.edge_file_name, out / "nodes.parquet"


def pipeline_config(workdir: Path, key: str, edges: Path, nodes: Path, **sections: dict[str, Any]):
    from tasks.config import PipelineConfig

    data = {"name": key.replace(".", "_"), "edges": [str(edges)], "nodes": str(nodes)}
    return PipelineConfig.model_validate({"store": str(workdir / "store"), "data": data, **sections})


def prepared(workdir: Path, num_nodes: int, avg_degree: float, num_features: int, *, num_parts: int | None,
             seed: int = 0, layout: bool = True) -> dict[str, Any]:
    """Generate, ingest, normalize, partition (``num_parts``) and lay out a graph, each step once.

    Returns plain data: ``config`` (dict), ``snapshot``/``features``/``partition``/``node_data`` refs
    as dicts. The refs are kept in ``refs-*.json`` so a later run skips re-fingerprinting the input.
    """
    from dataclasses import asdict

    key = graph_key(num_nodes, avg_degree, num_features, seed)
    gdir = workdir / "graphs" / key
    refs_path = gdir / f"refs-k{num_parts}-{'layout' if layout else 'partition'}.json"
    if refs_path.exists():
        refs = json.loads(refs_path.read_text())
        paths = [refs[k]["path"] for k in ("snapshot", "features", "partition", "node_data") if refs.get(k)]
        if all((Path(p) / "manifest.json").exists() for p in paths):
            return refs
    from tasks.ingest.snapshot import ingest_graph
    from tasks.normalize.features import normalize_features
    from tasks.partition.layout import layout_node_data
    from tasks.partition.partition import partition_graph

    edges, nodes = generated_input(workdir, num_nodes, avg_degree, num_features, seed)
    sections: dict[str, Any] = {}
    if num_parts is not None:
        sections["partition"] = {"num_parts": num_parts}
    cfg = pipeline_config(workdir, key, edges, nodes, **sections)
    t0 = time.perf_counter()
    snap = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
    log(f"ingested {key} in {time.perf_counter() - t0:.1f} s")
    refs: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "snapshot": asdict(snap), "key": key}
    if num_parts is not None:
        t0 = time.perf_counter()
        feats = normalize_features(snap, cfg.normalize, Store(cfg.store))
        log(f"normalized {key} in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        part = partition_graph(snap, cfg.partition, Store(cfg.store))
        log(f"partitioned {key} into {num_parts} parts in {time.perf_counter() - t0:.1f} s")
        refs.update(features=asdict(feats), partition=asdict(part))
        if layout:
            t0 = time.perf_counter()
            nd = layout_node_data(part, snap, feats, Store(cfg.store))
            log(f"laid out node data of {key} in {time.perf_counter() - t0:.1f} s")
            refs["node_data"] = asdict(nd)
    refs_path.write_text(json.dumps(refs, indent=1))
    return refs


def node_data_ref(refs: dict[str, Any]):
    """The node data reference in the refs of :func:`prepared` (a JSON-able dict, as children get it)."""
    from storage.store import NodeDataRef, PartitionRef

    nd = refs["node_data"]
    return NodeDataRef(path=nd["path"], fingerprint=nd["fingerprint"], partition=PartitionRef(**nd["partition"]))
