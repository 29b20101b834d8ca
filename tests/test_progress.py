"""Progress messages: one logger (``graphpipe.progress``), one switch, one precedence rule
(the command line's ``--progress`` > the config's ``progress`` > off)."""

from __future__ import annotations

import logging

import pytest

from flows.cli import build_config, parser
from flows.stages import show_progress
from storage.store import Store
from tests.test_partition import TWO_TRIANGLES, make_config, make_snapshot
from tasks.partition.partition import partition_graph

PROGRESS = logging.getLogger("graphpipe.progress")


@pytest.fixture(autouse=True)
def _restore_level():
    level = PROGRESS.level
    yield
    PROGRESS.setLevel(level)


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


def test_stages_log_progress_on_one_logger_that_the_switch_shows_or_hides(tmp_path, caplog):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    show_progress(False)
    assert not PROGRESS.isEnabledFor(logging.INFO)
    caplog.set_level(logging.INFO, logger="tasks")  # the stages' own messages are not progress
    partition_graph(snap, config.partition, Store(config.store))
    assert "METIS" not in caplog.text

    show_progress(True)
    assert PROGRESS.isEnabledFor(logging.INFO)
    other = make_config(tmp_path, num_parts=3)
    partition_graph(snap, other.partition, Store(other.store))
    records = [r for r in caplog.records if r.name == "graphpipe.progress"]
    assert any("METIS running" in r.getMessage() for r in records)
    assert any("METIS done in" in r.getMessage() for r in records)
