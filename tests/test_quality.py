"""The features-only baseline and the failing-run check: unit tests on hand-made histories,
the baseline on generated and real graphs, and the check on real runs (Amazon Computers with
row normalization fails; Cora does not)."""

import numpy as np
import pytest
import torch

from storage.snapshot import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from tasks.evaluate.baseline import train_baseline
from tasks.config import BaselineConfig, load_config
from tasks.synthetic.generate import GeneratorConfig, generate_graph
from tasks.evaluate.health import chance_level, check_run_health
from tasks.ingest.snapshot import ingest_graph
from tasks.normalize.features import normalize_features
from tasks.partition.layout import layout_node_data
from tasks.partition.partition import partition_graph
from tests.conftest import dataset
from storage.store import Store


def _history(train, val):
    return [{"epoch": i + 1, "loss": 1.0, "train_acc": t, "val_acc": v} for i, (t, v) in enumerate(zip(train, val))]


# -- the check, on hand-made histories ----------------------------------------------------------

def test_learning_run_is_ok():
    h = check_run_health(_history([0.2, 0.6, 0.9], [0.2, 0.5, 0.8]), chance=0.1, val_acc=0.8, baseline_val_acc=0.6)
    assert h.status == "ok" and h.reasons == [] and h.tags() == {"graphpipe.health": "ok", "graphpipe.health_reason": "none"}


def test_training_accuracy_near_chance_is_flagged():
    h = check_run_health(_history([0.10, 0.12, 0.15], [0.10, 0.11, 0.13]), chance=0.1, val_acc=0.13,
                         settings={"normalize.method": "auto", "normalize.method_used": "row",
                                   "train.weight_decay": 5e-4, "train.epochs": 3})
    assert h.status == "warning"
    assert "near chance" in h.reason and "best 0.150" in h.reason
    assert any("normalize.method=standard" in s for s in h.suggestions)
    assert any("train.weight_decay=5e-05" in s for s in h.suggestions)
    assert any("train.epochs=6" in s for s in h.suggestions)  # ran all its epochs: more may help
    assert any("graphpipe tune" in s for s in h.suggestions)
    assert h.tags()["graphpipe.health"] == "warning"
    assert "WARNING" in h.message() and "Try:" in h.message()
    assert "What to try" in h.markdown()


def test_chance_is_the_majority_share_when_classes_are_unbalanced():
    y = np.array([0] * 8 + [1] * 2)
    split = np.full(10, SPLIT_TRAIN, dtype=np.int8)
    assert chance_level(y, split, 2) == pytest.approx(0.8)
    # 0.85 training accuracy on an 80% majority class is "near chance"
    assert check_run_health(_history([0.8, 0.85], [0.8, 0.8]), chance=0.8).status == "warning"
    assert check_run_health(_history([0.8, 0.95], [0.8, 0.9]), chance=0.8).status == "ok"
    # unlabeled and non-training nodes do not count; 1/classes is the floor
    y2 = np.array([0, 1, 2, 3, -1, 0, 0])
    split2 = np.array([SPLIT_TRAIN] * 5 + [SPLIT_VAL, SPLIT_TEST], dtype=np.int8)
    assert chance_level(y2, split2, 4) == pytest.approx(0.25)
    assert chance_level(y2, split2, 10) == pytest.approx(0.25)


def test_graph_model_far_below_features_only_baseline_is_flagged():
    hist = _history([0.5, 0.7, 0.8], [0.4, 0.45, 0.5])
    h = check_run_health(hist, chance=0.1, val_acc=0.5, baseline_val_acc=0.72,
                         settings={"normalize.method_used": "standard", "train.weight_decay": 0.0, "train.epochs": 100})
    assert h.status == "warning" and "below the features-only baseline's 0.720" in h.reason
    assert not any("normalize.method" in s for s in h.suggestions)  # already standard
    assert not any("weight_decay" in s for s in h.suggestions)  # already none
    assert not any("train.epochs" in s for s in h.suggestions)  # stopped before its 100 epochs
    # within the margin: ok
    assert check_run_health(hist, chance=0.1, val_acc=0.70, baseline_val_acc=0.72).status == "ok"
    # no baseline (disabled): only the chance rule
    assert check_run_health(hist, chance=0.1, val_acc=0.5).status == "ok"


def test_final_val_falls_back_to_the_history_and_nan_entries_are_ignored():
    hist = _history([float("nan"), 0.3], [float("nan"), 0.3]) + [{"epoch": 3, "loss": 1.0}]
    h = check_run_health(hist, chance=0.25, val_acc=float("nan"), baseline_val_acc=0.6)
    assert h.status == "warning" and len(h.reasons) == 2


# -- the baseline -------------------------------------------------------------------------------

def _node_data(tmp_path, signal: float, seed: int = 5):
    gen = generate_graph(GeneratorConfig(num_nodes=1200, num_classes=4, num_features=16, feature_signal=signal,
                                         seed=seed), tmp_path / "input")
    cfg = load_config(None, ["partition.num_parts=8"], base={
        "store": str(tmp_path / "store"), "data": {"name": "g", "edges": [str(gen.edges_path)], "nodes": str(gen.nodes_path)}})
    snap = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
    return layout_node_data(partition_graph(snap, cfg.partition, Store(cfg.store)), snap, normalize_features(snap, cfg.normalize, Store(cfg.store)), Store(cfg.store))


def test_baseline_learns_informative_features_and_not_noise(tmp_path):
    informative = _node_data(tmp_path / "a", signal=3.0)
    noise = _node_data(tmp_path / "b", signal=0.0)
    state = torch.get_rng_state()
    quick = BaselineConfig(epochs=150, patience=20)
    good = train_baseline(informative, quick, num_classes=4)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    bad = train_baseline(noise, quick, num_classes=4)
    assert good.model == "mlp" and good.val_acc >= 0.7 and good.test_acc >= 0.7, good
    assert bad.test_acc <= 0.4, bad  # 4 classes: about 0.25
    assert 1 <= good.best_epoch <= good.epochs_run <= quick.epochs
    logreg = train_baseline(informative, quick.model_copy(update={"hidden": 0}), num_classes=4)
    assert logreg.model == "logreg" and logreg.test_acc >= 0.7
    again = train_baseline(informative, quick, num_classes=4)
    assert again.test_acc == good.test_acc  # seeded
    assert set(good.metrics()) == {"baseline_train_acc", "baseline_val_acc", "baseline_test_acc"}


def test_baseline_streams_batches_smaller_than_the_training_set(tmp_path):
    nd = _node_data(tmp_path, signal=3.0)
    small = train_baseline(nd, BaselineConfig(batch_size=16, epochs=40, patience=10), num_classes=4)
    assert small.test_acc >= 0.7, small


def _real(tmp_path, name: str, *overrides: str):
    d = dataset(name)
    cfg = load_config(None, list(overrides), base={
        "store": str(tmp_path / "store"), "data": {"name": name, "edges": [str(d / "edges.csv")], "nodes": str(d / "nodes.parquet")}})
    snap = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
    features = normalize_features(snap, cfg.normalize, Store(cfg.store))
    return cfg, snap, features, layout_node_data(partition_graph(snap, cfg.partition, Store(cfg.store)), snap, features, Store(cfg.store))


@pytest.mark.slow
def test_baseline_on_cora_matches_the_literature_mlp(tmp_path):
    _, _, _, nd = _real(tmp_path, "cora")
    result = train_baseline(nd, BaselineConfig(), num_classes=7)
    # MLP on Cora's features with the public split: about 0.57-0.59 test accuracy (Kipf & Welling; Shchur et al.)
    assert 0.50 <= result.test_acc <= 0.66, result


# -- the check on real runs ---------------------------------------------------------------------

def _train_and_check(tmp_path, name: str, *overrides: str):
    from tasks.evaluate.evaluate import evaluate_model
    from tasks.evaluate.health import check_run_health as check
    from tests.helpers import train as train_cluster_gcn
    from tests.helpers import trained_record

    cfg, snap, features, nd = _real(tmp_path, name, *overrides)
    trained = train_cluster_gcn(nd, cfg)
    evaluation = evaluate_model(trained, nd, snap, Store(cfg.store), device=cfg.train.device, seed=cfg.train.seed, embedding_nodes=cfg.track.embedding_plot_nodes)
    base = train_baseline(nd, cfg.baseline, trained.num_classes)
    y, split = np.load(f"{nd.path}/y.npy"), np.load(f"{nd.path}/split.npy")
    history = trained_record(trained, cfg)["history"]
    health = check(history, chance=chance_level(y, split, trained.num_classes), val_acc=evaluation.metrics["val_acc"],
                   baseline_val_acc=base.val_acc, settings={**cfg.flat(), "normalize.method_used": features.method})
    return evaluation.metrics, base, health


@pytest.mark.slow
def test_check_fires_on_amazon_computers_with_row_normalization(tmp_path):
    # the issue's 0.40 case: row-normalized bag-of-words with the old defaults' lr and weight decay
    metrics, base, health = _train_and_check(tmp_path, "amazon_computers", "normalize.method=row", "train.lr=0.01",
                                             "train.weight_decay=5e-4", "train.epochs=40", "train.hidden=128",
                                             "train.dropout=0.5", "train.num_layers=2")
    assert health.status == "warning", (metrics, base, health)
    assert "features-only baseline" in health.reason
    assert any("normalize.method=standard" in s for s in health.suggestions)


class _CSR:
    """Features kept as CSR in the node data (the interface of storage.arrays' sparse rows)."""

    def __init__(self, dense):
        import scipy.sparse as sp

        m = sp.csr_matrix(dense)
        self.indptr, self.indices, self.data, self.shape = m.indptr, m.indices, m.data, m.shape

    def row_ranges(self, ranges):
        ptrs, cols, vals, base = [np.zeros(1, dtype=np.int64)], [], [], 0
        for a, b in ranges:
            ptr = self.indptr[a : b + 1].astype(np.int64)
            ptrs.append(ptr[1:] - ptr[0] + base)
            cols.append(self.indices[ptr[0] : ptr[-1]])
            vals.append(self.data[ptr[0] : ptr[-1]])
            base += ptr[-1] - ptr[0]
        return np.concatenate(ptrs), np.concatenate(cols), np.concatenate(vals)


def test_baseline_model_gives_the_same_outputs_on_sparse_rows():
    from tasks.evaluate.baseline import _rows, features_model

    rng = np.random.default_rng(0)
    dense = (rng.random((50, 12)) < 0.2) * rng.random((50, 12)).astype(np.float32)
    idx = np.array([0, 1, 2, 7, 8, 30, 49])
    sparse_rows = _rows(_CSR(dense), idx)
    assert sparse_rows.is_sparse and torch.allclose(sparse_rows.to_dense(), torch.from_numpy(dense[idx].astype(np.float32)))
    shift = rng.random(12).astype(np.float32)
    for hidden in (8, 0):
        torch.manual_seed(0)
        model = features_model(12, 3, hidden, 0.5, shift).eval()
        expected = features_model(12, 3, hidden, 0.5).eval()
        expected.load_state_dict({k: v for k, v in model.state_dict().items() if k != "shift"})
        # stored x with shift s means normalized x - s
        want = expected(torch.from_numpy((dense[idx] - shift).astype(np.float32)))
        assert torch.allclose(model(sparse_rows), want, atol=1e-5)
        assert torch.allclose(model(torch.from_numpy(dense[idx].astype(np.float32))), want, atol=1e-5)
    model.train()
    model(sparse_rows).sum().backward()  # trains through the sparse product
    assert model.first.weight.grad is not None
