"""Faults of the servers graphpipe talks to (issue 9, items 3 and 4): the MLflow tracking server
down at the start of a run or in the middle of training, the Prefect API down during a run.
The slow tests start real servers on 127.0.0.1 and stop them in ``finally``."""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from deployments.stack import LocalStack, free_port
from tasks.track import tracking as track
from tasks.config import DataConfig, PipelineConfig, TrackConfig
from tasks.errors import InputError, ServiceUnavailable

REPO = Path(__file__).resolve().parents[1]


def _scenarios():
    spec = importlib.util.spec_from_file_location("_faults_services", REPO / "benchmarks" / "_faults_services.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tracking_server_down_is_one_clear_line_without_credentials():
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable) as err:
        track.check_reachable(f"http://alice:s3cret@127.0.0.1:{port}", attempts=3, delay=0.2)
    msg = str(err.value)
    assert isinstance(err.value, InputError)  # printed as one `error:` line, exit status 2, never retried
    assert "\n" not in msg and f"127.0.0.1:{port}" in msg and "3 tries" in msg
    assert "s3cret" not in msg and "alice" not in msg
    assert time.monotonic() - t0 >= 0.4  # it did wait between the tries


def test_local_tracking_store_needs_no_server(tmp_path):
    track.check_reachable(f"sqlite:///{tmp_path / 'mlflow.db'}")  # no exception, no network


def test_redact_keeps_everything_but_the_credentials():
    assert track.redact("https://u:p@mlflow.example.com:8443/x?y=1") == "https://***@mlflow.example.com:8443/x?y=1"
    assert track.redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def _history(uri: str, run_id: str, key: str) -> list[dict]:
    q = urllib.parse.urlencode({"run_id": run_id, "metric_key": key})
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/metrics/get-history?{q}", timeout=30) as r:
        return json.loads(r.read()).get("metrics", [])


@pytest.mark.slow
def test_metrics_are_buffered_while_mlflow_is_down_and_sent_once(tmp_path):
    stack = LocalStack(tmp_path / "mlflow", prefect_port=0, mlflow_port=free_port())
    try:
        stack.start_servers(("mlflow",))
        cfg = PipelineConfig(store=str(tmp_path / "store"), data=DataConfig(name="g"),
                             track=TrackConfig(tracking_uri=stack.mlflow_uri, experiment="buffer"))
        track.check_reachable(stack.mlflow_uri)
        run = track.start_run(cfg, {})
        sender = track.MetricSender(run, request_timeout=5)
        values = {e: {"loss": 1.0 / e, "val_acc": 0.5 + e / 100} for e in range(1, 7)}
        sender.add(1, values[1])
        deadline = time.monotonic() + 60
        while sender.pending and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sender.pending == 0

        stack.stop_process("mlflow-server")  # SIGKILL: the server is gone
        t0 = time.monotonic()
        for e in range(2, 5):
            sender.add(e, values[e])
        assert time.monotonic() - t0 < 5  # training is not held up by the dead server
        time.sleep(3)  # at least one failed try
        assert sender.pending == 6 and sender.outages == 1

        stack.start_servers(("mlflow",))  # same database
        for e in range(5, 7):
            sender.add(e, values[e])
        assert sender.close(timeout=120) == 0

        for key in ("loss", "val_acc"):
            history = _history(stack.mlflow_uri, run.run_id, key)
            steps = sorted(m["step"] for m in history)
            assert steps == [1, 2, 3, 4, 5, 6], (key, history)  # each epoch once
            assert {m["step"]: m["value"] for m in history} == pytest.approx({e: v[key] for e, v in values.items()})

        # a batch sent twice (its answer lost) is the same rows again: still one value per step
        again = track.MetricSender(run)
        again._pending.extend(_as_metrics(stack.mlflow_uri, run.run_id, "loss"))
        again._wake.set()
        assert again.close(timeout=60) == 0
        assert sorted(m["step"] for m in _history(stack.mlflow_uri, run.run_id, "loss")) == [1, 2, 3, 4, 5, 6]
    finally:
        stack.stop()


def _as_metrics(uri: str, run_id: str, key: str):
    from mlflow.entities import Metric

    return [Metric(m["key"], m["value"], int(m["timestamp"]), int(m["step"])) for m in _history(uri, run_id, key)]


@pytest.mark.slow
def test_pipeline_stops_before_ingest_when_mlflow_is_down(tmp_path):
    """``graphpipe run`` with the tracking server down: exit 2, one error line, nothing ingested."""
    result = _scenarios().mlflow_down_at_start(tmp_path, smoke=True)
    assert result["ok"], result


@pytest.mark.slow
def test_run_survives_a_prefect_api_restart(tmp_path):
    """A real `prefect server` killed during training and started again 15 s later."""
    result = _scenarios().prefect_api_down(tmp_path, smoke=True)
    assert result["ok"], result
