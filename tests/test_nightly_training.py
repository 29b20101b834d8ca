"""Nightly training (issue 12): warm start checks, early stopping on/off, registry metadata,
the edge share of batches and ``clusters_per_batch: auto`` by the partition's edge cut."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from storage.checkpoints import Checkpoints
from storage.store import NodeDataRef, PartitionRef, SnapshotRef, Store
from tasks.config import PipelineConfig, load_config
from tasks.prepare import prepare_graph
from tasks.train.batching import AdjacencyNorm, build_batch
from tasks.train.model import GNN, ModelSpec, load_checkpoint
from tasks.train.steps import (_edge_share, clusters_for_edge_share, expected_edge_share, partition_cut_fraction,
                               resolve_clusters_per_batch, train_epoch, warm_start_mismatch)
from tests.helpers import config_with, cluster_graph, prepared_generated, trained_record
from tests.helpers import train as train_cluster_gcn


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[PipelineConfig, NodeDataRef]:
    cfg, prepared = prepared_generated(tmp_path_factory.mktemp("nightly"),
                                       ["train.epochs=8", "train.hidden=16", "partition.num_parts=8"],
                                       num_nodes=1500, num_classes=4, num_features=16, seed=3)
    return cfg, prepared.node_data


# -- early stopping -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "none", "off", "None", "null"])
def test_patience_zero_or_none_means_fixed_epochs(value):
    assert load_config(None, [f"train.patience={value}"]).train.patience is None
    assert load_config(None, []).train.patience == 50  # the default: early stopping on
    assert load_config(None, ["train.patience=7"]).train.patience == 7


def test_patience_negative_is_rejected():
    from tasks.errors import InputError

    with pytest.raises((InputError, ValueError)):
        load_config(None, ["train.patience=-1"])


def test_patience_off_runs_every_epoch_and_on_stops_with_the_best_weights(prepared, tmp_path):
    cfg, nd = prepared
    fixed_cfg = config_with(cfg, tmp_path / "a", "train.epochs=12", "train.patience=0", "train.lr=0.05")
    fixed = train_cluster_gcn(nd, fixed_cfg)
    assert fixed.epochs_run == 12
    early_cfg = config_with(cfg, tmp_path / "b", "train.epochs=40", "train.patience=2", "train.lr=0.05")
    early = train_cluster_gcn(nd, early_cfg)
    record = trained_record(early, early_cfg)
    history = record["history"]
    assert early.epochs_run < 40  # stopped on patience
    assert early.epochs_run == early.best_epoch + 2
    best = max(history, key=lambda h: h["val_acc"])
    assert record["best_epoch"] == early.best_epoch == best["epoch"]
    assert early.best_val_acc == pytest.approx(best["val_acc"])


# -- warm start ---------------------------------------------------------------------------------

def test_warm_start_when_architecture_and_features_match_cold_otherwise(prepared, tmp_path, caplog):
    cfg, nd = prepared
    first_cfg = config_with(cfg, tmp_path / "a", "train.epochs=3")
    first = train_cluster_gcn(nd, first_cfg)
    weights = Checkpoints(Store(first_cfg.store), first.graph, first.key).model_location()
    saved = load_checkpoint(weights)
    layout = saved["feature_layout"]
    assert layout["num_features"] == 16 and layout["normalization"]  # recorded with the weights

    warm = train_cluster_gcn(nd, config_with(cfg, tmp_path / "b", "train.warm_epochs=1", "train.dropout=0.2"), init_from=weights)
    assert warm.warm_started  # dropout is not part of the architecture
    with caplog.at_level(logging.WARNING, logger="tasks.train.steps"):
        wider = train_cluster_gcn(nd, config_with(cfg, tmp_path / "c", "train.epochs=1", "train.hidden=32"), init_from=weights)
    assert not wider.warm_started
    assert "hidden: 16 -> 32" in caplog.text and "random weights" in caplog.text

    spec = ModelSpec(**saved["spec"])
    assert warm_start_mismatch(spec, layout, saved) is None
    other_norm = {**layout, "normalization": "standard" if layout["normalization"] != "standard" else "l2"}
    why = warm_start_mismatch(spec, other_norm, saved)
    assert why is not None and "normalization" in why
    unrecorded = {k: v for k, v in saved.items() if k != "feature_layout"}
    assert "do not record" in warm_start_mismatch(spec, layout, unrecorded)


# -- warm start = fine-tuning with its own budget ---------------------------------------------------

@pytest.fixture(scope="module")
def champion(prepared, tmp_path_factory) -> str:
    """The weights of a finished cold run (``train.hidden=16``) on the prepared graph."""
    cfg, nd = prepared
    first_cfg = config_with(cfg, tmp_path_factory.mktemp("champion"), "train.epochs=6", "train.patience=0")
    first = train_cluster_gcn(nd, first_cfg)
    return Checkpoints(Store(first_cfg.store), first.graph, first.key).model_location()


def test_fine_tuning_that_never_beats_the_champion_stops_on_warm_patience_with_its_weights(prepared, champion, tmp_path,
                                                                                          caplog):
    cfg, nd = prepared
    # a learning rate too small to change a prediction: no epoch can beat the loaded weights
    warm_cfg = config_with(cfg, tmp_path, "train.epochs=40", "train.patience=30", "train.lr=1e-12",
                           "train.warm_patience=3", "train.warm_epochs=20")
    with caplog.at_level(logging.INFO, logger="tasks.train.steps"):
        warm = train_cluster_gcn(nd, warm_cfg, init_from=champion)
    assert warm.warm_started
    assert warm.best_epoch == 0 and warm.epochs_run == 3  # the warm budget, not the cold patience of 30
    record = trained_record(warm, warm_cfg)
    assert [h["epoch"] for h in record["history"]] == [0, 1, 2, 3]
    epoch0 = record["history"][0]
    assert 0 < epoch0["val_acc"] <= 1 and 0 < epoch0["train_acc"] <= 1 and "loss" not in epoch0
    assert warm.best_val_acc == pytest.approx(epoch0["val_acc"])
    loaded = load_checkpoint(champion)["state_dict"]
    saved = record["state_dict"]
    assert set(loaded) <= set(saved)
    assert all(torch.equal(loaded[k], saved[k]) for k in loaded)  # exactly the champion's weights
    assert "the saved model is the champion's weights" in caplog.text


def test_fine_tuning_without_warm_patience_runs_warm_epochs_and_resumes_after_epoch_0(prepared, champion, tmp_path):
    cfg, nd = prepared
    warm_cfg = config_with(cfg, tmp_path, "train.epochs=40", "train.warm_patience=off", "train.warm_epochs=3")

    def crash(epoch, metrics):
        if epoch == 1:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_cluster_gcn(nd, warm_cfg, init_from=champion, on_epoch=crash)
    resumed = train_cluster_gcn(nd, warm_cfg, init_from=champion)
    assert resumed.warm_started and resumed.resumed_from_epoch == 1 and resumed.epochs_run == 3
    history = trained_record(resumed, warm_cfg)["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]  # epoch 0 once: kept in the checkpoint
    assert resumed.best_val_acc == pytest.approx(max(h["val_acc"] for h in history))


def test_cold_run_ignores_the_warm_budget_and_its_key_does_not_depend_on_it(prepared, tmp_path):
    from tasks.train.steps import checkpoint_key

    cfg, nd = prepared
    cold_cfg = config_with(cfg, tmp_path, "train.epochs=4", "train.patience=0", "train.warm_epochs=1",
                           "train.warm_patience=1")
    cold = train_cluster_gcn(nd, cold_cfg)
    assert not cold.warm_started and cold.epochs_run == 4
    assert [h["epoch"] for h in trained_record(cold, cold_cfg)["history"]] == [1, 2, 3, 4]
    other = cold_cfg.train.model_copy(update={"warm_epochs": 7, "warm_patience": None})
    assert checkpoint_key(nd, cold_cfg.train) == checkpoint_key(nd, other)
    assert checkpoint_key(nd, cold_cfg.train, "champion") != checkpoint_key(nd, other, "champion")


def test_mismatching_champion_falls_back_to_a_cold_run_with_the_cold_budget(prepared, champion, tmp_path):
    cfg, nd = prepared
    wider_cfg = config_with(cfg, tmp_path, "train.hidden=32", "train.epochs=4", "train.patience=0",
                            "train.warm_epochs=1")
    wider = train_cluster_gcn(nd, wider_cfg, init_from=champion)
    assert not wider.warm_started and wider.epochs_run == 4
    assert [h["epoch"] for h in trained_record(wider, wider_cfg)["history"]] == [1, 2, 3, 4]


def test_warm_budget_settings_parse_like_patience():
    assert load_config(None, []).train.warm_patience == 3
    assert load_config(None, []).train.warm_epochs == 20
    assert load_config(None, ["train.warm_patience=off"]).train.warm_patience is None
    assert load_config(None, ["train.warm_patience=0"]).train.warm_patience is None
    flat = load_config(None, []).flat()
    assert flat["train.warm_patience"] == 3 and flat["train.warm_epochs"] == 20  # MLflow params


# -- registry -----------------------------------------------------------------------------------

def test_registered_version_carries_metrics_lineage_and_decision(tmp_path):
    from mlflow.tracking import MlflowClient

    from tasks.track.tracking import describe_version, version_facts

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          registry_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("graphpipe-cora")
    mv = client.create_model_version("graphpipe-cora", source=(tmp_path / "model").as_uri())
    cfg = load_config(None, [], base={"store": str(tmp_path / "store"), "data": {"name": "cora", "edges": ["e.csv"]}})
    part = PartitionRef(path=str(tmp_path / "nowhere"), fingerprint="p" * 64, num_parts=14)
    facts = version_facts(cfg, snapshot=SnapshotRef(path="s", name="cora", fingerprint="f" * 64),
                          node_data=NodeDataRef(path="n", fingerprint="n" * 64, partition=part),
                          metrics={"val_acc": 0.8123, "test_acc": 0.8011, "test_macro_f1": 0.79, "val_macro_f1": float("nan")},
                          promoted=False, champion_val=0.82,
                          extra_tags={"graphpipe.partition_mode": "refreshed"})
    describe_version(client, "graphpipe-cora", mv.version, facts)

    got = client.get_model_version("graphpipe-cora", mv.version)
    assert got.tags["graphpipe.val_acc"] == "0.8123"
    assert got.tags["graphpipe.test_acc"] == "0.8011"
    assert got.tags["graphpipe.test_macro_f1"] == "0.7900"
    assert "graphpipe.val_macro_f1" not in got.tags  # not a number: left out
    assert got.tags["graphpipe.graph"] == "cora"
    assert got.tags["graphpipe.snapshot_fingerprint"] == "f" * 64
    assert got.tags["graphpipe.partition_mode"] == "refreshed"
    assert got.tags["graphpipe.num_parts"] == "14"
    assert got.tags["graphpipe.champion_decision"] == "kept previous champion"
    assert got.tags["graphpipe.champion_previous_val_acc"] == "0.8200"
    desc = got.description
    assert "graph cora" in desc and "val_acc 0.8123" in desc and "test macro-F1 0.7900" in desc
    assert "kept previous champion" in desc and "0.8200" in desc and "refreshed" in desc


# -- edge share ---------------------------------------------------------------------------------

def _six_node_graph():
    """Three clusters of two nodes: an edge inside each cluster and three between them."""
    edges = [(0, 1), (2, 3), (4, 5), (1, 2), (3, 4), (0, 5)]
    y = np.array([0, 1, 0, 1, 0, 1])
    return cluster_graph(edges, [0, 2, 4, 6], y=y)


def test_batch_edge_share_counts_the_edges_the_batches_keep():
    graph = _six_node_graph()
    # batches {0, 1} and {2}: edges (0,1), (2,3), (1,2) and (4,5) kept, (3,4) and (0,5) cut:
    # 4 of the 6 edges, 8 of the 12 adjacency entries
    batches = [build_batch(graph, np.array(c), AdjacencyNorm("sym")) for c in ([0, 1], [2])]
    torch.manual_seed(0)
    model = GNN(ModelSpec("gcn", 6, 4, 2, 2, 0.0))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    metrics = train_epoch(model, opt, batches, torch.device("cpu"))
    assert metrics["batch_edges"] == 8
    t = SimpleNamespace(graph=graph, config=SimpleNamespace(min_edge_share=0.3), edge_share_warned=False,
                        rank=SimpleNamespace(lead=True), clusters_per_batch=2)
    _edge_share(t, metrics)
    assert metrics["batch_edge_share"] == pytest.approx(4 / 6)
    assert "batch_edges" not in metrics
    assert not t.edge_share_warned  # above 0.3


def test_low_edge_share_warns_once_with_advice():
    graph = _six_node_graph()
    t = SimpleNamespace(graph=graph, config=SimpleNamespace(min_edge_share=0.9), edge_share_warned=False,
                        rank=SimpleNamespace(lead=True), clusters_per_batch=1)
    seen: list[logging.LogRecord] = []  # a handler of its own: caplog may see a record twice when
    handler = logging.Handler(logging.WARNING)  # other tests attached Prefect's handlers to "tasks"
    handler.emit = seen.append
    steps_log = logging.getLogger("tasks.train.steps")
    steps_log.addHandler(handler)
    try:
        for _ in range(3):
            m = {"batch_edges": 6.0}
            _edge_share(t, m)
            assert m["batch_edge_share"] == pytest.approx(0.5)
    finally:
        steps_log.removeHandler(handler)
    warnings = [r for r in seen if "edges" in r.getMessage()]
    assert len(warnings) == 1 and "clusters_per_batch" in warnings[0].getMessage()


def test_training_logs_batch_edge_share_each_epoch(prepared, tmp_path):
    cfg, nd = prepared
    seen = []
    train_cluster_gcn(nd, config_with(cfg, tmp_path, "train.epochs=2", "train.patience=0"),
                      on_epoch=lambda e, m: seen.append(m["batch_edge_share"]))
    assert len(seen) == 2 and all(0 < s <= 1 for s in seen)


# -- clusters per batch: auto -------------------------------------------------------------------

def test_expected_share_and_the_q_that_reaches_it():
    assert expected_edge_share(40, 0.9, 1) == pytest.approx(0.1)
    assert expected_edge_share(40, 0.9, 40) == pytest.approx(1.0)
    q = clusters_for_edge_share(40, 0.9, 0.3)  # 1 + ceil(39 * 0.2 / 0.9) = 1 + 9
    assert q == 10
    assert expected_edge_share(40, 0.9, q) >= 0.3 > expected_edge_share(40, 0.9, q - 1)
    assert clusters_for_edge_share(40, 0.1, 0.3) == 1


def test_cut_fraction_counted_on_the_graph_when_stats_are_missing():
    graph = _six_node_graph()
    missing = NodeDataRef(path="/nonexistent", fingerprint="x",
                          partition=PartitionRef(path="/nonexistent/partition", fingerprint="x", num_parts=3))
    assert partition_cut_fraction(missing, graph) == pytest.approx(0.5)  # 3 of the 6 edges cross clusters


def _write_graph(path: Path, edges: np.ndarray, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True)
    (path / "edges.csv").write_text("src,dst\n" + "".join(f"{u},{v}\n" for u, v in edges))
    rng = np.random.default_rng(0)
    split = np.where(rng.random(n) < 0.5, "train", "test")
    pq.write_table(pa.table({"node_id": np.arange(n), "label": rng.integers(0, 3, n), "split": split}),
                   path / "nodes.parquet")
    return path


def _auto_q(tmp_path: Path, name: str, edges: np.ndarray, n: int) -> tuple[int, float]:
    src = _write_graph(tmp_path / name, edges, n)
    cfg = load_config(None, ["partition.num_parts=20", "train.target_batch_nodes=60", "train.min_edge_share=0.5"],
                      base={"store": str(tmp_path / "store"),
                            "data": {"name": name, "edges": [str(src / "edges.csv")], "nodes": str(src / "nodes.parquet")}})
    nd = prepare_graph(cfg).node_data
    from storage.arrays import ClusterGraph
    from storage.store import output_at

    graph = ClusterGraph.open(output_at(nd.partition.path), output_at(nd.path))
    cut = partition_cut_fraction(nd, graph)
    return resolve_clusters_per_batch(graph, cfg.train, cut), cut


def test_auto_takes_more_clusters_per_batch_on_a_poorly_clusterable_graph(tmp_path):
    """A ring of 20 dense communities (METIS cuts few edges) against a random graph of the same
    size (METIS must cut most edges): the random graph gets more clusters per batch."""
    n, m, rng = 600, 4000, np.random.default_rng(1)
    u = rng.integers(0, n, m)
    within = (u // 30) * 30 + rng.integers(0, 30, m)  # the other end in the same community of 30
    clustered = np.concatenate([np.stack([u, within], 1), [(i * 30, ((i + 1) % 20) * 30) for i in range(20)]])
    random = np.stack([u, rng.integers(0, n, m)], 1)
    q_clustered, cut_clustered = _auto_q(tmp_path, "clustered", clustered, n)
    q_random, cut_random = _auto_q(tmp_path, "random", random, n)
    assert cut_clustered < 0.1 < 0.5 < cut_random
    assert q_clustered == 2  # 60 nodes per batch of 30-node clusters: the edge share is already high
    assert q_random > q_clustered
    assert expected_edge_share(20, cut_random, q_random) >= 0.5 > expected_edge_share(20, cut_random, q_random - 1)
    assert q_random <= 10  # never more than half of the 20 clusters


def test_auto_is_bounded_by_max_batch_nodes_and_half_the_clusters():
    graph = cluster_graph([], list(range(0, 401, 10)))  # 40 clusters of 10 nodes
    tc = load_config(None, ["train.target_batch_nodes=20"]).train  # 2 clusters for the size
    assert resolve_clusters_per_batch(graph, tc) == 2  # edge cut unknown: the size alone
    assert resolve_clusters_per_batch(graph, tc, 0.1) == 2  # well clustered: unchanged
    assert resolve_clusters_per_batch(graph, tc, 0.9) == 10  # 1 + ceil(39 * 0.2 / 0.9)
    assert resolve_clusters_per_batch(graph, tc.model_copy(update={"max_batch_nodes": 100}), 0.9) == 10
    capped = tc.model_copy(update={"max_batch_nodes": 50})  # 10 clusters are 100 nodes: out of reach
    assert resolve_clusters_per_batch(graph, capped, 0.9) == 2  # the size choice is kept
    wanting = tc.model_copy(update={"min_edge_share": 0.99})
    assert resolve_clusters_per_batch(graph, wanting, 0.9) == 20  # at most half of the clusters
    fixed = tc.model_copy(update={"clusters_per_batch": 3})
    assert resolve_clusters_per_batch(graph, fixed, 0.9) == 3  # a configured number is kept


def test_nightly_deployment_warm_starts_and_stops_early():
    import yaml

    doc = yaml.safe_load((Path(__file__).parents[1] / "deployments" / "prefect.yaml").read_text())
    nightly = next(d for d in doc["deployments"] if d["name"] == "nightly")
    cfg = load_config(None, [], base=nightly["parameters"]["config"])
    assert cfg.train.warm_start is True
    assert cfg.train.patience is not None and cfg.train.patience >= 1


def test_champion_score_is_the_final_evaluation_not_the_last_epoch(tmp_path):
    """A run logs ``val_acc`` per epoch (``step=epoch``) and once more for the kept weights
    (step 0); MLflow's "latest" value is the last epoch's. The champion is judged by step 0."""
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from tasks.track.tracking import _promote

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    exp = client.create_experiment("e")

    def version(final: float, last_epoch: float) -> str:
        run = client.create_run(exp).info.run_id
        ts = int(time.time() * 1000)
        client.log_batch(run, metrics=[Metric("val_acc", 0.5, ts, 1), Metric("val_acc", last_epoch, ts, 30),
                                       Metric("val_acc", final, ts, 0)])
        return client.create_model_version("m", source=(tmp_path / run).as_uri(), run_id=run).version

    first = version(final=0.80, last_epoch=0.70)
    assert _promote(client, "m", first, 0.80) == (True, None)
    second = version(final=0.75, last_epoch=0.75)
    promoted, previous = _promote(client, "m", second, 0.75)
    assert previous == pytest.approx(0.80) and not promoted  # 0.75 beat the last epoch's 0.70, not 0.80
    client.set_model_version_tag("m", first, "graphpipe.val_acc", "0.7000")  # the tag, when set, decides
    assert _promote(client, "m", second, 0.75)[0]
