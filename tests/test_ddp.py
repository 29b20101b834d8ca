"""Data-parallel training (train.world_size) with real gloo processes on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from storage.checkpoints import Checkpoints
from storage.store import Store
from tasks.config import DataConfig, PipelineConfig, load_config
from tasks.prepare import prepare_graph
from tasks.train.batching import build_batch, epoch_batches
from tasks.train.model import GNN, ModelSpec
from tasks.train.steps import Rank, resolve_clusters_per_batch
from tests.conftest import dataset
from tests.helpers import prepared_generated, trained_record
from tests.helpers import train as train_cluster_gcn


class Killed(Exception):
    pass


def test_batches_are_dealt_out_evenly_with_the_same_number_of_steps():
    batches = [np.array([i]) for i in range(7)]
    shares = [Rank(r, 3).share(batches) for r in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]  # 7 batches padded to 9 by repeating the first two
    dealt = [int(b[0]) for step in zip(*shares) for b in step]
    assert dealt == [0, 1, 2, 3, 4, 5, 6, 0, 1]
    assert Rank(0, 1).share(batches) is batches


@pytest.fixture(scope="module")
def cora(tmp_path_factory) -> tuple[PipelineConfig, object]:
    d = dataset("cora")
    cfg = PipelineConfig(store=str(tmp_path_factory.mktemp("cora") / "store"),
                         data=DataConfig(name="cora", edges=[str(d / "edges.csv")], nodes=str(d / "nodes.parquet")))
    return cfg, prepare_graph(cfg).node_data


def _single_process_reference(nd, tc, world_size: int) -> dict[str, torch.Tensor]:
    """One process, one epoch: at every step the mean of the gradients the ranks would compute
    on their batches (the dealt-out shuffle of epoch 1), then one Adam step."""
    from storage.arrays import ClusterGraph

    graph = ClusterGraph.open(nd.partition.path, nd.path)
    spec = ModelSpec(tc.model, graph.num_features, tc.hidden, int(np.max(graph.y)) + 1, tc.num_layers, tc.dropout,
                     input_shift=graph.x_shift is not None)
    torch.manual_seed(tc.seed)
    model = GNN(spec)
    if graph.x_shift is not None:
        model.set_input_shift(graph.x_shift)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    q = resolve_clusters_per_batch(graph, tc)
    order = epoch_batches(graph.num_parts, q, np.random.default_rng([tc.seed, 1]))
    shares = [Rank(r, world_size).share(order) for r in range(world_size)]
    model.train()
    for step in zip(*shares):
        grads = [torch.zeros_like(p) for p in model.parameters()]
        for clusters in step:
            batch = build_batch(graph, clusters, spec.adjacency)
            model.zero_grad(set_to_none=True)
            out = model(batch.x, batch.adj)[batch.train_mask]
            n = int(batch.train_mask.sum())
            loss = F.cross_entropy(out, batch.y[batch.train_mask]) if n else out.sum() * 0.0
            loss.backward()
            for g, p in zip(grads, model.parameters()):
                if p.grad is not None:
                    g += p.grad / world_size
        for g, p in zip(grads, model.parameters()):
            p.grad = g
        opt.step()
    return model.state_dict()


def test_two_processes_equal_one_process_averaging_their_gradients(cora, tmp_path):
    cfg, nd = cora
    ddp_cfg = load_config(None, ["train.world_size=2", "train.epochs=1", "train.dropout=0.0",
                                                         "train.clusters_per_batch=2"],
                          base=cfg.model_dump(mode="json") | {"store": str(tmp_path / "s")})
    result = train_cluster_gcn(nd, ddp_cfg)
    assert result.world_size == 2
    steps = result.rank_batches[0]
    assert result.rank_batches == [steps, steps] and steps == 4  # 14 clusters, 2 per batch: 7 batches padded to 8
    got = Checkpoints(Store(ddp_cfg.store), result.graph, result.key).last()["model"]
    want = _single_process_reference(nd, ddp_cfg.train, 2)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    # and the training moved the weights: the reference with 0 steps would differ
    torch.manual_seed(ddp_cfg.train.seed)
    assert any(not torch.allclose(got[k], v) for k, v in GNN(ModelSpec(**result.spec)).state_dict().items() if k in got)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cfg, prepared = prepared_generated(tmp_path_factory.mktemp("ddp"),
                                       ["train.epochs=4", "train.hidden=16", "partition.num_parts=12",
                                        "train.world_size=2", "train.prefetch=0"],
                                       num_nodes=2000, num_classes=4, num_features=16, seed=3)
    return cfg, prepared.node_data


def _with(cfg: PipelineConfig, store: Path, *overrides: str) -> PipelineConfig:
    return load_config(None, list(overrides), base=cfg.model_dump(mode="json") | {"store": str(store)})


def test_two_ranks_resume_after_a_kill_and_match_an_uninterrupted_run(small, tmp_path):
    """The parent stops both ranks when its epoch callback fails; the next run resumes from rank
    0's checkpoint and ends with the weights and history of a run never interrupted."""
    cfg, nd = small
    full_cfg, cut_cfg = _with(cfg, tmp_path / "a"), _with(cfg, tmp_path / "b")
    full = train_cluster_gcn(nd, full_cfg)
    seen = []

    def kill_at_2(epoch, metrics):
        seen.append(epoch)
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        train_cluster_gcn(nd, cut_cfg, on_epoch=kill_at_2)
    assert seen[:2] == [1, 2]
    resumed = train_cluster_gcn(nd, cut_cfg)
    assert 2 <= resumed.resumed_from_epoch < 4 and resumed.epochs_run == 4
    a, b = trained_record(full, full_cfg), trained_record(resumed, cut_cfg)
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-6)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k])
    assert full.world_size == 2 and full.best_val_acc > 0.3  # 4 classes: chance is 0.25; 4 epochs only


def test_a_rank_error_reaches_the_caller_with_its_type(tmp_path):
    from tasks.errors import InputError

    edges = tmp_path / "e.csv"
    edges.write_text("src,dst\n0,1\n1,2\n2,3\n")
    cfg = load_config(None, [], base={"store": str(tmp_path / "s"), "data": {"name": "u", "edges": [str(edges)]},
                                      "partition": {"num_parts": 2}, "train": {"world_size": 2}})
    nd = prepare_graph(cfg).node_data
    with pytest.raises(InputError, match="no labeled training nodes"):
        train_cluster_gcn(nd, cfg)


@pytest.mark.slow
def test_pipeline_with_two_ranks_reaches_cora_accuracy_and_tracks_them(prefect_harness, tmp_path):
    """``--set train.world_size=2`` through the whole flow (Prefect task, MLflow run): the default
    config with early stopping, two gloo ranks; the run records the ranks and their batches."""
    from mlflow.tracking import MlflowClient

    from flows.pipeline import graph_pipeline

    d = dataset("cora")
    cfg = PipelineConfig(store=str(tmp_path / "store"),
                         data=DataConfig(name="cora", edges=[str(d / "edges.csv")], nodes=str(d / "nodes.parquet")))
    result = graph_pipeline(cfg, overrides={"train.world_size": 2})
    assert result["metrics"]["test_acc"] >= 0.78, result["metrics"]
    run = MlflowClient(result["mlflow"]["tracking_uri"]).get_run(result["mlflow"]["run_id"])
    assert run.data.params["train.world_size"] == "2"
    tags = run.data.tags
    assert tags["graphpipe.world_size"] == "2"
    per_rank = [int(n) for n in tags["graphpipe.rank_batches"].split(",")]
    assert len(per_rank) == 2 and per_rank[0] == per_rank[1] > 0
    loss = MlflowClient(result["mlflow"]["tracking_uri"]).get_metric_history(result["mlflow"]["run_id"], "loss")
    assert [m.step for m in loss] == list(range(1, len(loss) + 1))  # rank 0's epochs reached MLflow, in order
