"""The fixed cost of a CLI call: ``graphpipe ingest`` of a 3-node graph, before and after.

Both sides are whole processes, ``python -m flows.cli ingest --edges E --nodes N --store S`` on the
same 3-node graph, timed from the parent (wall clock, fork to exit), run alternately (A B, B A...):

- ``before``: the code of ``--before-ref`` (default ``main``), exported once with ``git archive``
  into the work directory and run from there (its own modules, not this checkout's);
- ``after``: this checkout.

Modes:

- ``warm``: the Prefect home (its SQLite database) made by one unmeasured call, then reused (what a
  user's second call meets);
- ``cold``: a fresh ``PREFECT_HOME`` for every call (database created and migrated);
- ``bad``: warm, but the edge file lacks the configured column: the time to reject bad input;
- ``import``: ``python -c "import flows.pipeline"`` (what the flows import).

Both sides run with ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=600``: with Prefect's default
(20 s) the ``before`` code fails on a loaded machine, which is one of the bugs fixed, and a failed
call has no duration.

Prints one Markdown row per mode: median (and min-max) wall seconds per side, the ratio
after/before, the median CPU seconds (user + system of the command and every process it waited
for, the embedded Prefect server included: the work a call costs, much less dependent on the load
than its wall time), and the load average before and after the mode. ``--record`` appends them to RESULTS.md.

    .venv/bin/python benchmarks/bench_cli_startup.py [--smoke] [--record] [--repeats 5] [--modes warm,cold,bad,import]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

HEADER = ["mode", "before (s, median)", "before min-max", "after (s, median)", "after min-max", "after / before",
          "CPU before (s)", "CPU after (s)", "CPU after / before", "load before -> after", "runs per side", "when"]


def export_tree(ref: str, workdir: Path) -> Path:
    """The files of git ``ref`` under ``workdir/before-<commit>`` (made once)."""
    commit = subprocess.run(["git", "-C", str(B.REPO), "rev-parse", ref], capture_output=True, text=True, check=True).stdout.strip()
    tree = workdir / f"before-{commit[:12]}"
    if not (tree / "flows" / "cli.py").is_file():
        tmp = Path(tempfile.mkdtemp(dir=workdir))
        archive = subprocess.run(["git", "-C", str(B.REPO), "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        shutil.rmtree(tree, ignore_errors=True)
        tmp.rename(tree)
    return tree


def tiny_graph(workdir: Path) -> tuple[Path, Path, Path]:
    edges, nodes, bad = workdir / "tiny-edges.csv", workdir / "tiny-nodes.csv", workdir / "tiny-bad-edges.csv"
    edges.write_text("src,dst\n1,2\n2,3\n")
    nodes.write_text("node_id,label\n1,0\n2,1\n3,0\n")
    bad.write_text("from,to\n1,2\n2,3\n")
    return edges, nodes, bad


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GRAPHPIPE_", "MLFLOW_"))}
    # both sides wait up to 600 s for the embedded server: with Prefect's default 20 s the 'before'
    # code fails outright on a loaded machine (the bug being fixed), and a failed call has no time
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="600")
    return env


def run(tree: Path, args: list[str], env: dict[str, str], expect: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the process and every child it waited for: the
    embedded Prefect server included) of ``python <args>`` run in ``tree`` (its modules first)."""
    env = {**env, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != expect:
        raise SystemExit(f"{tree}: {' '.join(args)} exited {proc.returncode}, expected {expect}:\n{proc.stderr[-3000:]}")
    return elapsed, cpu


def measure(mode: str, trees: dict[str, Path], workdir: Path, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    edges, nodes, bad = tiny_graph(workdir)
    times: dict[str, list[float]] = {side: [] for side in trees}
    cpus: dict[str, list[float]] = {side: [] for side in trees}
    homes = {side: workdir / f"prefect-home-{side}" for side in trees}
    for side, tree in trees.items():  # warm homes: one unmeasured call each
        if mode in ("warm", "bad") and not (homes[side] / "prefect.db").exists():
            run(tree, ingest_args(edges, nodes, workdir / f"store-{side}"), environment(homes[side]), 0)
    for i, side in enumerate(B.alternate(list(trees), repeats)):
        tree = trees[side]
        store = workdir / f"store-{side}"
        if mode == "import":
            t = run(tree, ["-c", "import flows.pipeline"], environment(homes[side]), 0)
        elif mode == "cold":
            home = Path(tempfile.mkdtemp(prefix=f"cold-{side}-", dir=workdir))
            t = run(tree, ingest_args(edges, nodes, store), environment(home), 0)
            shutil.rmtree(home, ignore_errors=True)
        elif mode == "warm":
            t = run(tree, ingest_args(edges, nodes, store), environment(homes[side]), 0)
        else:  # bad: the configured column is missing
            t = run(tree, ingest_args(bad, nodes, store) + ["--set", "data.src_column=src"], environment(homes[side]), 2)
        t, cpu = t
        times[side].append(t)
        cpus[side].append(cpu)
        B.log(f"{mode} {side} run {i // len(trees) + 1}: {t:.1f} s wall, {cpu:.1f} s CPU (load {B.load_avg()})")
    return times, cpus


def ingest_args(edges: Path, nodes: Path, store: Path) -> list[str]:
    return ["-m", "flows.cli", "ingest", "--edges", str(edges), "--nodes", str(nodes), "--store", str(store), "--name", "tiny"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    B.add_common_args(parser)
    parser.add_argument("--before-ref", default="main", help="git ref of the 'before' code (default: main)")
    parser.add_argument("--modes", default="warm,cold,bad,import")
    args = parser.parse_args()
    workdir = Path(args.workdir) / "cli-startup"
    workdir.mkdir(parents=True, exist_ok=True)
    if args.smoke:  # this checkout only, one warm call: checks that the script runs
        trees = {"after": B.REPO}
        modes, repeats = ["warm"], 1
    else:
        trees = {"before": export_tree(args.before_ref, workdir), "after": B.REPO}
        modes, repeats = args.modes.split(","), args.repeats or 5
    B.say(f"# {B.command_line()}  ({B.machine()})")
    rows = []
    for mode in modes:
        load0 = B.load_avg()
        times, cpus = measure(mode, trees, workdir, repeats)
        load1 = B.load_avg()
        med = {s: B.median(t) for s, t in times.items()}
        cpu = {s: B.median(t) for s, t in cpus.items()}
        span = {s: f"{min(t):.1f}-{max(t):.1f}" for s, t in times.items()}
        ratio = f"{med['after'] / med['before']:.2f}x" if "before" in med else "-"
        cpu_ratio = f"{cpu['after'] / cpu['before']:.2f}x" if "before" in cpu else "-"
        rows.append([mode, B.fmt_s(med.get("before", float("nan"))), span.get("before", "-"), B.fmt_s(med["after"]),
                     span["after"], ratio, B.fmt_s(cpu.get("before", float("nan"))), B.fmt_s(cpu["after"]), cpu_ratio,
                     f"{load0} -> {load1}", str(repeats), B.today()])
        B.say(B.table(HEADER, [rows[-1]]).splitlines()[-1])
    B.say(B.table(HEADER, rows))
    if args.record and not args.smoke:
        B.record("cli_startup", "Start-up: the fixed cost of a CLI call (issue 9)", HEADER, rows)


if __name__ == "__main__":
    main()
