"""Fault scenarios of issue 9 that involve the servers (items 2, 3 and 4), for ``benchmarks/faults.py``.

``SCENARIOS`` is a list of callables ``(workdir: Path, smoke: bool) -> dict`` with the keys
``fault``, ``expected``, ``observed`` and ``ok``. Each starts its own real servers on 127.0.0.1
(free ports), runs the real pipeline in its own processes, injects the fault, and stops every
process it started in ``finally``. ``smoke`` shortens outages and training.

- ``gpu_worker_killed``: the local stack (Prefect server, MLflow server, `cpu` and `gpu` workers);
  the nightly deployment is started, and the whole `gpu` worker process tree is SIGKILLed during
  training. Expected: the nightly run ends Failed within the bound README states (heartbeats every
  30 s, Crashed after 90 s without one, so at most about 2 minutes), the MLflow run FAILED, no model
  version registered and the champion untouched; a later run resumes from the checkpoint.
- ``mlflow_down_at_start``: ``graphpipe run`` with the tracking URI pointing at a server that is
  not there. Expected: exit status 2, one ``error:`` line naming the server, no traceback, nothing
  ingested.
- ``mlflow_down_mid_training``: ``graphpipe run`` against a real ``mlflow server`` that is killed
  after a few epochs and started again (same database) a minute later (15 s in smoke). Expected:
  training goes on, the run finishes, every epoch's metrics reach MLflow once, with the values of
  the checkpoint's history.
- ``prefect_api_down``: ``graphpipe run`` against a real ``prefect server`` that is killed during
  training and started again (same database) after training ended. Expected: the run
  completes (Prefect's client retries for about 4 minutes with graphpipe's settings), its flow run
  is Completed in the restarted server, and the store's current snapshot is complete. The server
  stays down from epoch 3 until 10 s after the last epoch (at least 45 s; 15 s in smoke), so the
  training task's end and the next task's start happen while it is down.

Run one alone: ``python benchmarks/_faults_services.py [--smoke] [NAME ...]``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from deployments.stack import DEAD_WORKER_BOUND_SECONDS, LocalStack, free_port, kill_tree  # noqa: E402

DATA = REPO.parent / "shared" / "data"
DEAD_WORKER_BOUND_S = DEAD_WORKER_BOUND_SECONDS  # what README promises for a dead gpu worker


# -- small HTTP helpers ----------------------------------------------------------------------
def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict) -> Any:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _mlflow_runs(uri: str, experiment: str) -> list[dict]:
    try:
        exp = _get(f"{uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}")["experiment"]
    except (OSError, KeyError):
        return []
    return _post(f"{uri}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]}).get("runs", [])


def _history(uri: str, run_id: str, key: str) -> list[dict]:
    q = urllib.parse.urlencode({"run_id": run_id, "metric_key": key, "max_results": 25000})
    return _get(f"{uri}/api/2.0/mlflow/metrics/get-history?{q}").get("metrics", [])


def _tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)


def _wait_epochs(uri: str, experiment: str, epochs: int, proc: subprocess.Popen | None = None,
                 timeout: float = 900) -> dict:
    """The experiment's (only) run once it has ``epochs`` losses logged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"pipeline exited with {proc.returncode} before epoch {epochs}")
        try:
            runs = _mlflow_runs(uri, experiment)
            if runs and len(_history(uri, runs[0]["info"]["run_id"], "loss")) >= epochs:
                return runs[0]
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"training did not reach epoch {epochs} in {timeout:.0f} s")


def _cora_args(store: Path, epochs: int, experiment: str) -> list[str]:
    d = DATA / "cora"
    return ["run", "--edges", str(d / "edges.csv"), "--nodes", str(d / "nodes.parquet"), "--store", str(store),
            "--name", "cora", "--set", f"train.epochs={epochs}", "--set", f"track.experiment={experiment}"]


def _cli(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``graphpipe ARGS`` from this checkout, in its own process group."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def _base_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(workdir / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PYTHONPATH=str(REPO),
               # the embedded Prefect server must start on a busy machine (Prefect's default: 20 s)
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="600")
    return env


def _end(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """Stop a process group started here (SIGTERM, then SIGKILL)."""
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _result(fault: str, expected: str, observed: str, ok: bool, **details: Any) -> dict:
    return {"fault": fault, "expected": expected, "observed": observed, "ok": bool(ok), **details}


# -- item 2: SIGKILL of the gpu worker during training -----------------------------------------
def gpu_worker_killed(workdir: Path, smoke: bool) -> dict:
    fault = "2. SIGKILL of the gpu worker (whole process tree) during training"
    expected = (f"nightly run Failed within {DEAD_WORKER_BOUND_S} s with the reason; MLflow run FAILED; "
                "champion untouched; next run resumes from the checkpoint")
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir / "stack", free_port(), free_port())
    store = workdir / "store"
    d = DATA / "cora"
    config = {"store": str(store), "data": {"name": "cora", "edges": [str(d / "edges.csv")], "nodes": str(d / "nodes.parquet")},
              "track": {"experiment": "faults-gpu"}}

    def nightly(epochs: int) -> str:
        return stack.run_deployment("graph-pipeline/nightly", config=config, overrides={"train.epochs": epochs})

    def wait(run_id: str, timeout: float) -> dict:
        return stack.wait_flow_run(run_id, timeout)

    try:
        stack.up()
        epochs = 40  # the same on the re-run, so that it resumes the same checkpoint
        run_id = nightly(epochs=epochs)
        run = _wait_epochs(stack.mlflow_uri, "faults-gpu", 3)
        killed = kill_tree(stack.pids.pop("worker-gpu"))
        stack._save()
        t_kill = time.monotonic()
        final = wait(run_id, DEAD_WORKER_BOUND_S * 3)
        detect_s = time.monotonic() - t_kill
        msg = (final.get("state") or {}).get("message") or ""
        mlrun = _get(f"{stack.mlflow_uri}/api/2.0/mlflow/runs/get?run_id={run['info']['run_id']}")["run"]
        versions = _get(f"{stack.mlflow_uri}/api/2.0/mlflow/model-versions/search").get("model_versions", [])
        failed_ok = final["state_type"] in {"FAILED", "CRASHED"} and "heartbeat" in msg
        observed = (f"{len(killed)} processes killed; nightly {final['state_name']} after {detect_s:.0f} s "
                    f"(\"{msg[:160]}\"); MLflow run {mlrun['info']['status']}; {len(versions)} model versions")
        ok = failed_ok and detect_s <= DEAD_WORKER_BOUND_S and mlrun["info"]["status"] == "FAILED" and not versions
        resumed = None
        if not smoke:
            stack.start_workers(("gpu",))
            again = wait(nightly(epochs=epochs), 900)
            runs = [r for r in _mlflow_runs(stack.mlflow_uri, "faults-gpu") if r["info"]["status"] == "FINISHED"]
            resumed = int(_tag(runs[0], "graphpipe.resumed_from_epoch") or 0) if runs else None
            observed += f"; next run {again['state_name']}, resumed from epoch {resumed}"
            ok = ok and again["state_type"] == "COMPLETED" and (resumed or 0) >= 3
        return _result(fault, expected, observed, ok, detect_seconds=round(detect_s, 1), resumed_from_epoch=resumed,
                       message=msg)
    except Exception as e:
        return _result(fault, expected, f"scenario error: {type(e).__name__}: {e}", False)
    finally:
        stack.stop()


# -- item 3: MLflow down ---------------------------------------------------------------------
def mlflow_down_at_start(workdir: Path, smoke: bool) -> dict:
    fault = "3a. MLflow server down when the run starts"
    expected = "exit 2 with one error line naming the server, before ingest; no traceback; nothing published"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()  # nothing listens there
    env = _base_env(workdir)
    store = workdir / "store"
    log = workdir / "run.log"
    t0 = time.monotonic()
    proc = _cli([*_cora_args(store, 2, "faults"), "--set", f"track.tracking_uri=http://user:s3cret@127.0.0.1:{port}"], env, log)
    try:
        rc = proc.wait(900)
        secs = time.monotonic() - t0
        out = log.read_text(errors="replace")
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        published = (store / "graphs" / "cora" / "CURRENT.json").exists()
        ok = (rc == 2 and len(errors) == 1 and "MLflow tracking server" in errors[0] and "Traceback" not in out
              and not published and "s3cret" not in out)
        observed = f"exit {rc} after {secs:.0f} s; {errors[0] if errors else 'no error line'}; snapshot published: {published}"
        return _result(fault, expected, observed, ok, seconds=round(secs, 1))
    finally:
        _end(proc)


def mlflow_down_mid_training(workdir: Path, smoke: bool) -> dict:
    fault = "3b. MLflow server down for a minute during training"
    down_s = 15 if smoke else 60
    fault = fault if not smoke else f"3b. MLflow server down for {down_s} s during training"
    expected = "training goes on; run FINISHED; every epoch's metrics in MLflow once, equal to the checkpoint history"
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir / "mlflow", prefect_port=0, mlflow_port=free_port())
    env = {**_base_env(workdir), "MLFLOW_TRACKING_URI": stack.mlflow_uri}
    store = workdir / "store"
    epochs = 60 if smoke else 200
    proc = None
    try:
        stack.start_servers(("mlflow",))
        proc = _cli(_cora_args(store, epochs, "faults-mlflow"), env, workdir / "run.log")
        run = _wait_epochs(stack.mlflow_uri, "faults-mlflow", 3, proc)
        run_id = run["info"]["run_id"]
        stack.stop_process("mlflow-server")
        t_down = time.time()
        time.sleep(down_s)
        stack.start_servers(("mlflow",))
        t_up = time.time()
        rc = proc.wait(1800)
        run = _get(f"{stack.mlflow_uri}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
        history = _history(stack.mlflow_uri, run_id, "loss")
        steps = sorted(m["step"] for m in history)
        ckpt = _tag(run, "graphpipe.checkpoint")
        import torch

        saved = torch.load(Path(ckpt) / "model.pt", weights_only=True) if ckpt else {"history": []}
        want = {int(h["epoch"]): h["loss"] for h in saved["history"]}
        got = {m["step"]: m["value"] for m in history}
        same = bool(want) and all(abs(got.get(e, float("nan")) - v) < 1e-6 for e, v in want.items())
        during = sum(1 for m in history if t_down * 1000 <= m["timestamp"] <= t_up * 1000)
        ok = (rc == 0 and run["info"]["status"] == "FINISHED" and steps == sorted(set(steps))
              and steps == list(range(1, len(want) + 1)) and same and during > 0)
        observed = (f"exit {rc}; run {run['info']['status']}; {len(steps)} loss steps ({len(set(steps))} distinct), "
                    f"values equal to the checkpoint: {same}; {during} epochs trained while the server was down "
                    f"({t_up - t_down:.0f} s)")
        return _result(fault, expected, observed, ok, epochs_during_outage=during, down_seconds=round(t_up - t_down))
    except Exception as e:
        return _result(fault, expected, f"scenario error: {type(e).__name__}: {e}", False)
    finally:
        _end(proc)
        stack.stop()


# -- item 4: Prefect API down ----------------------------------------------------------------
def prefect_api_down(workdir: Path, smoke: bool) -> dict:
    down_s = 15 if smoke else 45
    fault = "4. Prefect API down during a run (from epoch 3 to 10 s after training)"
    expected = "the run completes (or fails clearly); flow run Completed after the restart; store consistent"
    workdir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(workdir / "stack", free_port(), free_port())
    store = workdir / "store"
    epochs = 20 if smoke else 60
    proc = None
    try:
        stack.start_servers()
        env = {**_base_env(workdir), "PREFECT_API_URL": stack.prefect_api, "MLFLOW_TRACKING_URI": stack.mlflow_uri}
        proc = _cli(_cora_args(store, epochs, "faults-prefect"), env, workdir / "run.log")
        run = _wait_epochs(stack.mlflow_uri, "faults-prefect", 3, proc)
        stack.stop_process("prefect-server")
        t_down = time.monotonic()
        # stay down until training has ended and 10 s more, so that the end of the training task
        # and the start of the next one (state changes the API must record) fall in the outage
        try:
            _wait_epochs(stack.mlflow_uri, "faults-prefect", epochs, proc, timeout=180)
        except (TimeoutError, RuntimeError):
            pass
        time.sleep(max(10.0, down_s - (time.monotonic() - t_down)))
        stack.start_servers(("prefect",))
        outage = time.monotonic() - t_down
        rc = proc.wait(1800)
        out = (workdir / "run.log").read_text(errors="replace")
        flow_run_id = _tag(_get(f"{stack.mlflow_uri}/api/2.0/mlflow/runs/get?run_id={run['info']['run_id']}")["run"],
                           "prefect.flow_run_id")
        state = _get(f"{stack.prefect_api}/flow_runs/{flow_run_id}")["state_name"] if flow_run_id else "unknown"
        mlrun = _get(f"{stack.mlflow_uri}/api/2.0/mlflow/runs/get?run_id={run['info']['run_id']}")["run"]
        from storage.store import Store

        consistent = Store(str(store)).current_snapshot("cora") is not None  # CURRENT.json -> a complete snapshot
        clear = rc == 0 or (rc != 0 and "error" in out.lower())
        ok = rc == 0 and state == "Completed" and mlrun["info"]["status"] == "FINISHED" and consistent
        observed = (f"exit {rc}; flow run {state} in the restarted server; MLflow run {mlrun['info']['status']}; "
                    f"API down {outage:.0f} s; current snapshot complete: {consistent}"
                    + ("" if rc == 0 else f"; failure reported clearly: {clear}"))
        return _result(fault, expected, observed, ok, outage_seconds=round(outage))
    except Exception as e:
        return _result(fault, expected, f"scenario error: {type(e).__name__}: {e}", False)
    finally:
        _end(proc)
        stack.stop()


SCENARIOS: list[Callable[[Path, bool], dict]] = [gpu_worker_killed, mlflow_down_at_start, mlflow_down_mid_training, prefect_api_down]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description="graphpipe's server fault scenarios (issue 9 items 2-4)")
    p.add_argument("--smoke", action="store_true", help="short outages and training")
    p.add_argument("names", nargs="*", help="scenario function names (default: all)")
    args = p.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.names or s.__name__ in args.names]
    failed = 0
    with tempfile.TemporaryDirectory(prefix="graphpipe-faults-") as tmp:
        for scenario in chosen:
            t0 = time.monotonic()
            r = scenario(Path(tmp) / scenario.__name__, args.smoke)
            failed += not r["ok"]
            print(f"{'ok  ' if r['ok'] else 'FAIL'} | {r['fault']} | {r['observed']} | {time.monotonic() - t0:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
