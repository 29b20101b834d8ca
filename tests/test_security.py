"""Trust nothing that is read back: no unpickling of checkpoints (the store's or the champion's from
the MLflow artifact store), no name or config value that writes outside the store, no credential in
MLflow params, tags or printed links, servers on 127.0.0.1, and no traceback for a user's mistake."""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from storage.store import Store
from tasks.config import PipelineConfig, load_config, redact_uri
from tasks.errors import InputError, UnsafeFileError
from tasks.train.model import MODEL_FILE, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def plant(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file whose unpickling would create ``marker``; checked to be live."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"spec": {"kind": "gcn"}, "state_dict": Payload(marker), "history": []}, buf)
    path.write_bytes(buf.getvalue())
    torch.load(path, weights_only=False)  # the payload works: an unsafe load runs it ...
    assert marker.exists()
    marker.unlink()  # ... so its absence later means graphpipe never unpickled it
    return path


# -- checkpoints --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from tests.helpers import prepared_generated

    cfg, prepared = prepared_generated(tmp_path_factory.mktemp("sec"),
                                       ["train.epochs=2", "train.hidden=8", "partition.num_parts=4"],
                                       num_nodes=400, num_classes=3, num_features=8, seed=2)
    return cfg, prepared.node_data


def test_load_checkpoint_refuses_a_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    path = plant(tmp_path / "model.pt", marker)
    with pytest.raises(UnsafeFileError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: refused to load this checkpoint") and "\n" not in message
    assert "it would call exec" in message and "safe_globals" not in message
    assert not marker.exists()


def test_plain_checkpoint_makes_numpy_values_weights_only_loadable():
    from collections import OrderedDict

    import numpy as np

    from tasks.train.model import plain_checkpoint

    obj = {"best_val": np.float64(0.75), "epoch": np.int64(3), "history": [{"loss": np.float32(0.5)}],
           "state_dict": OrderedDict(w=torch.ones(2)), "betas": (0.9, np.float64(0.999)), "y": np.arange(3)}
    buf = io.BytesIO()
    torch.save(obj, buf)
    with pytest.raises(Exception, match="Weights only load failed"):  # numpy scalars are pickled objects
        torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    buf = io.BytesIO()
    torch.save(plain_checkpoint(obj), buf)
    back = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert back["best_val"] == 0.75 and type(back["best_val"]) is float and back["epoch"] == 3
    assert back["history"][0]["loss"] == 0.5 and back["betas"] == (0.9, 0.999)
    assert isinstance(back["state_dict"], OrderedDict) and torch.equal(back["y"], torch.arange(3))
    with pytest.raises(TypeError, match="cannot store a object"):
        plain_checkpoint({"x": object()})


def test_planted_store_checkpoint_is_refused_on_resume(prepared, tmp_path):
    from storage.checkpoints import LAST
    from tasks.train.steps import checkpoints_for
    from tests.helpers import train as train_cluster_gcn

    cfg, nd = prepared
    cfg = load_config(None, [], base=cfg.model_dump(mode="json") | {"store": str(tmp_path / "store")})
    marker = tmp_path / "pwned"
    ckpt = checkpoints_for(nd, cfg.train, Store(cfg.store)).local_dir()
    plant(ckpt / LAST, marker)
    with pytest.raises(UnsafeFileError, match="refused to load this checkpoint"):
        train_cluster_gcn(nd, cfg)
    assert not marker.exists()


def test_checkpoints_written_by_training_load_weights_only(prepared, tmp_path):
    """What training saves is plain data: it loads back with weights_only=True, and resumes."""
    from storage.checkpoints import LAST, MODEL
    from tests.helpers import train as train_cluster_gcn

    cfg, nd = prepared
    cfg = load_config(None, [], base=cfg.model_dump(mode="json") | {"store": str(tmp_path / "store")})
    result = train_cluster_gcn(nd, cfg)
    for name in (MODEL, LAST):
        saved = torch.load(Path(result.checkpoint_dir) / name, weights_only=True)
        assert saved["spec"]["kind"] == "gcn" and len(saved["history"]) == 2
    assert train_cluster_gcn(nd, cfg).epochs_run == 2  # a complete run is reused from its checkpoint


def test_planted_champion_checkpoint_is_refused(prepared, tmp_path, monkeypatch):
    """The champion's weights come from the MLflow artifact store: a tampered model.pt there is
    downloaded, then refused before training starts, and its code never runs."""
    from mlflow.tracking import MlflowClient

    from tasks.track import tracking as track
    from tests.helpers import train as train_cluster_gcn

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg, nd = prepared
    cfg = load_config(None, ["train.warm_start=true"],
                      base=cfg.model_dump(mode="json") | {"store": str(tmp_path / "store")})
    uri = track.tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    marker = tmp_path / "pwned"
    planted = plant(tmp_path / "upload" / MODEL_FILE, marker)
    client.log_artifact(run.info.run_id, str(planted), track.WEIGHTS_DIR)
    name = track.model_name(cfg)
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, track.CHAMPION, version.version)

    path, run_id = track.champion_weights(cfg)
    assert run_id == run.info.run_id and Path(path).read_bytes() == planted.read_bytes()
    with pytest.raises(UnsafeFileError, match="refused to load this checkpoint"):
        train_cluster_gcn(nd, cfg, init_from=path)
    assert not marker.exists()


def test_registry_run_id_cannot_name_a_path(tmp_path, monkeypatch):
    from tasks.track import tracking as track

    fake = SimpleNamespace(get_model_version_by_alias=lambda name, alias: SimpleNamespace(run_id="../../../../tmp/x"))
    monkeypatch.setattr(track, "_client", lambda uri: fake)
    cfg = PipelineConfig(store=str(tmp_path / "store"))
    with pytest.raises(InputError, match="expected a run id"):
        track.champion_weights(cfg)
    assert not (tmp_path / "store").exists()


def test_no_unsafe_torch_load_anywhere():
    """Every torch.load in the code base loads weights only."""
    calls = []
    for folder in ("tasks", "flows", "storage", "deployments", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            for m in re.finditer(r"torch\.load\(([^()]*(\([^()]*\))?)*\)", path.read_text()):
                calls.append((path.name, m.group(0)))
    assert calls, "torch.load is used in tasks/train/model.py"
    unsafe = [c for c in calls if "weights_only=True" not in c[1]]
    assert not unsafe, unsafe


# -- names and paths ----------------------------------------------------------------------------

BAD_NAMES = ["../x", "..", ".", "/etc", "a/b", "a\\b", ".hidden", "", "a\x00b", "a\nb", "x" * 300]


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[:20])
def test_graph_name_cannot_leave_the_store(tmp_path, name):
    with pytest.raises(InputError) as info:
        load_config(None, None, base={"store": str(tmp_path), "data": {"name": name}})
    assert "data.name" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not a plain folder name"):
        Store(tmp_path).graph_dir(name)


@pytest.mark.parametrize("name", ["../../models/x", "/abs", "a\x00b", "m" * 300])
def test_registered_model_name_is_a_plain_name(name):
    with pytest.raises(InputError, match="track.registered_model"):
        load_config(None, {"track.registered_model": name})


def test_cli_name_outside_the_store_is_refused(tmp_path, capsys):
    from flows.cli import main

    assert main(["ingest", "--edges", str(tmp_path / "e.csv"), "--store", str(tmp_path / "s"), "--name", "../../x"]) == 2
    err = capsys.readouterr().err
    assert "data.name: graph name must be a plain folder name" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists() and not (tmp_path.parent / "x").exists()


def test_store_uri_with_credentials_is_refused_without_echoing_them():
    with pytest.raises(InputError) as info:
        load_config(None, ["store=s3://AKIAEXAMPLE:wJalrXUtnFEMIsecret@bucket/graphs"])
    message = str(info.value)
    assert "credentials in the URI are not accepted" in message
    assert "wJalrXUtnFEMIsecret" not in message and "AKIAEXAMPLE" not in message
    assert load_config(None, ["store=file:///data/graph%20store"]).store == "/data/graph store"
    with pytest.raises(InputError, match="NUL"):
        load_config(None, {"store": "/tmp/a\x00b"})


# -- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "shown"), [
    ("s3://KEY:SECRET@bucket/x", "s3://***@bucket/x"),
    ("https://user:pass@mlflow.example.com:5000", "https://***@mlflow.example.com:5000"),
    ("postgresql://u:p@db/mlflow and http://a:b@c/d", "postgresql://***@db/mlflow and http://***@c/d"),
    ("https://acct.blob.core.windows.net/c?sv=1&sig=abc%2F&se=2", "https://acct.blob.core.windows.net/c?sv=1&sig=***&se=2"),
    ("https://h/x?X-Amz-Signature=deadbeef&token=t0k", "https://h/x?X-Amz-Signature=***&token=***"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("/data/graphs/edges.csv", "/data/graphs/edges.csv"),
])
def test_redact_uri(raw, shown):
    assert redact_uri(raw) == shown


def test_no_secret_reaches_mlflow_params_tags_or_links(tmp_path, monkeypatch):
    """Credentials in URIs of the config (and a secret in the environment) are never logged."""
    from mlflow.tracking import MlflowClient

    from tasks.track import tracking as track

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envSECRETvalue")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    secret = "hunter2SECRET"
    cfg = load_config(None, None, base={
        "store": str(tmp_path / "store"),
        "data": {"name": "g", "edges": [f"s3://AKIA:{secret}@bucket/e.csv"], "nodes": f"https://u:{secret}@h/n.parquet"},
    })
    run = track.start_run(cfg, {"graphpipe.source": f"https://u:{secret}@h/x"})
    track.log_tags(run, {"graphpipe.note": f"read from s3://AKIA:{secret}@bucket"})
    track.end_run(run, "FAILED", reason=f"ConnectionError: https://u:{secret}@h/api refused")
    data = MlflowClient(tracking_uri=run.tracking_uri).get_run(run.run_id).data
    logged = " ".join([*data.params.values(), *data.tags.values()])
    assert data.params["data.nodes"] == "https://***@h/n.parquet"
    assert "s3://***@bucket/e.csv" in data.params["data.edges"]
    assert secret not in logged and "envSECRETvalue" not in logged
    assert secret not in str(track.safe_config_dump(cfg))
    remote = track.RunRef(f"https://user:{secret}@mlflow.example.com", "1", "abc")
    assert secret not in track.ui_command(remote) and secret not in track.run_link(remote)
    assert "https://***@mlflow.example.com/#/experiments/1/runs/abc" in track.ui_command(remote)
    params = {p.key: p.value for p in track.config_params(
        load_config(None, {"track.tracking_uri": f"https://user:{secret}@mlflow.example.com"}))}
    assert params["track.tracking_uri"] == "https://***@mlflow.example.com"


# -- servers ------------------------------------------------------------------------------------


def test_stack_servers_listen_on_localhost(tmp_path, monkeypatch):
    from deployments import stack

    spawned = {}

    def spawn(self, name, args, cwd=None):
        spawned[name] = args
        return SimpleNamespace(pid=0, poll=lambda: None)

    monkeypatch.setattr(stack.LocalStack, "_spawn", spawn)
    monkeypatch.setattr(stack, "wait_http", lambda *a, **k: None)
    s = stack.LocalStack(tmp_path / "stack", 4300, 5300)
    s.start_servers()
    assert set(spawned) == {"prefect-server", "mlflow-server"}
    for args in spawned.values():
        assert args[args.index("--host") + 1] == "127.0.0.1"
    assert s.prefect_api.startswith("http://127.0.0.1:") and s.mlflow_uri.startswith("http://127.0.0.1:")
    assert "0.0.0.0" not in (REPO / "deployments" / "stack.py").read_text()


# -- no traceback for a user's mistake, full traceback for a crash -----------------------------


def test_prefect_log_filter_drops_only_user_error_tracebacks():
    from flows import quiet_errors

    quiet_errors.install()
    quiet_errors.install()  # idempotent
    logger = logging.getLogger("prefect.flow_runs")
    assert sum(isinstance(f, quiet_errors.DropUserErrorTraceback) for f in logger.filters) == 1
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    handler = Keep()
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for exc in (InputError("e.csv: row 2: bad"), RuntimeError("disk on fire")):
            try:
                raise exc
            except Exception:
                logger.exception("Encountered exception during execution: %r", exc)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    user, crash = records
    assert "InputError('e.csv: row 2: bad')" in user and "Traceback" not in user
    assert "Traceback" in crash and "RuntimeError: disk on fire" in crash
