"""Start-up and load: the embedded Prefect server's start-up limit, one clear line when it cannot
start, input checks before Prefect starts, no torch/PyG/MLflow for `graphpipe ingest`, the CLI under
full CPU load, and `prefect deploy` without GRAPHPIPE_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.startup import DEFAULT_SECONDS, ENV_VAR, PREFECT_ENV_VAR, StartupLimit, startup_limit
from tasks.config import DataConfig
from tasks.errors import InputError
from tasks.ingest.snapshot import check_inputs

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torch_geometric", "mlflow", "matplotlib")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a subprocess: its own Prefect home, no API URL, no limits set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "GRAPHPIPE_")) and k not in ("MLFLOW_TRACKING_URI",)}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(extra)
    return env


def _cli(args: list[str], env: dict[str, str], *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-m", "flows.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def _tiny_graph(tmp_path: Path) -> tuple[Path, Path]:
    edges, nodes = tmp_path / "edges.csv", tmp_path / "nodes.csv"
    edges.write_text("src,dst\n1,2\n2,3\n")
    nodes.write_text("node_id,label\n1,0\n2,1\n3,0\n")
    return edges, nodes


# -- the start-up limit -------------------------------------------------------------------------


def test_limit_order_flag_then_graphpipe_env_then_default(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    from prefect.settings import get_current_settings

    if "startup_timeout_seconds" not in get_current_settings().server.ephemeral.model_fields_set:
        assert startup_limit() == StartupLimit(DEFAULT_SECONDS, "graphpipe's default")
    monkeypatch.setenv(ENV_VAR, "900")
    assert startup_limit().seconds == 900 and startup_limit().source == ENV_VAR
    assert startup_limit(42).seconds == 42
    monkeypatch.setenv(ENV_VAR, "soon")
    with pytest.raises(InputError, match=ENV_VAR):
        startup_limit()


@pytest.mark.parametrize("where", ["env", "profile"])
def test_prefects_own_setting_is_honoured(tmp_path, where):
    env = _env(tmp_path)
    if where == "env":
        env[PREFECT_ENV_VAR] = "45"
    else:
        home = Path(env["PREFECT_HOME"])
        home.mkdir()
        (home / "profiles.toml").write_text(
            f'active = "ephemeral"\n\n[profiles.ephemeral]\nPREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n{PREFECT_ENV_VAR} = "45"\n')
    code = ("from flows.startup import startup_limit, apply_startup_limit\n"
            "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as P\n"
            "limit = apply_startup_limit(); print(limit.seconds, limit.source, P.value())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["45", PREFECT_ENV_VAR, "45"]
    # without the user's setting, flows called from Python wait graphpipe's default
    plain = _env(tmp_path / "plain")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=plain, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == out.stdout.split()[-1] == str(DEFAULT_SECONDS)


def test_server_that_cannot_start_is_one_error_line_without_traceback(tmp_path):
    edges, nodes = _tiny_graph(tmp_path)
    home = tmp_path / "not-a-dir"
    home.write_text("a file where Prefect's home (and its database) should be\n")
    proc = _cli(["ingest", "--edges", str(edges), "--nodes", str(nodes), "--store", str(tmp_path / "store")],
                _env(tmp_path, PREFECT_HOME=str(home)))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 3, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert "embedded Prefect API server" in errors[0] and "PREFECT_API_URL" in errors[0]
    assert "Traceback" not in output
    assert not (tmp_path / "store" / "graphs").exists()


# -- input checks before Prefect starts ---------------------------------------------------------


def test_bad_input_is_rejected_before_the_server_starts(tmp_path):
    """PREFECT_HOME is unusable, so a started server would exit 3: status 2 shows it never started."""
    edges, nodes = _tiny_graph(tmp_path)
    edges.write_text("from,to\n1,2\n")
    home = tmp_path / "not-a-dir"
    home.write_text("")
    proc = _cli(["ingest", "--edges", str(edges), "--nodes", str(nodes), "--store", str(tmp_path / "store"),
                 "--set", "data.src_column=source"], _env(tmp_path, PREFECT_HOME=str(home)))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and str(edges) in errors[0] and "'source'" in errors[0], proc.stderr


def _data(tmp_path: Path, **kwargs) -> DataConfig:
    edges, nodes = _tiny_graph(tmp_path)
    return DataConfig(**{"edges": [str(edges)], "nodes": str(nodes), **kwargs})


def test_check_inputs_accepts_every_format(tmp_path):
    check_inputs(_data(tmp_path))
    pq.write_table(pa.table({"a": [1, 2], "b": [2, 3]}), tmp_path / "e.parquet")
    (tmp_path / "e.txt").write_text("# SNAP style\n\n1\t2\n2 3\n")
    pq.write_table(pa.table({"id": [1, 2, 3], "f": [[0.1, 0.2]] * 3}), tmp_path / "n.parquet")
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.float32))
    check_inputs(DataConfig(edges=[str(tmp_path / "e.parquet"), str(tmp_path / "e.txt")],
                            nodes=str(tmp_path / "n.parquet")))
    check_inputs(DataConfig(edges=[str(tmp_path / "e.txt")], features=str(tmp_path / "x.npy")))


@pytest.mark.parametrize("case, expected", [
    ("missing_edges", "edge file (data.edges) not found"),
    ("edge_column", "edge column 'source' (data.src_column) not found"),
    ("one_column", "expected at least 2 columns"),
    ("empty_edges", "no edge rows"),
    ("bad_parquet", "not a readable Parquet file"),
    ("bad_gzip", "cannot read the edge file"),
    ("id_column", "id column 'key' (data.id_column) not found"),
    ("no_id_column", "no node id column"),
    ("label_column", "label column 'class' (data.label_column) not found"),
    ("split_column", "split column 'fold' (data.split_column) not found"),
    ("feature_columns", "feature column(s) ['f9'] (data.feature_columns) not found"),
    ("npy_1d", "expected a 2-D numeric array"),
    ("feature_kind", "a feature file must be .npy"),
    ("table_kind", "a node table must be .parquet, .csv or .tsv"),
])
def test_check_inputs_rejects_without_reading_rows(tmp_path, case, expected):
    data = _data(tmp_path)
    edges, nodes = Path(data.edges[0]), Path(data.nodes)
    changes: dict = {}
    if case == "missing_edges":
        changes["edges"] = [str(tmp_path / "absent.csv")]
    elif case == "edge_column":
        changes["src_column"] = "source"
    elif case == "one_column":
        edges.write_text("src\n1\n")
    elif case == "empty_edges":
        edges.write_text("\n\n")
    elif case == "bad_parquet":
        (tmp_path / "e.parquet").write_text("src,dst\n1,2\n")
        changes["edges"] = [str(tmp_path / "e.parquet")]
    elif case == "bad_gzip":
        (tmp_path / "e.csv.gz").write_text("src,dst\n1,2\n")
        changes["edges"] = [str(tmp_path / "e.csv.gz")]
    elif case == "id_column":
        changes["id_column"] = "key"
    elif case == "no_id_column":
        nodes.write_text("name,label\n1,0\n")
    elif case == "label_column":
        changes["label_column"] = "class"
    elif case == "split_column":
        changes["split_column"] = "fold"
    elif case == "feature_columns":
        changes["feature_columns"] = ["f9"]
    elif case == "npy_1d":
        np.save(tmp_path / "x.npy", np.zeros(3, np.float32))
        changes["features"] = str(tmp_path / "x.npy")
    elif case == "feature_kind":
        (tmp_path / "x.csv").write_text("1\n")
        changes["features"] = str(tmp_path / "x.csv")
    elif case == "table_kind":
        (tmp_path / "n.json").write_text("{}")
        changes["nodes"] = str(tmp_path / "n.json")
    with pytest.raises(InputError) as err:
        check_inputs(data.model_copy(update=changes))
    assert expected in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_check_inputs_unreadable_file(tmp_path):
    data = _data(tmp_path)
    Path(data.nodes).chmod(0)
    with pytest.raises(InputError, match="cannot read the node table"):
        check_inputs(data)


def test_ingest_modules_import_no_torch_pyg_mlflow(tmp_path):
    code = ("import sys, flows.cli, flows.pipeline, tasks.ingest.snapshot, tasks.partition.partition, tasks.normalize.features\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(tmp_path), capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- under load ---------------------------------------------------------------------------------

_BUSY = "while True:\n    pass\n"


@pytest.mark.slow
def test_cli_succeeds_while_every_core_is_busy(tmp_path):
    """ingest + train on a generated graph, cold Prefect home, os.cpu_count()+1 busy loops alongside.

    No time limit anywhere: what matters is that the commands succeed, however slowly."""
    env = _env(tmp_path)
    gen = tmp_path / "gen"
    store = tmp_path / "store"
    busy = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range((os.cpu_count() or 1) + 1)]
    try:
        made = _cli(["generate", "--out", str(gen), "--nodes", "300", "--classes", "3", "--features", "8",
                     "--seed", "1"], env)
        assert made.returncode == 0, made.stderr
        edges = next(p for p in gen.iterdir() if p.name.startswith("edges"))
        ingest = _cli(["ingest", "--edges", str(edges), "--nodes", str(gen / "nodes.parquet"),
                       "--store", str(store), "--name", "busy"], env, "-X", "importtime")
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr[-5000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in ingest.stderr.splitlines() if line.startswith("import time:")}
        assert not imported & set(HEAVY), imported & set(HEAVY)
        train = _cli(["train", "--store", str(store), "--name", "busy", "--set", "train.epochs=2",
                      "--set", "train.hidden=8"], env)
        assert train.returncode == 0, train.stdout + train.stderr[-5000:]
        assert "test  accuracy" in train.stdout
        assert "Traceback" not in train.stdout + train.stderr
    finally:
        for p in busy:
            p.kill()
        for p in busy:
            p.wait()


# -- deploying ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_deploy_without_graphpipe_home_runs_flows_from_the_repository(prefect_harness, tmp_path):
    """`prefect deploy` as Prefect's docs say (repository root, no GRAPHPIPE_HOME): the recorded pull
    step sets the working directory to the repository, where the entrypoints are."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    env = _env(tmp_path, PREFECT_API_URL=api)
    prefect = str(Path(sys.executable).with_name("prefect"))
    for pool in ("cpu", "gpu"):
        made = subprocess.run([prefect, "work-pool", "create", pool, "--type", "process"], cwd=REPO, env=env,
                              capture_output=True, text=True)
        assert made.returncode == 0 or "already exists" in made.stdout + made.stderr, made.stdout + made.stderr
    out = subprocess.run([prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("graph-pipeline/nightly", "graph-train-stage/gpu"):
        with urllib.request.urlopen(f"{api}/deployments/name/{name}", timeout=60) as r:
            deployment = json.loads(r.read())
        steps = deployment["pull_steps"]
        assert steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}], steps
        entry = deployment["entrypoint"].split(":")[0]
        assert (REPO / entry).is_file()


def test_embedded_server_ends_with_a_killed_cli(tmp_path):
    """SIGKILL of the command (what the OOM killer does) also ends the server it started."""
    import psutil

    edges, nodes = _tiny_graph(tmp_path)
    cli = subprocess.Popen([sys.executable, "-m", "flows.cli", "ingest", "--edges", str(edges), "--nodes", str(nodes),
                            "--store", str(tmp_path / "store")], cwd=REPO, env=_env(tmp_path),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(cli.pid)
        server = None
        while server is None and cli.poll() is None:
            server = next((c for c in parent.children() if "uvicorn" in " ".join(c.cmdline())), None)
            time.sleep(0.05)
        assert server is not None, "the command ended before its server was seen"
    finally:
        cli.kill()
        cli.wait()
    deadline = time.monotonic() + 600  # it gets SIGTERM at once (PR_SET_PDEATHSIG); the bound is a safety net
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(server)


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
