"""End to end with real servers: `prefect server start`, a `cpu` and a `gpu` process worker each in
its own directory, and `mlflow server`, all on 127.0.0.1; deployments from deployments/prefect.yaml;
runs started with `prefect deployment run`. Every process is stopped, also when a check fails."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import psutil
import pytest

from deployments.stack import DEAD_WORKER_BOUND_SECONDS, FINAL_STATES, LocalStack, free_port, kill_tree
from tests.conftest import dataset

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = LocalStack(tmp_path_factory.mktemp("stack"), free_port(), free_port())
    try:
        s.start_servers()
        s.create_pools()
        s.deploy()
        s.create_automations()  # zombie detection, as `stack.py up` does
        s.start_workers()
        yield s
    finally:
        s.stop()
        assert not s.pids


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict) -> dict | list:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _run_nightly(stack: LocalStack, store, epochs: int) -> str:
    d = dataset("cora")
    config = {"store": str(store), "data": {"name": "cora", "edges": [str(d / "edges.csv")], "nodes": str(d / "nodes.parquet")},
              "track": {"experiment": "e2e"}}
    return stack.run_deployment("graph-pipeline/nightly", config=config, overrides={"train.epochs": epochs})


def _wait(stack: LocalStack, flow_run_id: str, timeout: float = 600) -> dict:
    run = stack.wait_flow_run(flow_run_id, timeout)
    if run["state_type"] not in FINAL_STATES:
        raise TimeoutError(f"flow run {flow_run_id} not finished after {timeout} s")
    return run


def _task_states(stack: LocalStack, flow_run_id: str) -> dict[str, str]:
    runs = _post(f"{stack.prefect_api}/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    return {r["name"].rsplit("-", 1)[0]: r["state_name"] for r in runs}  # "layout-node-data-5db" -> "layout-node-data"


def _train_runs(stack: LocalStack) -> list[dict]:
    dep = _get(f"{stack.prefect_api}/deployments/name/graph-train-stage/gpu")
    return _post(f"{stack.prefect_api}/flow_runs/filter",
                 {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}, "sort": "START_TIME_ASC"})


def _mlflow_run(stack: LocalStack, prefect_flow_run_id: str) -> dict:
    exp = _get(f"{stack.mlflow_uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=e2e")["experiment"]
    runs = _post(f"{stack.mlflow_uri}/api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp["experiment_id"]],
        "filter": f"tags.`prefect.flow_run_id` = '{prefect_flow_run_id}'"})["runs"]
    assert len(runs) == 1
    return runs[0]


def _champion(stack: LocalStack) -> dict:
    q = urllib.parse.urlencode({"name": "graphpipe-cora", "alias": "champion"})
    return _get(f"{stack.mlflow_uri}/api/2.0/mlflow/registered-models/alias?{q}")["model_version"]


def _metric(run: dict, key: str) -> float:
    return next(m["value"] for m in run["data"]["metrics"] if m["key"] == key)


def _tag(run: dict, key: str) -> str:
    return next(t["value"] for t in run["data"]["tags"] if t["key"] == key)


def test_nightly_deployment_end_to_end(stack, tmp_path):
    store = tmp_path / "store"

    dep = _get(f"{stack.prefect_api}/deployments/name/graph-pipeline/nightly")
    assert dep["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert dep["work_pool_name"] == "cpu"

    first = _wait(stack, _run_nightly(stack, store, epochs=10))
    assert first["state_type"] == "COMPLETED", first["state"]
    assert first["work_pool_name"] == "cpu"
    trains = _train_runs(stack)
    assert len(trains) == 1 and trains[0]["work_pool_name"] == "gpu" and trains[0]["state_type"] == "COMPLETED"

    run1 = _mlflow_run(stack, first["id"])
    assert run1["info"]["status"] == "FINISHED"
    assert _metric(run1, "test_acc") > 0.5  # 10 epochs; chance is about 0.3
    assert _tag(run1, "graphpipe.train_flow_run_id") == trains[0]["id"]
    v1 = _champion(stack)
    assert v1["run_id"] == run1["info"]["run_id"]
    states1 = _task_states(stack, first["id"])
    assert states1["ingest"] == "Completed" and states1["partition"] == "Completed"

    # unchanged inputs: snapshot and partition are cache hits, training runs again
    second = _wait(stack, _run_nightly(stack, store, epochs=10))
    assert second["state_type"] == "COMPLETED", second["state"]
    states2 = _task_states(stack, second["id"])
    assert states2["ingest"] == "Cached" and states2["partition"] == "Cached" and states2["normalize"] == "Cached"
    run2 = _mlflow_run(stack, second["id"])
    assert run2["info"]["status"] == "FINISHED"
    champion = _champion(stack)
    decision = _tag(run2, "graphpipe.champion_decision")
    # same data and seed: equal validation accuracy, so the new version takes the alias
    assert decision == "promoted" and champion["run_id"] == run2["info"]["run_id"]
    # the champion's final evaluation (not the run's latest per-epoch val_acc, its last epoch's)
    assert float(_tag(run2, "graphpipe.champion_previous_val_acc")) == pytest.approx(
        float(_tag(run1, "graphpipe.champion_candidate_val_acc")), abs=1e-4)
    artifacts = _post(f"{stack.prefect_api}/artifacts/filter", {"artifacts": {"key": {"any_": ["graphpipe-cora"]}}})
    assert any(run2["info"]["run_id"] in (a.get("data") or "") for a in artifacts)

    # training killed mid-run: the pipeline fails with the reason, the champion stays, a re-run resumes
    third_id = _run_nightly(stack, store, epochs=80)
    _wait_for_epochs(stack, third_id, 3)
    _training_process(stack).terminate()  # what a node shutting down does first
    third = _wait(stack, third_id)
    assert third["state_type"] in {"FAILED", "CRASHED"}
    assert "training flow run" in third["state"]["message"], third["state"]
    run3 = _mlflow_run(stack, third_id)
    assert run3["info"]["status"] == "FAILED"
    assert _champion(stack)["version"] == champion["version"]

    fourth = _wait(stack, _run_nightly(stack, store, epochs=80), timeout=900)
    assert fourth["state_type"] == "COMPLETED", fourth["state"]
    run4 = _mlflow_run(stack, fourth["id"])
    assert int(_tag(run4, "graphpipe.resumed_from_epoch")) >= 3


def test_gpu_worker_killed_fails_the_nightly_run_within_the_bound(stack, tmp_path):
    """SIGKILL of the whole gpu worker tree (no process left to report): the flow run's heartbeats
    stop, the server's automation marks it Crashed, and the nightly run fails with that reason."""
    try:
        champion = _champion(stack)["version"]
    except OSError:  # run alone: no champion yet
        champion = None
    run_id = _run_nightly(stack, tmp_path / "store", epochs=400)
    _wait_for_epochs(stack, run_id, 3)
    try:
        assert len(kill_tree(stack.pids.pop("worker-gpu"))) >= 2  # the worker and its flow-run process
        t0 = time.monotonic()
        final = _wait(stack, run_id, timeout=600)
        elapsed = time.monotonic() - t0
    finally:
        stack.start_workers(("gpu",))
    assert final["state_type"] in {"FAILED", "CRASHED"}, final["state"]
    assert "training flow run" in final["state"]["message"] and "heartbeat" in final["state"]["message"], final["state"]
    # README's bound (2 minutes), with room for a loaded machine delaying the server's checks
    assert elapsed <= DEAD_WORKER_BOUND_SECONDS + 60, elapsed
    assert _train_runs(stack)[-1]["state_type"] == "CRASHED"
    assert _mlflow_run(stack, run_id)["info"]["status"] == "FAILED"
    if champion is not None:
        assert _champion(stack)["version"] == champion


def _training_process(stack: LocalStack) -> psutil.Process:
    """The flow-run process the gpu worker started for training (it is training now)."""
    worker = psutil.Process(stack.pids["worker-gpu"])
    runs = [p for p in worker.children(recursive=True) if "prefect.engine" in " ".join(p.cmdline())]
    assert len(runs) == 1, runs
    return runs[0]


def _wait_for_epochs(stack: LocalStack, pipeline_run_id: str, epochs: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            run = _mlflow_run(stack, pipeline_run_id)
            q = urllib.parse.urlencode({"run_id": run["info"]["run_id"], "metric_key": "loss"})
            history = _get(f"{stack.mlflow_uri}/api/2.0/mlflow/metrics/get-history?{q}").get("metrics", [])
            if len(history) >= epochs:
                return
        except (AssertionError, KeyError, StopIteration, OSError):  # OSError: the experiment is not made yet
            pass
        time.sleep(1)
    raise TimeoutError(f"training did not reach {epochs} epochs")
