"""graphpipe's local stack: a Prefect server, an MLflow tracking server, and a worker on each of the
`cpu` and `gpu` work pools, all on 127.0.0.1, with their state under one directory.

    python deployments/stack.py up        # start everything, create the pools, deploy prefect.yaml
    python deployments/stack.py status    # ports, pids, UIs
    python deployments/stack.py down      # stop everything (workers first)

`up` prints the environment to use the stack from a shell (PREFECT_API_URL, MLFLOW_TRACKING_URI).
The end-to-end test drives the same class.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AUTOMATIONS = REPO / "deployments" / "automations.yaml"
HEARTBEAT_SECONDS = 30
ZOMBIE_AFTER_SECONDS = 90  # ``within`` of the automation in automations.yaml
CLIENT_MAX_RETRIES = 7
# A dead worker's flow run is marked Crashed ZOMBIE_AFTER_SECONDS after its last heartbeat (at most
# HEARTBEAT_SECONDS before the death; the automation is evaluated every 5 s), and the nightly run
# waiting for it notices within one poll (5 s): README's bound, with a margin for the server's work.
DEAD_WORKER_BOUND_SECONDS = 120


FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Wait until ``url`` answers 200; fail early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process for {url} exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@dataclass
class LocalStack:
    root: Path
    prefect_port: int = 4200
    mlflow_port: int = 5000
    pids: dict[str, int] = field(default_factory=dict)
    # where the MLflow server keeps artifacts: a local folder (default <root>/mlartifacts) or a URI
    # such as s3://bucket/mlflow (the server gets the AWS_* environment: credentials, AWS_ENDPOINT_URL)
    artifacts_destination: str | None = None

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    def env(self) -> dict[str, str]:
        """The environment of every process of the stack, and of a shell using it."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_HOME": str(self.root / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{self.root / 'prefect.db'}",
            "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,storage",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "GRAPHPIPE_HOME": str(REPO),
            # flow runs send a heartbeat every 30 s (Prefect's minimum); the automation in
            # automations.yaml marks a run Crashed after 90 s without one (its worker died)
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": os.environ.get("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_SECONDS)),
            # a request to the Prefect API is retried 7 times (2, 4, ... 128 s apart): a flow run
            # rides out an API restart or an outage of about 4 minutes (Prefect's default, 5: 1 minute)
            "PREFECT_CLIENT_MAX_RETRIES": os.environ.get("PREFECT_CLIENT_MAX_RETRIES", str(CLIENT_MAX_RETRIES)),
            **self._s3_env(),
        }

    def _s3_env(self) -> dict[str, str]:
        """MLflow's S3 artifact store reads its endpoint from ``MLFLOW_S3_ENDPOINT_URL``: set it
        from ``AWS_ENDPOINT_URL`` (an S3-compatible server) when only that one is given."""
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and not os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
            return {"MLFLOW_S3_ENDPOINT_URL": endpoint}
        return {}

    # -- processes ------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str], cwd: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                args, cwd=cwd or self.root, env={**self.env(), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.pids[name] = proc.pid
        self._save()
        return proc

    def _prefect(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "prefect"), *args], cwd=REPO, env=self.env(), capture_output=True,
                              text=True, check=check, timeout=300, stdin=subprocess.DEVNULL)

    def run_deployment(self, name: str, **params: Any) -> str:
        """Start a flow run of deployment ``name`` (``prefect deployment run``, each parameter
        JSON-encoded as ``--param``) and return its id."""
        args = [a for k, v in params.items() for a in ("--param", f"{k}={json.dumps(v)}")]
        out = self._prefect("deployment", "run", name, *args)
        found = re.search(r"UUID: ([0-9a-f-]{36})", out.stdout)
        if not found:
            raise RuntimeError(f"prefect deployment run {name}: no flow run id in its output:\n{out.stdout}{out.stderr}")
        return found.group(1)

    def wait_flow_run(self, flow_run_id: str, timeout: float = 600, poll: float = 2.0) -> dict[str, Any]:
        """The flow run (as Prefect's API returns it) once its state is final (completed, failed,
        crashed, cancelled), or as it is after ``timeout`` seconds: check ``state_type``."""
        url = f"{self.prefect_api}/flow_runs/{flow_run_id}"
        deadline = time.monotonic() + timeout
        while True:
            with urllib.request.urlopen(url, timeout=30) as r:
                run = json.loads(r.read())
            if run["state_type"] in FINAL_STATES or time.monotonic() >= deadline:
                return run
            time.sleep(poll)

    def start_servers(self, which: tuple[str, ...] = ("prefect", "mlflow")) -> None:
        """Start the servers (both by default; one to restart it after :meth:`stop_process`) and
        wait until they answer. Their databases persist in ``root``."""
        self.root.mkdir(parents=True, exist_ok=True)
        started = []
        if "prefect" in which:
            started.append((f"{self.prefect_api}/health", "prefect-server", self._spawn(
                "prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.prefect_port)])))
        if "mlflow" in which:
            started.append((f"{self.mlflow_uri}/health", "mlflow-server", self._spawn("mlflow-server", [
                str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", self.artifacts_destination or str(self.root / "mlartifacts"),
            ])))
        for url, name, proc in started:
            wait_http(url, 180, proc, self.root / f"{name}.log")

    def stop_process(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30) -> None:
        """Stop one process of the stack with its whole process group (``SIGKILL``: as a crash)."""
        pid = self.pids.pop(name)
        _signal_group(pid, sig)
        if not _wait_gone(pid, timeout):
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
        self._save()

    def create_pools(self, pools: tuple[str, ...] = ("cpu", "gpu")) -> None:
        for pool in pools:
            out = self._prefect("work-pool", "create", pool, "--type", "process", check=False)
            if out.returncode != 0 and "already exists" not in out.stdout + out.stderr:
                raise RuntimeError(f"could not create work pool {pool}: {out.stdout}{out.stderr}")

    def deploy(self) -> str:
        out = self._prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", check=False)
        if out.returncode != 0:
            raise RuntimeError(f"prefect deploy failed:\n{out.stdout}\n{out.stderr}")
        return out.stdout

    def create_automations(self) -> list[str]:
        """Create the automations of ``automations.yaml`` that the server does not have yet (by
        name); the names created."""
        import yaml

        wanted = yaml.safe_load(AUTOMATIONS.read_text())["automations"]
        req = urllib.request.Request(f"{self.prefect_api}/automations/filter", b"{}", {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            have = {a["name"] for a in json.loads(r.read())}
        missing = [a for a in wanted if a["name"] not in have]
        if missing:
            out = self._prefect("automation", "create", "--from-json", json.dumps(missing), check=False)
            if out.returncode != 0:
                raise RuntimeError(f"could not create automations: {out.stdout}{out.stderr}")
        return [a["name"] for a in missing]

    def start_workers(self, pools: tuple[str, ...] = ("cpu", "gpu")) -> None:
        """One process worker per pool, each in its own directory with its own cache of a remote
        store's outputs (``worker-<pool>/cache``, ``$GRAPHPIPE_CACHE_DIR``), as on separate machines."""
        for pool in pools:
            cwd = self.root / f"worker-{pool}"
            cwd.mkdir(parents=True, exist_ok=True)
            self._spawn(f"worker-{pool}", [str(BIN / "prefect"), "worker", "start", "--pool", pool,
                                           "--name", f"{pool}-worker", "--type", "process"], cwd=cwd,
                        env={"GRAPHPIPE_CACHE_DIR": str(cwd / "cache")})

    def up(self) -> None:
        self.start_servers()
        self.create_pools()
        self.deploy()
        self.create_automations()
        self.start_workers()

    def stop(self, timeout: float = 30) -> None:
        """Workers first (SIGINT: a worker ignores SIGTERM for a while), then the servers."""
        order = sorted(self.pids, key=lambda n: not n.startswith("worker"))
        for name in order:
            pid = self.pids[name]
            sig = signal.SIGINT if name.startswith("worker") else signal.SIGTERM
            _signal_group(pid, sig)
            if not _wait_gone(pid, timeout):
                _signal_group(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
            del self.pids[name]
            self._save()

    # -- state ----------------------------------------------------------------------------
    def _save(self) -> None:
        state = {"prefect_port": self.prefect_port, "mlflow_port": self.mlflow_port, "pids": self.pids,
                 "artifacts_destination": self.artifacts_destination}
        (self.root / "stack.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, root: Path) -> LocalStack:
        state = json.loads((root / "stack.json").read_text())
        return cls(root, state["prefect_port"], state["mlflow_port"], state["pids"],
                   state.get("artifacts_destination"))


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants (a worker's flow-run processes start their own
    sessions, so the worker's process group alone would miss them); the pids killed."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:  # not our child: poll for existence
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["up", "down", "status"])
    p.add_argument("--dir", default=str(REPO / ".stack"), help="state, logs and databases (default: .stack)")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--artifacts-destination", metavar="URI",
                   help="where the MLflow server stores artifacts (default: DIR/mlartifacts), e.g. "
                        "s3://bucket/mlflow, the bucket of an object-storage store; the AWS_* environment "
                        "(credentials, AWS_ENDPOINT_URL for MinIO and other S3-compatible servers) is passed on")
    args = p.parse_args(argv)
    root = Path(args.dir).resolve()
    if args.command == "up":
        stack = LocalStack(root, args.prefect_port, args.mlflow_port,
                           artifacts_destination=args.artifacts_destination)
        try:
            stack.up()
        except BaseException:
            stack.stop()
            raise
        print(f"Prefect UI: http://127.0.0.1:{stack.prefect_port}   MLflow UI: {stack.mlflow_uri}")
        print("Use the stack from this shell with:")
        print(f"  export PREFECT_API_URL={stack.prefect_api} MLFLOW_TRACKING_URI={stack.mlflow_uri}")
        print("  prefect deployment run 'graph-pipeline/nightly' --watch")
        print(f"Logs in {root}; stop with: python deployments/stack.py down")
        return 0
    if not (root / "stack.json").exists():
        print(f"no stack in {root}", file=sys.stderr)
        return 1
    stack = LocalStack.load(root)
    if args.command == "down":
        stack.stop()
        print("stopped")
    else:
        print(json.dumps({"prefect": stack.prefect_api, "mlflow": stack.mlflow_uri, "pids": stack.pids}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
