"""Progress reporting: one logger and one switch; Prefect progress artifacts in flow runs."""

from __future__ import annotations

import io
import logging

import pytest

from flows import progress as flow_progress
from tasks import progress


@pytest.fixture(autouse=True)
def _clean_progress_logger():
    logger = progress.log
    saved = (list(logger.handlers), logger.level, logger.propagate)
    logger.handlers.clear()
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_switch_controls_the_log_lines_not_the_handlers():
    own, parent = Collect(), Collect()
    progress.log.handlers[:] = [own]
    logging.getLogger("graphpipe").addHandler(parent)
    try:
        progress.enable(False)
        progress.report("ingest rows", 10, 40)
        assert [r.graphpipe_progress for r in own.records] == [("ingest rows", 10.0, 40.0)]
        assert parent.records == []  # not propagated: no log line
        progress.enable(True)
        assert progress.enabled()
        progress.report("ingest rows", 40, 40)
        assert [r.getMessage() for r in parent.records] == ["ingest rows: 40/40"]
    finally:
        logging.getLogger("graphpipe").removeHandler(parent)


def test_nothing_is_formatted_when_nobody_listens():
    progress.log.handlers.clear()
    progress.enable(False)
    assert not progress.enabled()
    assert not progress.log.isEnabledFor(logging.INFO)
    progress.report("x", 1, 2)  # no handler, no error


def test_ticker_rate_limits_but_always_reports_the_end():
    collect = Collect()
    progress.log.handlers[:] = [collect]
    progress.enable(False)
    t = progress.Ticker("train epochs", 5, seconds=3600)
    for i in range(1, 6):
        t.tick(i)
    assert [r.graphpipe_progress[1] for r in collect.records] == [1.0, 5.0]


def test_terminal_bar_only_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    assert flow_progress.wants_terminal_bar(Tty())
    assert not flow_progress.wants_terminal_bar(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not flow_progress.wants_terminal_bar(Tty())


def test_progress_artifact_in_a_flow_run(prefect_harness):
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    flow_progress.install(show_lines=False)

    @task
    def long_step():
        for done in range(0, 101, 25):
            progress.report("Partition METIS", done, 100)

    @flow
    def f():
        long_step()

    f()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["progress-partition-metis"])))
    assert arts, "no progress artifact"
    assert arts[-1].type == "progress"
    assert float(arts[-1].data) == 100.0
