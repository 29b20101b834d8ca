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
