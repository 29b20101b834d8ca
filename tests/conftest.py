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
