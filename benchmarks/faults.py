"""Fault-injection suite (issue 9): every fault a nightly job meets, injected for real, one table row each.

    .venv/bin/python benchmarks/faults.py [--smoke] [--workdir DIR] [--only WORD]

Each scenario runs in a fresh directory with real processes: the ``graphpipe`` command line as
subprocesses (``python -m flows.cli``, Prefect's embedded API server included), real SIGKILLs sent
at points seen in the runs' logs, the process table or the store, a real full disk (a tmpfs mounted
for the store; needs root), bytes flipped and files truncated in the store. A scenario is a callable
``(workdir: Path, smoke: bool) -> dict`` (or a list of dicts) with keys ``fault``, ``expected``,
``observed``, ``ok``; this file holds the store and process faults (items 1, 5, 6, 7, 8), and
``SCENARIOS`` from ``benchmarks/_faults_services.py``, when that file exists, adds the services'
(GPU worker, MLflow, Prefect API). ``--smoke`` uses a 4,000-node graph (CI); the full run 100,000.
All the command-line runs share one Prefect home (its database warm after the first run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
from storage.store import Store

Row = dict[str, Any]
NAME = "g"


# -- running the command line ------------------------------------------------------------------
class Ctx:
    """What every scenario shares: the generated graph, the Prefect home, the sizes."""

    def __init__(self, root: Path, smoke: bool):
        self.root = root
        self.smoke = smoke
        self.nodes = 4_000 if smoke else 100_000
        self.epochs = 8 if smoke else 30
        self.prefect_home = root / "prefect-home"
        self.graph = root / "graph"
        if not (self.graph / "nodes.parquet").exists():
            from tasks.synthetic.generate import GeneratorConfig, generate_graph

            generate_graph(GeneratorConfig(num_nodes=self.nodes, num_features=16, num_classes=4, seed=11), self.graph)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
        env.update(PREFECT_HOME=str(self.prefect_home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=env.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600"))
        return env

    def inputs(self) -> list[str]:
        return ["--edges", str(self.graph / "edges.csv"), "--nodes", str(self.graph / "nodes.parquet")]

    def sets(self) -> list[str]:
        return ["--set", f"train.epochs={self.epochs}", "--set", "train.hidden=16"]

    def config(self, store: Path):
        from tasks.config import load_config

        return load_config(None, {"train.epochs": self.epochs, "train.hidden": 16},
                           base={"store": str(store), "data": {"name": NAME, "edges": [str(self.graph / "edges.csv")],
                                                               "nodes": str(self.graph / "nodes.parquet")}})


class Run:
    """One ``graphpipe`` command in its own process group, its output in a log file."""

    def __init__(self, ctx: Ctx, args: list[str], log: Path):
        self.log = log
        self.started = time.monotonic()
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=ctx.env(),
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 3600) -> int:
        return self.proc.wait(timeout=timeout)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def wait_gone(procs: list[psutil.Process], limit: float) -> float | None:
    """Seconds until every process in ``procs`` ended, or ``None`` if some outlived ``limit``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if not alive(procs):
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def names(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            cmd = "?"
        out.append("uvicorn (Prefect server)" if "uvicorn" in cmd else "METIS" if "metis_process" in cmd
                   else "watchdog" if "GRAPHPIPE_RUN_TOKEN" in cmd or " -S -c" in cmd else p.name())
    return ", ".join(out)


def poll(cond: Callable[[], Any], run: Run, limit: float = 3600) -> Any:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        v = cond()
        if v:
            return v
        if run.proc.poll() is not None:
            return None
        time.sleep(0.01)
    return None


# -- the store --------------------------------------------------------------------------------
def gdir(store: Path) -> Path:
    return store / "graphs" / NAME


def leftovers(store: Path) -> set[Path]:
    g = gdir(store)
    return {p for p in g.rglob(".*") if ".tmp-" in p.name or ".damaged-" in p.name} if g.is_dir() else set()


def partial_current(store: Path) -> list[str]:
    """Published directories that are incomplete or damaged, and a CURRENT naming one."""
    from storage.store import damage

    bad = []
    g = gdir(store)
    for kind in ("snapshots", "features", "partitions", "node_data"):
        for d in (g / kind).glob("[!.]*"):
            why = damage(d)
            if why:
                bad.append(f"{d.relative_to(g)}: {why}")
    pointer = g / "CURRENT.json"
    if pointer.exists():
        why = damage(json.loads(pointer.read_text())["path"])
        if why:
            bad.append(f"CURRENT.json -> {why}")
    return bad


def fingerprints(store: Path) -> dict[str, str]:
    g = gdir(store)
    out = {}
    pointer = g / "CURRENT.json"
    if pointer.exists():
        out["snapshot"] = json.loads(pointer.read_text())["fingerprint"]
    for kind in ("partitions", "node_data"):
        found = sorted(d.name for d in (g / kind).glob("[!.]*"))
        out[kind] = ",".join(found)
    return out


def reference_fingerprints(ctx: Ctx) -> dict[str, str]:
    """An uninterrupted run of the data stages (in this process: content-addressed outputs do not
    depend on how the stages are started)."""
    store = ctx.root / "reference-store"
    if not (gdir(store) / "CURRENT.json").exists():
        from tasks.ingest.snapshot import ingest_graph
        from tasks.normalize.features import normalize_features
        from tasks.partition.layout import layout_node_data
        from tasks.partition.partition import partition_graph

        cfg = ctx.config(store)
        snap = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
        feats = normalize_features(snap, cfg.normalize, Store(cfg.store))
        part = partition_graph(snap, cfg.partition, Store(cfg.store))
        layout_node_data(part, snap, feats, Store(cfg.store))
    return fingerprints(store)


# -- item 1 (+ 8): SIGKILL of the whole process group during each stage --------------------------
def _metis_running(run: Run) -> bool:
    return any("tasks.partition.metis" in " ".join(_cmd(p)) for p in run.descendants())


def _cmd(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _task_finished(run: Run, task: str) -> bool:
    """This run's log says the Prefect task ``task`` finished (computed, not a cache hit)."""
    return any(f"Task run '{task}-" in line and "Finished in state Completed()" in line for line in run.text().splitlines())


def kill_points(store: Path) -> list[tuple[str, Callable[[Run], str | None]]]:
    g = gdir(store)

    def tmp_in(kind: str, after: str | None = None) -> Callable[[Run], str | None]:
        """The stage's temporary directory seen, or (a small graph's stage can be over between two
        looks) the previous task's end in the log: the stage is starting."""
        def point(run: Run) -> str | None:
            if list((g / kind).glob(".*.tmp-*")):
                return f"{kind}/ temporary directory present"
            if after and _task_finished(run, after):
                return f"{after} task finished, next stage starting"
            return None
        return point

    def training(run: Run) -> str | None:
        for last in (g / "checkpoints").glob("*/last.pt"):
            if not (last.parent / "model.pt").exists():
                return "after an epoch's checkpoint (last.pt), before model.pt"
        return None

    def evaluating(run: Run) -> str | None:
        if list((g / "evaluation").glob(".*.tmp-*")):
            return "evaluation/ temporary directory present"
        return "train task finished, evaluate task started" if "Task run 'train-" in run.text() and \
            "Finished in state Completed()" in run.text().split("Task run 'train-")[-1] else None

    def logging_(run: Run) -> str | None:
        t = run.text()
        return "evaluate task finished, log-to-mlflow running" if "Task run 'evaluate-" in t else None

    return [
        ("ingest", tmp_in("snapshots")),
        ("normalize", tmp_in("features", "ingest")),
        ("partition (METIS child)", lambda run: "METIS child running" if _metis_running(run) else
         ("normalize task finished, partition starting" if _task_finished(run, "normalize") else None)),
        ("layout", tmp_in("node_data", "partition")),
        ("train", training),
        ("evaluate", evaluating),
        ("MLflow logging", logging_),
    ]


def scenario_kill_chain(workdir: Path, smoke: bool, ctx: Ctx) -> list[Row]:
    """Run ``graphpipe run`` again and again, SIGKILLing each run's process group at the next stage:
    each run must get past the stage the previous one was killed in, remove its leftovers, and the
    last (uninterrupted) run must give an uninterrupted run's fingerprints."""
    store = workdir / "store"
    rows: list[Row] = []
    ref = reference_fingerprints(ctx)
    prev_left: set[Path] = set()
    stale_removed, stale_total, lock_pid_dead = 0, 0, []
    resumed_line = None
    for i, (stage, point) in enumerate(kill_points(store)):
        run = Run(ctx, ["run", *ctx.inputs(), "--store", str(store), "--name", NAME, *ctx.sets()], workdir / f"run{i}.log")
        where = poll(lambda: point(run), run)
        procs = run.descendants()
        if where is None:
            rc = run.wait()
            rows.append(_row(f"SIGKILL of the process group during {stage}", "", False,
                             f"the run ended (status {rc}) before the kill point was seen"))
            continue
        run.kill_group()
        gone = wait_gone(procs, 10)
        partial = partial_current(store)
        left = leftovers(store)
        # what the previous kill left behind: this run removed it?
        removed = prev_left - leftovers(store)
        stale_total += len(prev_left)
        stale_removed += len(removed & prev_left)
        lockf = gdir(store) / ".lock"
        if lockf.exists():
            try:
                holder = json.loads(lockf.read_text() or "{}").get("pid")
                lock_pid_dead.append(holder == run.pid)
            except ValueError:
                pass
        text = run.text()
        if i > 0 and "train: resuming" in text and resumed_line is None:
            resumed_line = text[text.index("train: resuming"):].splitlines()[0]
        observed = (f"killed at: {where}; {len(procs)} processes, "
                    + (f"all gone {gone:.1f} s after" if gone is not None else "SOME OUTLIVED 10 s")
                    + f"; partial outputs current: {len(partial) or 'none'}; leftovers: {len(left)}")
        ok = gone is not None and not partial
        rows.append(_row(f"SIGKILL of the process group during {stage}",
                         "no partial output current, no process left, next run gets past it", ok, observed, partial))
        prev_left = left
    # the last run, uninterrupted
    run = Run(ctx, ["run", *ctx.inputs(), "--store", str(store), "--name", NAME, *ctx.sets()], workdir / "final.log")
    rc = run.wait()
    text = run.text()
    removed = prev_left - leftovers(store)
    stale_total += len(prev_left)
    stale_removed += len(removed)
    got = fingerprints(store)
    same = {k: got.get(k) == ref.get(k) for k in ("snapshot", "partitions", "node_data")}
    all_resumed = "train: resuming" in "".join((workdir / f"run{j}.log").read_text() for j in range(5, 7)
                                                if (workdir / f"run{j}.log").exists())
    rows.append(_row(
        "re-run after the 7 kills", "completes; same snapshot, partition and node-data fingerprints as an "
        "uninterrupted run; training resumed from its last checkpoint",
        rc == 0 and all(same.values()) and all_resumed,
        f"exit {rc}; fingerprints equal: {same}; training resumed after the train kill: {all_resumed}"
        + (f" ({resumed_line.strip()[:80]})" if resumed_line else ""),
    ))
    rows.append(_row(
        "stale lock and temporary dirs of killed runs (item 8)",
        "the next run removes them; the dead run's lock does not block it",
        stale_total > 0 and stale_removed == stale_total and rc == 0 and not leftovers(store),
        f"{stale_total} leftover entries over the kills, {stale_removed} removed by the next run; "
        f"lock file still named the killed pid in {sum(lock_pid_dead)}/{len(lock_pid_dead)} cases, no run blocked by it",
    ))
    return rows


def _row(fault: str, expected: str, ok: bool, observed: str, details: Any = None) -> Row:
    row = {"fault": fault, "expected": expected, "observed": observed, "ok": bool(ok)}
    if details:
        row["details"] = details
    return row


# -- item 1: SIGKILL of the main process alone -------------------------------------------------
def scenario_kill_main_alone(workdir: Path, smoke: bool, ctx: Ctx) -> Row:
    store = workdir / "store"
    run = Run(ctx, ["run", *ctx.inputs(), "--store", str(store), "--name", NAME, *ctx.sets()], workdir / "run.log")
    seen = poll(lambda: _metis_running(run) and any("uvicorn" in " ".join(_cmd(p)) for p in run.descendants()), run)
    procs = run.descendants()
    desc = names(procs)
    metis = [p for p in procs if "metis_process" in " ".join(_cmd(p))]
    os.kill(run.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
    run.proc.wait()
    metis_alive = bool(alive(metis))
    gone = wait_gone(procs, 10)
    for p in alive(procs):
        p.kill()
    try:
        os.killpg(run.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return _row("SIGKILL of the main process alone (OOM killer)", "every process it started ends within 10 s",
                bool(seen) and gone is not None,
                f"{len(procs)} processes at the kill ({desc}; METIS alive just after the kill: {metis_alive}); "
                + (f"all gone {gone:.1f} s later" if gone is not None else "SOME OUTLIVED 10 s"))


# -- item 5: disk full while publishing -------------------------------------------------------
def scenario_disk_full(workdir: Path, smoke: bool, ctx: Ctx) -> Row:
    disk = workdir / "disk"
    disk.mkdir()
    size_mb = 8 if smoke else 120
    mnt = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mnt.returncode != 0:
        return _row("disk full while publishing", "clear error naming stage and path", False,
                    f"not run: cannot mount a tmpfs here ({mnt.stderr.strip()}); needs root")
    try:
        store = disk / "store"
        from tasks.ingest.snapshot import ingest_graph

        snap = ingest_graph((c := ctx.config(store)).data, c.split, Store(c.store))  # the previous good output
        before = (gdir(store) / "CURRENT.json").read_bytes()
        st = os.statvfs(disk)
        with open(disk / "ballast", "wb") as f:
            os.posix_fallocate(f.fileno(), 0, max(0, st.f_bavail * st.f_frsize - (64 << 10)))
        run = Run(ctx, ["partition", "--store", str(store), "--name", NAME], workdir / "run.log")
        rc = run.wait()
        text = run.text()
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        from storage.store import damage

        ok = (rc == 2 and len(errors) == 1 and "stage: no space left while writing" in errors[0] and str(store) in errors[0]
              and not leftovers(store)
              and (gdir(store) / "CURRENT.json").read_bytes() == before and damage(snap.path) is None)
        return _row("disk full while publishing (tmpfs store)",
                    "one-line error naming stage and path, exit 2, temporary files removed, previous output current", ok,
                    f"exit {rc}; {errors[0][:150] if errors else 'no error line'}...; leftovers: {len(leftovers(store))}; "
                    f"Prefect's flow-run traceback before it: {'Traceback' in text}; previous snapshot current and sound: "
                    f"{(gdir(store) / 'CURRENT.json').read_bytes() == before and damage(snap.path) is None}")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# -- item 6: two runs of the same graph at once -------------------------------------------------
def scenario_concurrent(workdir: Path, smoke: bool, ctx: Ctx) -> Row:
    store = workdir / "store"
    runs = [Run(ctx, ["run", *ctx.inputs(), "--store", str(store), "--name", NAME, *ctx.sets()], workdir / f"run{i}.log")
            for i in range(2)]
    rcs = [r.wait() for r in runs]
    texts = [r.text() for r in runs]
    waited = [i for i, t in enumerate(texts) if "waiting for the lock on graph" in t]
    named = bool(waited) and f"held by pid {runs[1 - waited[0]].pid}" in texts[waited[0]]
    ckpts = [d for d in (gdir(store) / "checkpoints").glob("*") if d.is_dir()]
    check = subprocess.run([sys.executable, "-m", "flows.cli", "verify", "--store", str(store), "--name", NAME],
                           cwd=REPO, env=ctx.env(), capture_output=True, text=True)
    ok = rcs == [0, 0] and named and check.returncode == 0
    return _row("two runs of the same graph at once", "the second waits for the lock (says for whom); both succeed; "
                "outputs sound", ok,
                f"exits {rcs}; run {waited[0] + 1 if waited else '-'} waited, naming the other's pid: {named}; "
                f"{len(ckpts)} checkpoint dir(s), trainings one after the other; verify exit {check.returncode}")


# -- item 7: corruption after publishing --------------------------------------------------------
def scenario_corruption(workdir: Path, smoke: bool, ctx: Ctx) -> Row:
    store = workdir / "store"
    from tasks.ingest.snapshot import ingest_graph
    from tasks.normalize.features import normalize_features
    from tasks.partition.layout import layout_node_data
    from tasks.partition.partition import partition_graph

    cfg = ctx.config(store)
    snap = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
    feats = normalize_features(snap, cfg.normalize, Store(cfg.store))
    part = partition_graph(snap, cfg.partition, Store(cfg.store))
    nd = layout_node_data(part, snap, feats, Store(cfg.store))
    indices = Path(part.path) / "indices.npy"
    with open(indices, "r+b") as f:  # a flipped byte
        f.seek(-7, os.SEEK_END)
        b = f.read(1)
        f.seek(-7, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x5A]))
    edges = Path(snap.path) / "edges.parquet"
    with open(edges, "r+b") as f:  # a truncated Parquet file
        f.truncate(edges.stat().st_size // 2)

    def verify(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", "verify", "--store", str(store), "--name", NAME, *extra],
                              cwd=REPO, env=ctx.env(), capture_output=True, text=True)

    first = verify()
    found = "indices.npy checksum" in first.stdout and "edges.parquet has" in first.stdout
    repaired = verify("--repair")
    x = Path(nd.path) / "x.npy"  # a truncated file the next run meets on its cheap size check
    with open(x, "r+b") as f:
        f.truncate(x.stat().st_size - 1000)
    run = Run(ctx, ["run", *ctx.inputs(), "--store", str(store), "--name", NAME, *ctx.sets()], workdir / "run.log")
    rc = run.wait()
    text = run.text()
    rebuilt = "is damaged or incomplete (x.npy has" in text and "rebuilding it" in text
    last = verify()
    ok = first.returncode == 1 and found and repaired.returncode == 1 and rc == 0 and rebuilt and last.returncode == 0
    return _row("store files corrupted after publishing (flipped byte, truncated Parquet, truncated array)",
                "verify finds each (exit 1); the run's size check rebuilds what it reads; then all sound", ok,
                f"verify exit {first.returncode}, both named: {found}; --repair discarded them; a run with a truncated "
                f"x.npy: exit {rc}, rebuilt with the reason logged: {rebuilt}; verify after: exit {last.returncode}")


# -- the runner --------------------------------------------------------------------------------
MINE: list[tuple[str, Callable[..., Any]]] = [
    ("kill-chain", scenario_kill_chain),
    ("kill-main", scenario_kill_main_alone),
    ("disk-full", scenario_disk_full),
    ("concurrent", scenario_concurrent),
    ("corruption", scenario_corruption),
]


def scenarios() -> list[tuple[str, Callable[..., Any], bool]]:
    """(name, callable, needs_ctx): this file's, then the services' ``SCENARIOS`` if present."""
    out = [(n, f, True) for n, f in MINE]
    if (Path(__file__).resolve().parent / "_faults_services.py").exists():
        import _faults_services

        for f in getattr(_faults_services, "SCENARIOS", []):
            out.append((getattr(f, "__name__", "services"), f, False))
    return out


def table(rows: list[Row]) -> str:
    lines = ["| fault | expected | observed | result |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fault']} | {r['expected']} | {r['observed']} | {'pass' if r['ok'] else 'FAIL'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="small graphs (CI)")
    p.add_argument("--workdir", type=Path, default=None, help="where the scenarios' directories go (default: a temp dir)")
    p.add_argument("--only", default=None, help="run the scenarios whose name contains this")
    p.add_argument("--keep", action="store_true", help="keep the scenarios' directories")
    args = p.parse_args(argv)
    base = Path(args.workdir) if args.workdir else Path(os.environ.get("TMPDIR", "/tmp"))
    root = base / f"faults-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    t0 = time.monotonic()
    rows: list[Row] = []
    try:
        ctx = Ctx(root, args.smoke)
        for name, fn, needs_ctx in scenarios():
            if args.only and args.only not in name:
                continue
            workdir = root / name
            workdir.mkdir()
            t1 = time.monotonic()
            try:
                out = fn(workdir, args.smoke, ctx) if needs_ctx else fn(workdir, args.smoke)
            except Exception as e:  # a scenario that breaks is a failed row, not a lost table
                out = _row(name, "", False, f"scenario raised {type(e).__name__}: {e}".replace("\n", " ")[:300])
                traceback.print_exc()
            for r in out if isinstance(out, list) else [out]:
                r["observed"] = str(r["observed"]).replace(str(root), "<work>")
                rows.append(r)
                print(f"[{time.monotonic() - t1:6.0f} s] {'pass' if r['ok'] else 'FAIL'}: {r['fault']}: {r['observed']}",
                      flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    failed = sum(not r["ok"] for r in rows)
    print(f"\n{len(rows)} faults, {len(rows) - failed} passed, {failed} failed, {time.monotonic() - t0:.0f} s "
          f"({'smoke' if args.smoke else 'full'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
