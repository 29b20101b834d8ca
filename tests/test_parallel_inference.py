"""Full-graph inference split across processes (issue 11) gives exactly the one-process result."""

import functools

import numpy as np
import pytest
import torch

from storage.arrays import ClusterGraph, write_arrays
from tasks.evaluate.inference import infer_full_graph, iter_full_graph
from tasks.evaluate.parallel import iter_full_graph_ranks, share
from tasks.train.model import GNN, ModelSpec
from tests.test_model import _random_graph

CPU = torch.device("cpu")


def _collect(blocks, n):
    got = {}
    for blk in blocks:
        if not got:
            got["logits"] = np.full((n, blk.logits.shape[1]), np.nan, dtype=np.float32)
            got["hidden"] = np.full((n, blk.hidden.shape[1]), np.nan, dtype=np.float32)
            got["bounds"] = []
        got["logits"][blk.start:blk.stop] = blk.logits
        got["hidden"][blk.start:blk.stop] = blk.hidden
        got["bounds"].append((blk.start, blk.stop))
    return got


def test_share_is_contiguous_and_covers_everything():
    items = list(range(7))
    shares = [share(items, r, 3) for r in range(3)]
    assert sum(shares, []) == items and [len(s) for s in shares] == [2, 2, 3]
    assert sum((share(items[:1], r, 3) for r in range(3)), []) == [0]


@pytest.mark.parametrize("kind,layers", [("gcn", 2), ("sage", 3), ("gat", 2), ("gcn", 1)])
def test_two_workers_equal_one_process(tmp_path, kind, layers):
    graph, _ = _random_graph(seed=4)
    torch.manual_seed(2)
    spec = ModelSpec(kind=kind, in_dim=5, hidden=8, out_dim=4, num_layers=layers, dropout=0.5,
                     **({"heads": 2} if kind == "gat" else {}))
    model = GNN(spec).eval()
    one = _collect(iter_full_graph(model, graph, CPU, block_nodes=15, scratch_dir=tmp_path), graph.num_nodes)
    two = _collect(iter_full_graph_ranks(model, graph, CPU, workers=2, block_nodes=15, scratch_dir=tmp_path),
                   graph.num_nodes)
    assert two["bounds"] == one["bounds"] and len(one["bounds"]) > 2
    np.testing.assert_allclose(two["logits"], one["logits"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(two["logits"].argmax(axis=1), one["logits"].argmax(axis=1))
    np.testing.assert_array_equal(two["hidden"], one["hidden"])
    assert list(tmp_path.iterdir()) == []  # the shared scratch files are removed


def test_mapped_graph_reopened_in_ranks_more_ranks_than_blocks(tmp_path):
    """A memory-mapped graph opened again in each rank (``reopen``), more ranks (3) than blocks
    (2: one rank has nothing to do), and no scratch directory given."""
    graph, _ = _random_graph(seed=9)
    write_arrays(tmp_path, cluster_ptr=graph.cluster_ptr, node_cluster=graph.node_cluster, indptr=graph.indptr,
                 indices=graph.indices, perm=graph.perm, x=graph.x, y=graph.y, split=graph.split)
    mapped = ClusterGraph.open(tmp_path, tmp_path)
    torch.manual_seed(0)
    model = GNN(ModelSpec(kind="gcn", in_dim=5, hidden=8, out_dim=3, num_layers=3, dropout=0.0)).eval()
    expected, _ = infer_full_graph(model, graph, CPU, block_nodes=40)
    got = _collect(iter_full_graph_ranks(model, mapped, CPU, workers=3, block_nodes=40,
                                         reopen=functools.partial(ClusterGraph.open, tmp_path, tmp_path)),
                   graph.num_nodes)
    np.testing.assert_allclose(got["logits"], expected, rtol=0, atol=1e-6)


def test_an_error_in_a_rank_reaches_the_caller(tmp_path):
    graph, _ = _random_graph(seed=1)
    model = GNN(ModelSpec(kind="gcn", in_dim=7, hidden=8, out_dim=3, num_layers=2, dropout=0.0)).eval()  # x has 5 columns
    with pytest.raises(RuntimeError, match="7|5") as err:
        list(iter_full_graph_ranks(model, graph, CPU, workers=2, block_nodes=15, scratch_dir=tmp_path))
    assert any("full-graph inference rank" in note for note in err.value.__notes__)  # the rank's traceback
    assert list(tmp_path.iterdir()) == []


def test_evaluate_and_score_with_two_workers_equal_one_process(tmp_path):
    """The stages: evaluate_model and score_nodes with two inference processes publish the same
    predictions and confidences as with one (settings that change only the output's key, not the
    predictions, keep the second run from being a cache hit)."""
    from storage.evaluation import read_predictions
    from storage.scores import read_scores
    from storage.store import Store
    from tasks.config import ScoreConfig
    from tasks.evaluate.evaluate import evaluate_model
    from tasks.score.score import score_nodes
    from tests.helpers import prepared_generated, train

    cfg, prepared = prepared_generated(tmp_path, ["train.epochs=4", "train.hidden=16", "partition.num_parts=6",
                                                  "train.prefetch=0"],
                                       num_nodes=700, num_classes=4, num_features=16, seed=3)
    trained = train(prepared.node_data, cfg)
    store = Store(cfg.store)
    cols = ["node_id", "prediction", "confidence"]
    evs = [evaluate_model(trained, prepared.node_data, prepared.snapshot, store, device="cpu",
                          embedding_nodes=40 + w, workers=w) for w in (1, 2)]
    assert evs[0].path != evs[1].path and not evs[1].reused
    one, two = (read_predictions(store.open(ev.path), cols) for ev in evs)
    assert one.column("node_id").equals(two.column("node_id"))
    np.testing.assert_array_equal(two.column("prediction").to_numpy(), one.column("prediction").to_numpy())
    np.testing.assert_allclose(two.column("confidence").to_numpy(), one.column("confidence").to_numpy(), atol=1e-6)
    assert evs[1].metrics == evs[0].metrics
    scores = [score_nodes(prepared.node_data, prepared.snapshot, ScoreConfig(top_k=1 + w, workers=w), store,
                          weights=trained.checkpoint_dir, model_label="test") for w in (1, 2)]
    s_one, s_two = (read_scores(store.open(s.path), cols) for s in scores)
    np.testing.assert_array_equal(s_two.column("prediction").to_numpy(), s_one.column("prediction").to_numpy())
    np.testing.assert_allclose(s_two.column("confidence").to_numpy(), s_one.column("confidence").to_numpy(), atol=1e-6)
