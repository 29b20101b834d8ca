import numpy as np
import pytest
import torch

from tasks.evaluate.inference import infer_full_graph, iter_full_graph, predict_full_graph
from tasks.train.batching import build_batch
from tasks.train.model import GNN, MODELS, EdgeIndexPredictor, ModelSpec
from tests.helpers import cluster_graph

# every model of the registry, and gcn with the diagonal enhancement
VARIANTS = {"gcn": {"kind": "gcn"}, "sage": {"kind": "sage"}, "gat": {"kind": "gat", "heads": 2},
            "gcn+diag": {"kind": "gcn", "diag_lambda": 1.0}}


def _spec(variant, in_dim, hidden, out_dim, layers, dropout, **kw):
    return ModelSpec(in_dim=in_dim, hidden=hidden, out_dim=out_dim, num_layers=layers, dropout=dropout,
                     **VARIANTS[variant], **kw)


def _whole(graph, model):
    """The whole graph as one training batch (the training forward's input)."""
    return build_batch(graph, np.arange(graph.num_parts), model.spec.adjacency)


def _random_graph(seed=0, n=60, e=200, d=5):
    rng = np.random.default_rng(seed)
    edges = [tuple(p) for p in rng.integers(0, n, size=(e, 2)) if p[0] != p[1]]
    x = rng.standard_normal((n, d)).astype(np.float32)
    return cluster_graph(edges, [0, 11, 25, 26, 40, 60], x=x), edges


def _edge_index(graph):
    rows = np.repeat(np.arange(graph.num_nodes), np.diff(graph.indptr))
    return torch.from_numpy(np.stack([graph.indices.astype(np.int64), rows]))


def test_registry_covers_the_configured_models():
    from typing import get_args

    from tasks.config import TrainConfig

    assert set(get_args(TrainConfig.model_fields["model"].annotation)) == set(MODELS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sparse_path_equals_edge_index_path(variant):
    graph, _ = _random_graph()
    torch.manual_seed(0)
    model = GNN(_spec(variant, 5, 8, 3, 2, 0.0)).eval()
    whole = _whole(graph, model)
    sparse_out = model(whole.x, whole.adj)
    edge_out = EdgeIndexPredictor(model, "none")(torch.from_numpy(graph.x), _edge_index(graph))
    torch.testing.assert_close(sparse_out, edge_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_layerwise_inference_equals_full_graph_forward(variant, layers):
    graph, _ = _random_graph(seed=layers)
    torch.manual_seed(1)
    model = GNN(_spec(variant, 5, 8, 4, layers, 0.5)).eval()
    whole = _whole(graph, model)
    expected = model(whole.x, whole.adj).detach().numpy()
    for block_nodes in (1, 15, 1000):  # one cluster per block, a few, all
        logits, hidden = infer_full_graph(model, graph, torch.device("cpu"), block_nodes=block_nodes)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
        assert hidden.shape == (60, 8 if layers > 1 else 5)


@pytest.mark.parametrize("layers", [2, 3])
def test_disk_backed_inference_equals_in_memory(tmp_path, layers):
    """Intermediate layers in scratch files (released after every block) give the same outputs,
    and the unlinked scratch files leave nothing behind."""
    graph, _ = _random_graph(seed=7)
    torch.manual_seed(3)
    model = GNN(ModelSpec("gcn", 5, 8, 4, layers, 0.5)).eval()
    logits, hidden = infer_full_graph(model, graph, torch.device("cpu"), block_nodes=15)
    got = np.full_like(logits, np.nan)
    got_hidden = np.full_like(hidden, np.nan)
    for blk in iter_full_graph(model, graph, torch.device("cpu"), block_nodes=15, scratch_dir=tmp_path):
        got[blk.start : blk.stop] = blk.logits
        got_hidden[blk.start : blk.stop] = blk.hidden
    np.testing.assert_array_equal(got, logits)
    np.testing.assert_array_equal(got_hidden, hidden)
    pred = predict_full_graph(model, graph, torch.device("cpu"), scratch_dir=tmp_path)
    np.testing.assert_array_equal(pred, logits.argmax(axis=1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_inference_reading_sources_in_small_windows_is_exact(tmp_path, monkeypatch, variant):
    """Sources read a few rows at a time (many windows per block, pages released after each)
    from memory-mapped files give the full-graph forward."""
    import tasks.evaluate.inference as inference_mod
    from storage.arrays import ClusterGraph, write_arrays

    graph, _ = _random_graph(seed=11)
    write_arrays(tmp_path, cluster_ptr=graph.cluster_ptr, node_cluster=graph.node_cluster, indptr=graph.indptr,
                 indices=graph.indices, perm=graph.perm, x=graph.x, y=graph.y, split=graph.split)
    mapped = ClusterGraph.open(tmp_path, tmp_path)
    assert "x" in mapped.maps
    torch.manual_seed(5)
    model = GNN(_spec(variant, 5, 8, 4, 3, 0.5)).eval()
    whole = _whole(graph, model)
    expected = model(whole.x, whole.adj).detach().numpy()
    monkeypatch.setattr(inference_mod, "WINDOW_BYTES", 64)  # 2-8 rows per window
    monkeypatch.setattr(inference_mod, "CHUNK_BYTES", 64)  # the transform streamed in chunks of 2-8 rows
    got = np.full_like(expected, np.nan)
    for blk in iter_full_graph(model, mapped, torch.device("cpu"), block_nodes=15, scratch_dir=tmp_path):
        got[blk.start : blk.stop] = blk.logits
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_predictor_applies_saved_normalization():
    graph, _ = _random_graph()
    model = GNN(ModelSpec("gcn", 5, 8, 3, 2, 0.0)).eval()
    raw = torch.from_numpy(np.abs(graph.x) + 1)
    row = raw / raw.sum(dim=1, keepdim=True)
    ei = _edge_index(graph)
    torch.testing.assert_close(EdgeIndexPredictor(model, "row")(raw, ei), EdgeIndexPredictor(model, "none")(row, ei))
    l2 = raw / raw.norm(dim=1, keepdim=True)
    torch.testing.assert_close(EdgeIndexPredictor(model, "l2")(raw, ei), EdgeIndexPredictor(model, "none")(l2, ei))
    mean, std = raw.mean(0), raw.std(0)
    std_pred = EdgeIndexPredictor(model, "standard", mean, std)(raw, ei)
    torch.testing.assert_close(std_pred, EdgeIndexPredictor(model, "none")((raw - mean) / std, ei))


def test_symmetric_spmm_gives_the_same_gradients_as_pyg():
    graph, _ = _random_graph(seed=4)
    torch.manual_seed(2)
    model = GNN(ModelSpec("gcn", 5, 8, 3, 2, 0.0)).train()
    batch = _whole(graph, model)
    model(batch.x, batch.adj).square().sum().backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    h = torch.relu(model.convs[0](batch.x, batch.adj))  # PyG's own propagate
    model.convs[1](h, batch.adj).square().sum().backward()
    for a, p in zip(ours, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_dropout_keeps_the_expected_value():
    from tasks.train.model import dropout

    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, 0.3, True)
    assert abs(float((y == 0).float().mean()) - 0.3) < 0.01
    assert abs(float(y.mean()) - 1.0) < 0.01
    assert torch.equal(dropout(x, 0.3, False), x)


def _sparse_twin(graph, seed=0, d=30):
    """``(dense_graph, sparse_graph, raw, mean, std)``: the same graph with count features, once as
    the dense standardized matrix and once kept sparse (``raw / std`` as CSR plus the shift)."""
    import dataclasses

    import scipy.sparse as sp

    from storage.arrays import CSRRows

    rng = np.random.default_rng(seed)
    n = graph.num_nodes
    raw = ((rng.random((n, d)) < 0.08) * rng.integers(1, 6, (n, d))).astype(np.float32)
    mean, std = raw.mean(0), raw.std(0)
    std[std == 0] = 1.0
    dense = dataclasses.replace(graph, x=((raw - mean) / std).astype(np.float32))
    csr = sp.csr_matrix(raw / std, dtype=np.float32)
    sparse = dataclasses.replace(graph, x=CSRRows(csr.indptr.astype(np.int64), csr.indices, csr.data, csr.shape),
                                 x_shift=(mean / std).astype(np.float32))
    return dense, sparse, raw, mean, std


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("layers", [1, 2])
def test_sparse_first_layer_equals_dense_training_inference_and_predictor(variant, layers):
    """Standardized bag-of-words kept sparse: the training forward, its gradients, full-graph
    inference and the exported predictor on raw features all equal the dense path."""
    graph, _ = _random_graph(seed=20 + layers)
    dense, sparse, raw, mean, std = _sparse_twin(graph)
    torch.manual_seed(4)
    model = GNN(_spec(variant, 30, 8, 4, layers, 0.0, input_shift=True))
    model.set_input_shift(sparse.x_shift)
    reference = GNN(_spec(variant, 30, 8, 4, layers, 0.0))
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if k != "input_shift"})
    clusters = np.array([0, 2, 3])  # a training batch with edges between clusters
    norm = model.spec.adjacency
    bd, bs = build_batch(dense, clusters, norm), build_batch(sparse, clusters, norm)
    assert bs.x.layout == torch.sparse_csr and bd.x.layout == torch.strided
    out_d, out_s = reference(bd.x, bd.adj), model(bs.x, bs.adj)
    torch.testing.assert_close(out_s, out_d, rtol=1e-4, atol=1e-5)
    out_d.square().sum().backward()
    out_s.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)

    model.eval()
    whole = _whole(dense, model)
    expected = reference.eval()(whole.x, whole.adj).detach().numpy()
    for block_nodes in (1, 1000):
        logits, hidden = infer_full_graph(model, sparse, torch.device("cpu"), block_nodes=block_nodes)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
        assert hidden.shape == (60, 8 if layers > 1 else 30)
    predictor = EdgeIndexPredictor(model, "standard", torch.from_numpy(mean), torch.from_numpy(std)).eval()
    pred_out = predictor(torch.from_numpy(raw), _edge_index(graph)).detach().numpy()
    np.testing.assert_allclose(pred_out, expected, rtol=1e-4, atol=1e-4)


def test_sparse_dropout_drops_stored_entries_only():
    from tasks.train.model import dropout

    torch.manual_seed(0)
    dense = (torch.rand(200, 50) < 0.1).float() * 3.0
    x = dense.to_sparse_csr()
    out = dropout(x, 0.5, True)
    assert out.layout == torch.sparse_csr
    values = out.values()
    assert set(values.unique().tolist()) <= {0.0, 6.0}
    kept = (values != 0).float().mean().item()
    assert 0.4 < kept < 0.6
    assert torch.equal(dropout(x, 0.5, False).values(), x.values())


# A hand-built graph: 12 nodes in 4 clusters of 3 (a triangle each: 0-1-2, 3-4-5, 6-7-8, 9-10-11),
# the clusters joined in a ring (2-3, 5-6, 8-9, 11-0) plus the chords 1-7, 4-10, 0-4 and 0-8, so
# degrees differ (node 0: 5, nodes 4 and 8: 4, the others 3); 2 features per node.
HAND_EDGES = [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (6, 7), (7, 8), (6, 8), (9, 10), (10, 11), (9, 11),
              (2, 3), (5, 6), (8, 9), (11, 0), (1, 7), (4, 10), (0, 4), (0, 8)]
HAND_X = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [2.0, 1.0], [1.0, 2.0], [0.0, 0.5],
                   [0.3, 0.7], [1.5, 0.0], [0.0, 0.2], [0.9, 0.1], [0.4, 1.2], [2.0, 2.0]], dtype=np.float32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_inference_and_exported_predictor_agree(tmp_path, variant):
    """Issue 10's seam: for each model, the training forward on the whole graph as one batch,
    layer-wise full-graph inference over row blocks smaller than the graph, and the predictor
    exported to MLflow (torch.export) and loaded back from a local store give the same logits."""
    import mlflow

    from tasks.track.tracking import log_predictor

    graph = cluster_graph(HAND_EDGES, [0, 3, 6, 9, 12], x=HAND_X)
    torch.manual_seed(0)
    model = GNN(_spec(variant, 2, 8, 3, 3, 0.5)).eval()
    whole = _whole(graph, model)
    with torch.no_grad():
        trained = model(whole.x, whole.adj).numpy()
    for block_nodes in (3, 6):  # one cluster per block, two
        logits, _ = infer_full_graph(model, graph, torch.device("cpu"), block_nodes=block_nodes)
        np.testing.assert_allclose(logits, trained, rtol=1e-5, atol=1e-5)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")  # a local store, artifacts in tmp_path
    experiment = mlflow.create_experiment("seam", artifact_location=(tmp_path / "artifacts").as_uri())
    x, edge_index = torch.from_numpy(HAND_X), _edge_index(graph)
    with mlflow.start_run(experiment_id=experiment):
        uri, _ = log_predictor(EdgeIndexPredictor(model, "none").eval(), x, edge_index, None)
    loaded = mlflow.pytorch.load_model(uri)  # a pt2 model has no pyfunc flavor; loaded as the pipeline's test does
    served = loaded(x, edge_index).detach().numpy()
    np.testing.assert_allclose(served, trained, rtol=1e-5, atol=1e-5)
    assert np.abs(trained).max() > 1e-3  # not a degenerate all-zero output


def test_diagonal_enhancement_changes_the_output():
    """lambda > 0 weighs a node's own row more: a different output from lambda = 0, which
    itself differs from the symmetric GCN normalization."""
    graph = cluster_graph(HAND_EDGES, [0, 3, 6, 9, 12], x=HAND_X)
    outs = []
    for extra in ({}, {"diag_lambda": 0.0}, {"diag_lambda": 2.0}):
        torch.manual_seed(0)
        model = GNN(ModelSpec("gcn", 2, 8, 3, 2, 0.0, **extra)).eval()
        whole = _whole(graph, model)
        outs.append(model(whole.x, whole.adj).detach().numpy())
    assert not np.allclose(outs[0], outs[1], atol=1e-4) and not np.allclose(outs[1], outs[2], atol=1e-4)


def test_model_options_are_validated():
    with pytest.raises(ValueError, match="multiple of heads"):
        ModelSpec("gat", 2, 10, 3, 2, 0.0, heads=4)
    with pytest.raises(ValueError, match="gcn only"):
        ModelSpec("sage", 2, 8, 3, 2, 0.0, diag_lambda=1.0)
    with pytest.raises(ValueError, match="unknown model"):
        ModelSpec("gin", 2, 8, 3, 2, 0.0)
    from tasks.config import load_config
    from tasks.errors import InputError

    with pytest.raises(InputError, match="diag_lambda"):
        load_config(None, ["train.model=sage", "train.diag_lambda=1"])
    with pytest.raises(InputError, match="multiple of train.heads"):
        load_config(None, ["train.model=gat", "train.heads=3"])
    assert load_config(None, ["train.model=gat", "train.heads=4"]).train.heads == 4


def test_spec_from_config_keeps_old_checkpoints_comparable():
    """A gcn spec built from the config equals the spec saved before heads/diag_lambda existed,
    so warm starts from an earlier champion still fit."""
    from tasks.config import TrainConfig

    old = ModelSpec(**{"kind": "gcn", "in_dim": 5, "hidden": 128, "out_dim": 3, "num_layers": 2, "dropout": 0.5,
                       "input_shift": False})
    assert ModelSpec.from_config(TrainConfig(), 5, 3).same_architecture(old)
    assert not ModelSpec.from_config(TrainConfig(diag_lambda=1.0), 5, 3).same_architecture(old)
    gat = ModelSpec.from_config(TrainConfig(model="gat", heads=4), 5, 3)
    assert (gat.kind, gat.heads) == ("gat", 4)
