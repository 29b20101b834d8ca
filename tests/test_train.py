"""Training on a small generated community graph: learning, resuming, accumulators."""

from pathlib import Path

import numpy as np
import pytest
import torch

from storage.store import NodeDataRef
from tasks.config import PipelineConfig, load_config
from tasks.errors import InputError
from tasks.partition.layout import load_cluster_graph
from tasks.train.batching import AdjacencyNorm
from tasks.prepare import prepare_graph
from tasks.train.loaders import Prefetcher
from tasks.train.steps import resolve_clusters_per_batch, train_epoch
from tests.helpers import config_with, prepared_generated, trained_record
from tests.helpers import train as train_cluster_gcn


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[PipelineConfig, NodeDataRef]:
    cfg, prepared = prepared_generated(tmp_path_factory.mktemp("train"),
                                       ["train.epochs=6", "train.hidden=16", "partition.num_parts=12"],
                                       num_nodes=3000, num_classes=4, num_features=16, seed=1)
    return cfg, prepared.node_data


def test_training_learns_and_keeps_best_validation_weights(prepared, tmp_path):
    cfg, nd = prepared
    cfg15 = config_with(cfg, tmp_path, "train.epochs=15")
    result = train_cluster_gcn(nd, cfg15)
    saved = trained_record(result, cfg15)
    history = saved["history"]
    assert [h["epoch"] for h in history] == list(range(1, 16))
    assert history[-1]["loss"] < history[0]["loss"]
    best = max(history, key=lambda h: h["val_acc"])
    assert result.best_epoch == best["epoch"] == saved["best_epoch"]
    assert result.best_val_acc == pytest.approx(best["val_acc"])
    assert result.best_val_acc > 0.5  # 4 classes: chance is 0.25
    assert result.clusters_per_batch == 6  # auto: at most half of the 12 clusters


def test_killed_run_resumes_from_checkpoint_and_matches_uninterrupted(prepared, tmp_path):
    cfg, nd = prepared
    full = train_cluster_gcn(nd, config_with(cfg, tmp_path / "a", "train.prefetch=0"))

    def kill_at_3(epoch, metrics):
        if epoch == 3:
            raise Killed

    resumable = config_with(cfg, tmp_path / "b", "train.prefetch=0")
    with pytest.raises(Killed):
        train_cluster_gcn(nd, resumable, on_epoch=kill_at_3)
    resumed = train_cluster_gcn(nd, resumable)
    assert resumed.resumed_from_epoch == 3
    assert resumed.epochs_run == 6
    a = trained_record(full, config_with(cfg, tmp_path / "a", "train.prefetch=0"))
    b = trained_record(resumed, resumable)
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-5)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k])

    # a finished run is not resumed: the next run (a nightly retrain) starts again from epoch 0
    again = train_cluster_gcn(nd, resumable)
    assert again.resumed_from_epoch == 0


def test_epoch_loss_is_averaged_over_training_nodes(prepared):
    cfg, nd = prepared
    graph = load_cluster_graph(nd)

    class Constant(torch.nn.Module):
        """Uniform logits: the loss is log(4) for every node, whatever the batch sizes."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            from tasks.train.model import ModelSpec
            self.spec = ModelSpec("gcn", graph.num_features, 4, 4, 1, 0.0)

        def forward(self, x, adj):
            return torch.zeros(x.shape[0], 4) + self.w  # uniform: loss = log(4) for every node

    model = Constant()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = [np.array([0]), np.array([1, 2, 3]), np.arange(4, 12)]
    metrics = train_epoch(model, opt, Prefetcher(graph, batches, AdjacencyNorm("sym"), 1), torch.device("cpu"))
    assert metrics["loss"] == pytest.approx(np.log(4), rel=1e-6)


def test_epoch_progress_reports_batches(prepared, monkeypatch, caplog):
    import logging

    import tasks.train.steps as train_mod
    from tasks import progress
    from tasks.train.model import GNN, ModelSpec

    cfg, nd = prepared
    graph = load_cluster_graph(nd)
    model = GNN(ModelSpec("gcn", graph.num_features, 8, 4, 2, 0.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = [np.array([0]), np.array([1, 2, 3]), np.arange(4, 12)]
    monkeypatch.setattr(train_mod, "PROGRESS_SECONDS", 0.0)
    progress.enable(True)  # the one switch (tasks.progress); its own tests check that off is off
    try:
        with caplog.at_level(logging.INFO):
            train_epoch(model, opt, Prefetcher(graph, batches, AdjacencyNorm("sym"), 1), torch.device("cpu"), "epoch 2/5")
    finally:
        progress.enable(False)
    assert "epoch 2/5: batch 1/3" in caplog.text and "epoch 2/5: batch 2/3" in caplog.text


def test_clusters_per_batch_validation(prepared):
    cfg, nd = prepared
    graph = load_cluster_graph(nd)
    with pytest.raises(InputError, match="clusters_per_batch=13"):
        resolve_clusters_per_batch(graph, cfg.train.model_copy(update={"clusters_per_batch": 13}))
    assert resolve_clusters_per_batch(graph, cfg.train.model_copy(update={"clusters_per_batch": 5})) == 5


def test_graph_without_training_labels_is_rejected(tmp_path):
    edges = tmp_path / "e.csv"
    edges.write_text("src,dst\n0,1\n1,2\n2,3\n")
    cfg = load_config(None, [], base={"store": str(tmp_path / "s"), "data": {"name": "u", "edges": [str(edges)]},
                                      "partition": {"num_parts": 2}})
    nd = prepare_graph(cfg).node_data
    with pytest.raises(InputError, match="no labeled training nodes"):
        train_cluster_gcn(nd, cfg)


def test_warm_start_from_earlier_weights_only_when_they_fit(prepared, tmp_path):
    cfg, nd = prepared
    from storage.checkpoints import Checkpoints
    from storage.store import Store

    first_cfg = config_with(cfg, tmp_path / "a", "train.epochs=10")
    first = train_cluster_gcn(nd, first_cfg)
    weights = Checkpoints(Store(first_cfg.store), first.graph, first.key).model_location()
    cold_cfg = config_with(cfg, tmp_path / "b", "train.epochs=1")
    warm_cfg = config_with(cfg, tmp_path / "c", "train.warm_epochs=1")
    cold = train_cluster_gcn(nd, cold_cfg)
    warm = train_cluster_gcn(nd, warm_cfg, init_from=weights)
    assert warm.warm_started and not cold.warm_started
    warm_history = trained_record(warm, warm_cfg)["history"]  # epoch 0: the loaded weights validated
    assert [h["epoch"] for h in warm_history] == [0, 1]
    assert warm_history[1]["loss"] < trained_record(cold, cold_cfg)["history"][0]["loss"]
    assert warm.checkpoint_dir != cold.checkpoint_dir  # initial weights are part of the checkpoint key
    wider = train_cluster_gcn(nd, config_with(cfg, tmp_path / "d", "train.epochs=1", "train.hidden=32"), init_from=weights)
    assert not wider.warm_started


def test_worker_processes_assemble_the_same_batches_as_the_thread(prepared, tmp_path):
    """train.loader_workers=2 (spawned processes, as on a GPU machine) trains exactly like the
    default background thread: same batches, same order, same losses."""
    cfg, nd = prepared
    t_cfg = config_with(cfg, tmp_path / "t", "train.epochs=3", "train.loader_workers=0")
    p_cfg = config_with(cfg, tmp_path / "p", "train.epochs=3", "train.loader_workers=2")
    thread, procs = train_cluster_gcn(nd, t_cfg), train_cluster_gcn(nd, p_cfg)
    h_thread = trained_record(thread, t_cfg)["history"]
    h_procs = trained_record(procs, p_cfg)["history"]
    assert [h["loss"] for h in h_procs] == pytest.approx([h["loss"] for h in h_thread], rel=1e-6)
    assert procs.best_val_acc == thread.best_val_acc


def test_loader_workers_auto_is_zero_on_cpu():
    from tasks.config import TrainConfig
    from tasks.train.loaders import resolve_loader_workers

    assert resolve_loader_workers(TrainConfig(), torch.device("cpu")) == 0
    assert 1 <= resolve_loader_workers(TrainConfig(), torch.device("cuda")) <= 8
    assert resolve_loader_workers(TrainConfig(loader_workers=3), torch.device("cpu")) == 3
