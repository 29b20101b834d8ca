import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# library loggers also log outside flow runs (stages called directly)
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def dataset(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.fail(f"test data missing: {path} (the project expects ../shared/data beside it)")
    return path


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API and database for the tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def _mlflow_uris_restored():
    """Tests that load a model with ``mlflow.set_tracking_uri`` (which also sets
    ``$MLFLOW_TRACKING_URI``) must not send later tests' runs to their store."""
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    import sys

    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(before["MLFLOW_REGISTRY_URI"])
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto's standalone server) on 127.0.0.1 for the session.

    Yields the environment a client needs (``AWS_ENDPOINT_URL``, test credentials, region); the
    tests set it with ``monkeypatch`` (see ``s3_env``). Skips when moto is not installed (it is
    in the ``test`` extra).
    """
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("moto.server", reason="moto[server] (the test extra) is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start on {url}: {log.read_text()[-2000:]}")
            time.sleep(0.3)
    try:
        yield {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """The S3 server's environment set for one test, a fresh bucket ``s3://<bucket>`` created on
    it, and a private cache directory: yields the bucket's name."""
    import uuid

    import pyarrow.fs as pafs

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("GRAPHPIPE_CACHE_DIR", str(tmp_path / "cache"))
    bucket = f"gp-{uuid.uuid4().hex[:12]}"
    fs = pafs.S3FileSystem(endpoint_override=s3_server["AWS_ENDPOINT_URL"].split("://", 1)[1], scheme="http",
                           access_key="test", secret_key="test", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir(bucket)
    yield bucket
