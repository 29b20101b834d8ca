"""The features-only baseline reused on a nightly run whose graph barely grew (issue 12): trained,
then reused on a +1% incremental snapshot; retrained when the labeled nodes grew past the limit,
when its settings change, after ``baseline.max_reuses`` reuses, and when the snapshot does not
extend the stored one's (a full ingest)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from storage.baseline import read_baseline_record
from storage.store import Store
from tasks.config import load_config
from tasks.evaluate.baseline import BaselineResult, run_baseline
from tasks.prepare import prepare_graph

OLD, NEW = 1000, 1010  # day 1 and day 2 (+1%) nodes
QUICK = ["baseline.epochs=15", "baseline.patience=5", "baseline.hidden=16", "partition.num_parts=4"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A generated graph split like a growing export: day-1 edges and node rows, then a day-2 edge
    file (every edge touching a new node) and all node rows; also all edges in one file."""
    from tasks.synthetic.generate import GeneratorConfig, generate_graph

    out = tmp_path_factory.mktemp("grow")
    gen = generate_graph(GeneratorConfig(num_nodes=NEW, avg_degree=8, num_classes=4, num_features=8,
                                         edge_format="parquet", seed=0), out / "full")
    edges = pq.read_table(gen.edges_path)
    src, dst = edges.column(0).to_numpy(), edges.column(1).to_numpy()
    old = (src < OLD) & (dst < OLD)
    (out / "edges").mkdir()
    pq.write_table(edges.filter(old), out / "edges" / "day-1.parquet")
    pq.write_table(edges.filter(np.logical_not(old)), out / "edges" / "day-2.parquet")
    pq.write_table(edges, out / "all-edges.parquet")
    nodes = pq.read_table(gen.nodes_path)
    pq.write_table(nodes.filter(pc.less(nodes.column("node_id"), OLD)), out / "nodes-day1.parquet")
    pq.write_table(nodes, out / "nodes-day2.parquet")
    return out


def _night(inputs: Path, store: Path, day: int, *overrides: str, edges: str | None = None):
    """Prepare day ``day``'s graph in ``store`` and run the baseline: ``(result, snapshot, config)``."""
    edge_input = edges or str(inputs / "edges" / "day-1.parquet" if day == 1 else inputs / "edges")
    cfg = load_config(None, [*QUICK, *overrides], base={
        "store": str(store), "data": {"name": "g", "edges": [edge_input], "nodes": str(inputs / f"nodes-day{day}.parquet")}})
    prepared = prepare_graph(cfg)
    result = run_baseline(prepared.node_data, prepared.snapshot, cfg.baseline, 4, Store(cfg.store))
    return result, prepared.snapshot, cfg


def test_trained_then_reused_on_a_graph_one_percent_larger(inputs, tmp_path, caplog):
    first, day1, _ = _night(inputs, tmp_path, 1)
    assert first.mode == "trained" and first.trained_on == day1.fingerprint
    assert first.reason == "no stored baseline of this graph"
    with caplog.at_level(logging.INFO, logger="tasks.evaluate.baseline"):
        second, day2, _ = _night(inputs, tmp_path, 2)
    assert day2.fingerprint != day1.fingerprint
    assert second.mode == "reused" and second.trained_on == day1.fingerprint
    assert second.metrics() == first.metrics() and second.model == first.model
    assert f"reused from snapshot {day1.fingerprint}" in caplog.text
    record = read_baseline_record(Store(str(tmp_path)), "g")
    assert record["reuses"] == 1 and record["last_snapshot"] == day2.fingerprint
    assert record["trained_on"] == day1.fingerprint and record["labeled"] > 0


def test_retrained_when_the_labeled_nodes_grew_past_the_limit(inputs, tmp_path):
    _night(inputs, tmp_path, 1, "baseline.reuse_max_growth=0.001")
    second, day2, _ = _night(inputs, tmp_path, 2, "baseline.reuse_max_growth=0.001")
    assert second.mode == "trained" and second.trained_on == day2.fingerprint
    assert "labeled nodes grew by 1.0%" in second.reason and "reuse_max_growth" in second.reason


def test_retrained_when_the_baseline_settings_change(inputs, tmp_path):
    _night(inputs, tmp_path, 1)
    second, _, _ = _night(inputs, tmp_path, 2, "baseline.lr=0.02")
    assert second.mode == "trained" and "settings changed" in second.reason and "lr" in second.reason


def test_retrained_after_max_reuses_in_a_row(inputs, tmp_path):
    _night(inputs, tmp_path, 1, "baseline.max_reuses=1")
    reused, day2, _ = _night(inputs, tmp_path, 2, "baseline.max_reuses=1")
    assert reused.mode == "reused"
    again, same, _ = _night(inputs, tmp_path, 2, "baseline.max_reuses=1")  # the same snapshot once more
    assert same.fingerprint == day2.fingerprint
    assert again.mode == "trained" and "baseline.max_reuses=1" in again.reason
    assert read_baseline_record(Store(str(tmp_path)), "g")["reuses"] == 0  # the count starts again


def test_retrained_when_the_snapshot_does_not_extend_the_stored_one(inputs, tmp_path):
    _night(inputs, tmp_path, 1)
    # one file with all the edges: day 1's edge file is gone from the inputs, so a full ingest
    full, day2, _ = _night(inputs, tmp_path, 2, edges=str(inputs / "all-edges.parquet"))
    assert full.mode == "trained" and full.trained_on == day2.fingerprint
    assert "does not extend" in full.reason and "full ingest" in full.reason


def test_reuse_off_always_trains(inputs, tmp_path):
    _night(inputs, tmp_path, 1)
    second, _, _ = _night(inputs, tmp_path, 2, "baseline.reuse=false")
    assert second.mode == "trained" and second.reason == "baseline.reuse=false"


def test_markdown_says_where_a_reused_baseline_comes_from():
    from flows.quality import markdown
    from tasks.evaluate.health import Health

    base = BaselineResult("mlp", 0.9, 0.7, 0.69, 12, 30, 1.0, mode="reused", trained_on="abc123",
                          reason="the snapshot extends abc123")
    text = markdown(base, Health("ok", [], []), {"val_acc": 0.8, "test_acc": 0.79})
    assert "reused from snapshot abc123" in text and "| features only (mlp) | 0.7000 | 0.6900 |" in text
    trained = markdown(BaselineResult("mlp", 0.9, 0.7, 0.69, 12, 30, 1.0), Health("ok", [], []), {})
    assert "reused" not in trained
