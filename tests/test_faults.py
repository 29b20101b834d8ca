"""Faults a nightly job meets (issue 9, items 1, 5, 6, 7, 8), injected for real: SIGKILLs of real
processes at points seen from their output or the process table, a full tmpfs, flipped and
truncated bytes, concurrent runs on one store.

The pipeline runs as ``python -m tests.fault_driver`` (the stages under the store's lock, without
Prefect, whose server start-up would cost each run seconds to minutes on this machine);
``benchmarks/faults.py`` runs the same faults through the ``graphpipe`` command line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest

from storage.store import Store, damage, read_manifest, verify_directory

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 10


# -- helpers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    """A 20,000-node community graph (edge list + node table)."""
    from tasks.synthetic.generate import GeneratorConfig, generate_graph

    out = tmp_path_factory.mktemp("graph")
    generate_graph(GeneratorConfig(num_nodes=20_000, num_features=16, num_classes=4, seed=7), out)
    return out


def write_config(path: Path, store: Path, graph: Path, **extra) -> Path:
    cfg = {"store": str(store), "data": {"name": "g", "edges": [str(graph / "edges.csv")], "nodes": str(graph / "nodes.parquet")},
           "train": {"epochs": EPOCHS, "hidden": 16}, "partition": {"num_parts": 40}}
    for k, v in extra.items():
        section, _, key = k.partition("__")
        if key:
            cfg.setdefault(section, {})[key] = v
        else:
            cfg[section] = v
    path.write_text(json.dumps(cfg))
    return path


def start_driver(config: Path, until: str = "evaluate", log: Path | None = None) -> subprocess.Popen:
    """The pipeline in its own process group (session), output to ``log``."""
    log = log or config.with_suffix(f".{uuid.uuid4().hex[:6]}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fault_driver", str(config), "--until", until],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    proc.log_path = log  # type: ignore[attr-defined]
    return proc


def log_of(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]


def run_driver(config: Path, until: str = "evaluate") -> tuple[int, str, dict]:
    proc = start_driver(config, until)
    rc = proc.wait(timeout=900)
    text = log_of(proc)
    result = next((json.loads(line[7:]) for line in text.splitlines() if line.startswith("result ")), {})
    return rc, text, result


def wait_for(cond, what: str, timeout: float = 600.0, proc: subprocess.Popen | None = None):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process ended (status {proc.returncode}) before {what}:\n{log_of(proc)[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def metis_child(pid: int) -> psutil.Process | None:
    try:
        for c in psutil.Process(pid).children(recursive=True):
            if "tasks.partition.metis" in " ".join(c.cmdline()):
                return c
    except psutil.Error:
        return None
    return None


def leftovers(store: Path) -> list[Path]:
    return [p for p in (store / "graphs").rglob(".*") if ".tmp-" in p.name or ".damaged-" in p.name]


def assert_nothing_partial_current(store: Store, name: str = "g") -> None:
    """Every published output directory is complete; CURRENT names a complete snapshot."""
    gdir = store.graph_dir(name)
    for kind in ("snapshots", "features", "partitions", "node_data"):
        for d in (gdir / kind).glob("*"):
            if not d.name.startswith("."):
                assert damage(d) is None, f"{d}: {damage(d)}"
    pointer = gdir / "CURRENT.json"
    if pointer.exists():
        assert damage(json.loads(pointer.read_text())["path"]) is None


@pytest.fixture(scope="module")
def reference(graph, tmp_path_factory) -> dict:
    """Fingerprints and results of an uninterrupted run."""
    d = tmp_path_factory.mktemp("reference")
    rc, text, result = run_driver(write_config(d / "cfg.json", d / "store", graph), "train")
    assert rc == 0, text
    return result


# -- item 1: SIGKILL of the whole process group, and of the main process alone -----------------
@pytest.mark.parametrize("stage", ["partition", "train"])
def test_sigkill_of_the_group_during_a_stage_then_rerun_matches(stage, graph, reference, tmp_path):
    store = tmp_path / "store"
    cfg = write_config(tmp_path / "cfg.json", store, graph)
    proc = start_driver(cfg, "train")
    wait_for(lambda: f"stage {stage} start" in log_of(proc), f"stage {stage}", proc=proc)
    if stage == "partition":  # inside METIS: the child process is running
        child = wait_for(lambda: metis_child(proc.pid), "the METIS child", proc=proc)
    else:  # after at least one epoch's checkpoint
        wait_for(lambda: list((store / "graphs/g/checkpoints").glob("*/last.pt")), "a checkpoint", proc=proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if stage == "partition":
        assert wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "METIS to end", 10)
        assert not list((store / "graphs/g/partitions").glob("[!.]*")), "a partition was published"
        assert list((store / "graphs/g/partitions").glob(".*.tmp-*")), "no temporary directory: killed too late?"
    assert_nothing_partial_current(Store(store))

    rc, text, result = run_driver(cfg, "train")
    assert rc == 0, text
    for key in ("snapshot", "features", "partition", "node_data"):
        assert result[key] == reference[key], key
    assert not leftovers(store), leftovers(store)
    if stage == "partition":
        assert "removed 1 temporary entries left by interrupted runs: partitions/." in text
    else:
        assert 1 <= result["resumed_from_epoch"] < EPOCHS, result
        assert "resuming" in text
        assert result["epochs_run"] == EPOCHS


def test_sigkill_of_the_main_process_alone_ends_the_metis_child(tmp_path):
    """The kernel's PR_SET_PDEATHSIG: METIS (here on a structureless random graph, which takes it
    far longer than 10 s) ends with its parent instead of running on."""
    n, deg = 400_000, 12
    rng = np.random.default_rng(0)
    src = rng.integers(0, n, n * deg // 2)
    dst = rng.integers(0, n, n * deg // 2)
    from tasks.partition.csr import build_csr

    indptr, indices = build_csr(src, dst, n, index_dtype=np.int64)
    np.save(tmp_path / "indptr.npy", indptr)
    np.save(tmp_path / "indices.npy", indices)
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from tasks.partition.metis import run_metis; "
         "d = Path(sys.argv[1]); "
         f"run_metis(d / 'indptr.npy', d / 'indices.npy', d / 'assignment.npy', {n}, {len(indices)}, 512, 0)",
         str(tmp_path)],
        cwd=ROOT, start_new_session=True,
    )
    try:
        child = wait_for(lambda: metis_child(parent.pid), "the METIS child", proc=parent)
        time.sleep(2.0)  # METIS itself is running now (numpy and pymetis imported)
        assert child.is_running()
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        t0 = time.monotonic()
        gone = wait_for(lambda: (not child.is_running() or child.status() == psutil.STATUS_ZOMBIE) and time.monotonic(),
                        "METIS to end", 10)
        assert gone - t0 < 10
        assert not (tmp_path / "assignment.npy").exists(), "METIS finished on its own: the test proves nothing"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_watchdog_ends_what_a_sigkilled_command_started(tmp_path):
    """flows.reaper without Prefect: a grandchild (started by a child, as uvicorn's workers would
    be) ends within 10 s of a SIGKILL of the command's main process; an unrelated process does not."""
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; from flows.reaper import reap_children_on_exit\n"
         "reap_children_on_exit()\n"
         "subprocess.Popen([sys.executable, '-c', 'import subprocess, time; subprocess.Popen([\"sleep\", \"600\"]); time.sleep(600)'])\n"
         "print('started', flush=True); time.sleep(600)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert parent.stdout.readline().strip() == "started"
        kids = wait_for(lambda: [k for k in psutil.Process(parent.pid).children(recursive=True)
                                 if k.cmdline() == ["sleep", "600"]], "the grandchild", proc=parent)
        procs = psutil.Process(parent.pid).children(recursive=True)
        assert len(procs) >= 3 and kids  # watchdog, child, grandchild
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        t0 = time.monotonic()
        wait_for(lambda: all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs), "them to end", 10)
        assert time.monotonic() - t0 < 10
        assert bystander.poll() is None
    finally:
        bystander.kill()
        for p in psutil.Process(os.getpid()).children(recursive=True):
            if p.pid == parent.pid:
                p.kill()


@pytest.mark.slow
def test_sigkill_of_the_cli_alone_ends_prefects_server(graph, tmp_path):
    """The command line's watchdog: Prefect's embedded API server (uvicorn) ends within 10 s of a
    SIGKILL of the command's main process."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cli = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "ingest", "--edges", str(graph / "edges.csv"), "--nodes",
         str(graph / "nodes.parquet"), "--store", str(tmp_path / "store"), "--name", "g"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    started: list[psutil.Process] = []
    try:
        def server():
            try:
                kids = psutil.Process(cli.pid).children(recursive=True)
            except psutil.Error:
                return None
            return next((k for k in kids if "uvicorn" in " ".join(k.cmdline())), None)

        uvicorn = wait_for(server, "Prefect's server process", proc=cli)
        started = [k for k in psutil.Process(cli.pid).children(recursive=True)]
        time.sleep(1.0)
        assert uvicorn.is_running()
        cli.send_signal(signal.SIGKILL)
        cli.wait()
        t0 = time.monotonic()

        def all_gone():
            return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in started)

        wait_for(all_gone, "every process the command started to end", 10)
        assert time.monotonic() - t0 < 10
    finally:
        for p in started:
            try:
                p.kill()
            except psutil.Error:
                pass


# -- item 5: disk full while publishing -------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs (needs root and mount; skipped where that is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}): the disk-full test needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill the file system but ``leave`` bytes."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "ballast", "ab") as f:
        os.posix_fallocate(f.fileno(), 0, max(0, free - leave) + os.fstat(f.fileno()).st_size)


@pytest.mark.parametrize("stage,before", [("ingest", None), ("normalize", "ingest"), ("partition", "normalize"),
                                          ("layout", "partition"), ("train", "layout")])
def test_disk_full_while_publishing_is_a_clear_error_and_keeps_the_previous_output(
        stage, before, graph, small_disk, tmp_path):
    store = small_disk / "store"
    cfg = write_config(tmp_path / "cfg.json", store, graph)
    if before:
        rc, text, _ = run_driver(cfg, before)
        assert rc == 0, text
    published = {p: p.read_bytes() for p in (store / "graphs").rglob("*") if p.is_file() and p.name != ".lock"}
    fill(small_disk, 16 << 10)
    rc, text, _ = run_driver(cfg, stage)
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(errors) == 1, text
    expected = {"layout": "layout-node-data"}.get(stage, stage)
    assert f"{expected} stage: no space left while writing {store}" in errors[0], errors[0]
    assert "Traceback" not in text
    assert not leftovers(store), leftovers(store)
    assert {p: p.read_bytes() for p in published} == published  # nothing earlier changed
    assert_nothing_partial_current(Store(store))
    (small_disk / "ballast").unlink()
    rc, text, _ = run_driver(cfg, stage)  # with space again, the stage completes
    assert rc == 0, text


# -- item 6: two runs of one graph at once ----------------------------------------------------
def test_second_run_waits_for_the_first_and_both_succeed(graph, reference, tmp_path):
    store = tmp_path / "store"
    first = start_driver(write_config(tmp_path / "a.json", store, graph), "train")
    wait_for(lambda: "stage ingest start" in log_of(first), "the first run to start", proc=first)
    rc, text, result = run_driver(write_config(tmp_path / "b.json", store, graph, lock_timeout_seconds=900), "layout")
    assert first.wait(timeout=900) == 0, log_of(first)
    assert rc == 0, text
    assert f"waiting for the lock on graph 'g' in store {store}, held by pid {first.pid}" in text
    assert result["partition"] == reference["partition"] and result["node_data"] == reference["node_data"]
    assert "cache hit" in text  # the second run reused what the first published


def test_second_run_refuses_after_the_configured_wait(graph, tmp_path):
    store = tmp_path / "store"
    first = start_driver(write_config(tmp_path / "a.json", store, graph), "train")
    wait_for(lambda: "stage normalize start" in log_of(first), "the first run to start", proc=first)
    t0 = time.monotonic()
    rc, text, _ = run_driver(write_config(tmp_path / "b.json", store, graph, lock_timeout_seconds=2), "train")
    assert rc == 2, text
    line = next(x for x in text.splitlines() if x.startswith("error: "))
    assert f"graph 'g' in store {store} is locked by pid {first.pid}" in line and "gave up after waiting 2 s" in line
    assert time.monotonic() - t0 < 600
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()


def test_two_trainings_never_share_a_checkpoint_directory(graph, tmp_path):
    """Training alone (as a deployment's flow run starts it, without the graph's lock) holds the
    checkpoint directory's lock."""
    store = tmp_path / "store"
    cfg_path = write_config(tmp_path / "cfg.json", store, graph, lock_timeout_seconds=1)
    rc, text, result = run_driver(cfg_path, "layout")
    assert rc == 0, text
    from storage.store import NodeDataRef, PartitionRef
    from tasks.config import load_config
    from tasks.train.steps import checkpoints_for
    from tests.helpers import train as train_cluster_gcn

    cfg = load_config(None, None, base=json.loads(cfg_path.read_text()))
    s = Store(store)
    part = PartitionRef(str(s.partition_dir("g", result["partition"])), result["partition"], 40)
    nd = NodeDataRef(str(s.node_data_dir("g", result["node_data"])), result["node_data"], part)
    ckpt = Path(checkpoints_for(nd, cfg.train, s).location)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from storage.locks import checkpoint_lock\n"
         "with checkpoint_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)", str(ckpt)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        from tasks.errors import InputError

        with pytest.raises(InputError, match=re.escape(f"checkpoint directory {ckpt} is locked by pid {holder.pid}")):
            train_cluster_gcn(nd, cfg)
        assert not (ckpt / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train_cluster_gcn(nd, cfg).epochs_run == EPOCHS  # the kernel dropped the dead holder's lock


# -- item 7: damage after publishing ----------------------------------------------------------
def test_damage_is_found_reported_and_rebuilt(graph, reference, tmp_path, capsys):
    from flows.cli import main

    store = tmp_path / "store"
    cfg = write_config(tmp_path / "cfg.json", store, graph)
    rc, text, result = run_driver(cfg, "layout")
    assert rc == 0, text
    s = Store(store)
    part = s.partition_dir("g", result["partition"])
    snap = s.snapshot_dir("g", result["snapshot"])
    sums = read_manifest(part)["checksums"]
    assert sums["indices.npy"]["size"] == (part / "indices.npy").stat().st_size
    assert main(["verify", "--store", str(store), "--name", "g"]) == 0
    assert capsys.readouterr().out.count(" ok ") == 4

    # a flipped byte in an array: same size, so only the full check sees it
    with open(part / "indices.npy", "r+b") as f:
        f.seek(-5, os.SEEK_END)
        b = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    assert damage(part) is None
    assert verify_directory(part)[0] == "damaged"
    # a truncated Parquet file: the size check on every read sees it
    edges = snap / "edges.parquet"
    with open(edges, "r+b") as f:
        f.truncate(edges.stat().st_size // 2)
    assert "edges.parquet has" in damage(snap)

    assert main(["verify", "--store", str(store), "--name", "g"]) == 1
    out = capsys.readouterr().out
    assert "indices.npy checksum" in out and "edges.parquet has" in out and "2 damaged" in out
    assert "snapshots (current)" in out

    # the next run treats the truncated snapshot as missing and rebuilds it (with its reason logged)
    rc, text, again = run_driver(cfg, "layout")
    assert rc == 0, text
    assert f"snapshot {snap} is damaged or incomplete (edges.parquet has" in text and "rebuilding it" in text
    assert again["snapshot"] == result["snapshot"] and verify_directory(snap)[0] == "ok"
    # the flipped byte: `verify --repair` discards it, the next run rebuilds the same partition
    assert main(["verify", "--store", str(store), "--name", "g", "--repair"]) == 1
    assert "removed: the next run rebuilds it" in capsys.readouterr().out
    rc, text, again = run_driver(cfg, "layout")
    assert rc == 0, text
    assert again["partition"] == reference["partition"] and verify_directory(part)[0] == "ok"
    assert main(["verify", "--store", str(store), "--name", "g"]) == 0
    assert not leftovers(store)


# -- item 8: what a killed run leaves behind ---------------------------------------------------
def test_stale_lock_and_temporary_dirs_are_cleaned_only_when_no_live_run_holds_the_lock(tmp_path):
    from storage.locks import LockBusy

    s = Store(tmp_path / "store")
    gdir = s.graph_dir("g")
    stale = [gdir / "partitions" / f".abc.tmp-{uuid.uuid4().hex[:12]}", gdir / f".CURRENT.json.tmp-{uuid.uuid4().hex[:12]}",
             gdir / "checkpoints" / "k" / f".last.pt.tmp-{uuid.uuid4().hex[:12]}"]
    stale[0].mkdir(parents=True)
    (stale[0] / "x.npy").write_bytes(b"half")
    for p in stale[1:]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    keep = gdir / "partitions" / "abc"
    keep.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from storage.store import Store\n"
         "with Store(sys.argv[1]).lock('g'):\n    print('held', flush=True); time.sleep(600)", str(s.root)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert not any(p.exists() for p in stale), "the next run did not remove a dead run's leftovers"
    assert keep.is_dir()
    # now plant leftovers as if the live holder were writing them
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p == stale[0]:
            p.mkdir()
        else:
            p.write_bytes(b"half")
    with pytest.raises(LockBusy, match=f"locked by pid {holder.pid}"):
        with s.lock("g", timeout=1):
            pass
    assert all(p.exists() for p in stale), "a live run's temporary files were removed"
    holder.send_signal(signal.SIGKILL)  # the run dies: its lock goes with it (no stale lock)
    holder.wait()
    assert json.loads((gdir / ".lock").read_text())["pid"] == holder.pid  # the file stays, the lock does not
    with s.lock("g", timeout=5):
        assert not any(p.exists() for p in stale)
        assert keep.is_dir()
