"""Drift metrics between two scorings, computed exactly on hand-made tables."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from tasks.score.drift import class_distribution, compute_drift, drift_markdown, js_divergence


def table(ids, preds):
    return pa.table({"node_id": pa.array(ids), "prediction": pa.array(preds, pa.int32())})


def test_drift_counts_by_user_node_id():
    # before: a->0 b->1 c->1 d->2 ; now: b->1 c->0 d->2 e->0 f->0 (a removed; e, f new; c changed)
    before = table(["a", "b", "c", "d"], [0, 1, 1, 2])
    now = table(["d", "c", "b", "e", "f"], [2, 0, 1, 0, 0])  # another row order: matched by id
    d = compute_drift(now, before, edges_now=110, edges_before=100)
    assert (d.nodes, d.common_nodes, d.new_nodes, d.removed_nodes) == (5, 3, 2, 1)
    assert d.changed == 1 and d.changed_share == pytest.approx(1 / 3)
    assert d.edges_added == 10
    assert d.class_share == pytest.approx({0: 3 / 5, 1: 1 / 5, 2: 1 / 5})
    assert d.previous_class_share == pytest.approx({0: 1 / 4, 1: 2 / 4, 2: 1 / 4})
    # JS by hand: p=(.6,.2,.2), q=(.25,.5,.25), m=(.425,.35,.225)
    p, q, m = np.array([.6, .2, .2]), np.array([.25, .5, .25]), np.array([.425, .35, .225])
    want = 0.5 * sum(p * np.log2(p / m)) + 0.5 * sum(q * np.log2(q / m))
    assert d.js_divergence == pytest.approx(want)
    assert d.metrics()["drift_changed_share"] == pytest.approx(1 / 3)


def test_no_change_is_zero_drift_and_integer_ids():
    t = table([10, 20, 30], [1, 1, 0])
    d = compute_drift(t, t, edges_now=5, edges_before=5)
    assert (d.changed, d.changed_share, d.js_divergence, d.new_nodes, d.removed_nodes, d.edges_added) == (0, 0.0, 0.0, 0, 0, 0)


def test_disjoint_distributions_have_divergence_one():
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert class_distribution(np.array([2, 2, 0]), 4).tolist() == [1 / 3, 0, 2 / 3, 0]


def test_id_type_change_is_an_error():
    with pytest.raises(ValueError, match="node ids changed type"):
        compute_drift(table([1], [0]), table(["1"], [0]), edges_now=0, edges_before=0)


def test_markdown_marks_the_alert():
    before, now = table([1, 2], [0, 0]), table([1, 2], [1, 0])
    d = compute_drift(now, before, edges_now=1, edges_before=1)
    md = drift_markdown(d, threshold=0.25, label_names=["cat", "dog"])
    assert "ALERT" in md and "50.00%" in md and "| dog |" in md
    assert "ALERT" not in drift_markdown(d, threshold=0.6)
    assert not math.isnan(d.js_divergence)
