"""Progress: one logger (``graphpipe.progress``), one switch, one precedence rule (the command line's
``--progress`` > the config's ``progress`` > off); Prefect progress artifacts in flow runs."""

from __future__ import annotations

import io
import logging

import pytest

from flows import progress as flow_progress
from flows.cli import build_config, parser
from flows.stages import show_progress
from storage.store import Store
from tasks import progress
from tasks.partition.partition import partition_graph
from tests.test_partition import TWO_TRIANGLES, make_config, make_snapshot


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
    assert flow_progress.flush(60)  # the artifacts are sent by a background thread
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["progress-partition-metis"])))
    assert arts, "no progress artifact"
    assert arts[-1].type == "progress"
    assert float(arts[-1].data) == 100.0


def test_a_blocked_prefect_api_never_holds_up_the_stage():
    """The stage that logs progress goes on while an artifact update hangs (a Prefect API down:
    its client retries for minutes); updates logged meanwhile are coalesced to the latest."""
    import threading

    release = threading.Event()
    sent: list[tuple[str, float]] = []

    class Blocked(flow_progress.PrefectProgressHandler):
        @staticmethod
        def _run_id():
            return "run-1"

        def _update(self, key, step, percent, message):
            release.wait()
            sent.append((step, percent))

    handler = Blocked(min_interval=0.0)
    logger = logging.getLogger("test.progress.blocked")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def stage():
        for done in range(0, 101, 10):
            logger.info("x", extra={"graphpipe_progress": ("train epochs", done, 100)})

    t = threading.Thread(target=stage)
    t.start()
    t.join(60)
    try:
        assert not t.is_alive(), "logging progress blocked the stage while the API hung"
        assert not handler.flush(0.2)  # the first update is still hanging
    finally:
        release.set()
    assert handler.flush(60)
    assert sent[-1] == ("train epochs", 100.0)
    assert len(sent) <= 3  # the first, maybe one in between, the latest: not all eleven


@pytest.mark.parametrize(("in_file", "argv", "expected"), [
    (None, [], False),
    ("progress: true\n", [], True),
    ("progress: false\n", ["--progress"], True),
    (None, ["--set", "progress=false", "--progress"], True),
    (None, ["--progress", "--set", "progress=false"], True),
    ("progress: true\n", ["--set", "progress=false"], False),
])
def test_the_flag_beats_the_config_which_beats_off(tmp_path, in_file, argv, expected):
    extra = []
    if in_file is not None:
        (tmp_path / "c.yaml").write_text(in_file)
        extra = ["--config", str(tmp_path / "c.yaml")]
    args = parser().parse_args(["partition", "--store", str(tmp_path / "s"), "--name", "g", *extra, *argv])
    assert build_config(args).progress is expected


def test_stages_log_progress_on_one_logger_that_the_switch_shows_or_hides(tmp_path):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    shown = Collect()  # what reaches the parent loggers: the terminal and the Prefect run's logs
    logging.getLogger("graphpipe").addHandler(shown)
    try:
        show_progress(False)
        assert not progress.enabled()
        partition_graph(snap, config.partition, Store(config.store))
        assert not [r for r in shown.records if "METIS" in r.getMessage()]

        show_progress(True)
        assert progress.enabled()
        other = make_config(tmp_path, num_parts=3)
        partition_graph(snap, other.partition, Store(other.store))
        messages = [r.getMessage() for r in shown.records if r.name == "graphpipe.progress"]
        assert any("METIS running" in m for m in messages)
        assert any("METIS done in" in m for m in messages)
    finally:
        logging.getLogger("graphpipe").removeHandler(shown)
