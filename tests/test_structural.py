"""Structural encodings for graphs without node features (tasks/normalize/structural.py, normalize stage)."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from storage.store import Store
from tasks.config import load_config
from tasks.errors import InputError
from tasks.normalize.features import apply_stats, load_stats, normalize_features
from tasks.partition.csr import build_csr
from tasks.normalize.structural import DENSE_MAX_NODES, resolve_structural, structural_encoding
from tests.test_normalize import X, _snapshot


def _community_graph(n: int, blocks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges of a graph with ``blocks`` dense groups, sparse links between them."""
    rng = np.random.default_rng(seed)
    group = np.arange(n) % blocks
    src = rng.integers(0, n, 8 * n)
    dst = rng.integers(0, n, 8 * n)
    keep = (group[src] == group[dst]) | (rng.random(len(src)) < 0.05)
    ring = np.arange(n - 1)  # connected: a path through all nodes
    return np.concatenate([src[keep], ring]), np.concatenate([dst[keep], ring + 1])


def _reference(indptr, indices, n):
    """Dense ``D^-1/2 (A+I) D^-1/2`` and each component's trivial eigenvector."""
    a = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(n, n)).toarray()
    d = a.sum(axis=1) + 1
    p = (a + np.eye(n)) / np.sqrt(d)[:, None] / np.sqrt(d)[None, :]
    return a, p, d


def test_spectral_columns_are_the_leading_nontrivial_eigenvectors():
    # a 650-node community graph plus a separate 60-node path: two components, ARPACK path
    src, dst = _community_graph(650, 5, seed=1)
    path = np.arange(650, 709)
    src, dst = np.concatenate([src, path]), np.concatenate([dst, path + 1])
    n = 710
    assert n > DENSE_MAX_NODES
    indptr, indices = build_csr(src, dst, n)
    x, info = structural_encoding(indptr, indices, n, "spectral", 8)
    assert x.shape == (n, 10) and x.dtype == np.float32
    assert info["components"] == 2 and info["solver"] == "arpack eigsh" and info["eigenvectors_found"] == 8

    a, p, d = _reference(indptr, indices, n)
    comp = np.r_[np.zeros(650, int), np.ones(60, int)]
    trivial = np.zeros((n, 2))
    for c in range(2):
        trivial[comp == c, c] = np.sqrt(d[comp == c]) / np.sqrt(d[comp == c].sum())
    vals = np.linalg.eigvalsh(p - 2 * trivial @ trivial.T)[::-1][:8]
    np.testing.assert_allclose(info["eigenvalues"], vals, atol=1e-4)
    vecs = x[:, 2:].astype(np.float64) / np.sqrt(n)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=0), 1.0, atol=1e-5)
    # each column is an eigenvector of P (to ARPACK's tolerance) and orthogonal to the trivial ones
    for j, lam in enumerate(info["eigenvalues"]):
        assert np.linalg.norm(p @ vecs[:, j] - lam * vecs[:, j]) < 1e-2
    assert np.abs(trivial.T @ vecs).max() < 1e-4
    # signs are fixed: the largest entry of each column is positive
    assert (vecs[np.abs(vecs).argmax(axis=0), np.arange(8)] > 0).all()
    # degree and component-size columns, z-scored
    logdeg = np.log1p(a.sum(axis=1))
    np.testing.assert_allclose(x[:, 0], (logdeg - logdeg.mean()) / logdeg.std(), atol=1e-5)
    logsize = np.log(np.where(comp == 0, 650, 60))
    np.testing.assert_allclose(x[:, 1], (logsize - logsize.mean()) / logsize.std(), atol=1e-5)
    # the same graph gives the same encoding
    again, _ = structural_encoding(indptr, indices, n, "spectral", 8)
    np.testing.assert_array_equal(again, x)


def test_small_graph_dense_path_pads_missing_eigenvectors():
    # a path 0-1-2-3 and an isolated node 4: 5 - 2 components = 3 non-trivial eigenvectors
    indptr, indices = build_csr(np.array([0, 1, 2]), np.array([1, 2, 3]), 5)
    x, info = structural_encoding(indptr, indices, 5, "spectral", 6)
    assert x.shape == (5, 8) and info["solver"] == "dense eigh" and info["eigenvectors_found"] == 3
    np.testing.assert_array_equal(x[:, 5:], 0.0)  # k=6 asked, 3 exist
    np.testing.assert_array_equal(x[4, 2:], 0.0)  # an isolated node has only trivial structure
    _, p, _ = _reference(indptr, indices, 5)
    vals = np.sort(np.linalg.eigvalsh(p[:4, :4]))[::-1][1:]  # the path's spectrum without its 1.0
    np.testing.assert_allclose(info["eigenvalues"], vals, atol=1e-6)
    deg, info_d = structural_encoding(indptr, indices, 5, "degree", 6)
    assert deg.shape == (5, 2) and "k" not in info_d
    np.testing.assert_array_equal(deg, x[:, :2])


def test_resolve_structural():
    assert resolve_structural("auto", has_features=False) == "spectral"
    assert resolve_structural("auto", has_features=True) == "none"
    assert resolve_structural("degree", has_features=False) == "degree"


def _cfg(tmp_path, *overrides):
    return load_config(None, list(overrides), base={"store": str(tmp_path / "store"), "data": {"name": "g"}})


def test_normalize_stage_encodes_a_featureless_graph_and_records_it(tmp_path):
    snap = _snapshot(tmp_path, None)
    ref = normalize_features(snap, (c := _cfg(tmp_path, "normalize.structural_dim=2")).normalize, Store(c.store))
    x = np.load(Path(ref.path) / "x.npy")
    assert x.shape == (4, 4) and np.isfinite(x).all()
    stats = load_stats(ref)
    assert stats.featureless and stats.method == "none" and stats.num_features == 4
    assert stats.structural["method"] == "spectral" and stats.structural["k"] == 2
    assert stats.encoding() == "spectral (k=2)"
    with pytest.raises(ValueError, match="stored rows"):  # not recomputable from feature rows
        apply_stats(np.empty((4, 0)), stats)
    manifest = json.loads((Path(ref.path) / "manifest.json").read_text())
    assert manifest["params"]["structural"] == "auto"
    assert manifest["params"]["resolved_structural"] == "spectral (k=2)"
    assert manifest["counts"]["num_features"] == 4
    # another encoding is another cache entry
    deg = normalize_features(snap, (c := _cfg(tmp_path, "normalize.structural=degree")).normalize, Store(c.store))
    assert deg.path != ref.path and np.load(Path(deg.path) / "x.npy").shape == (4, 2)
    assert load_stats(deg).encoding() == "degree"


def test_structural_encoding_on_a_graph_with_features_is_an_error(tmp_path):
    with pytest.raises(InputError, match="normalize.structural=spectral is for graphs without node features"):
        normalize_features(_snapshot(tmp_path, X), (c := _cfg(tmp_path, "normalize.structural=spectral")).normalize, Store(c.store))
    ref = normalize_features(_snapshot(tmp_path, X), (c := _cfg(tmp_path, "normalize.method=none")).normalize, Store(c.store))
    assert load_stats(ref).encoding() == "features" and load_stats(ref).structural is None


@pytest.mark.slow
def test_cora_without_features_beats_label_propagation(prefect_harness, tmp_path):
    """Cora with its features dropped (edges, labels and the Planetoid split only), default run:
    above label propagation's 0.68 (Kipf and Welling 2017, table 2); the encoding is recorded in
    MLflow and the registered predictor takes the stored encoding as its ``x``."""
    import mlflow
    import pyarrow.parquet as pq
    import torch
    from mlflow.tracking import MlflowClient

    from flows.pipeline import graph_pipeline
    from storage.snapshot import SPLIT_TEST, read_edges, read_nodes
    from storage.store import Store
    from tasks.config import DataConfig, PipelineConfig
    from tests.conftest import dataset

    d = dataset("cora")
    nodes = tmp_path / "nodes.parquet"
    pq.write_table(pq.read_table(d / "nodes.parquet", columns=["node_id", "label", "split"]), nodes)
    cfg = PipelineConfig(store=str(tmp_path / "store"),
                         data=DataConfig(name="cora_nofeat", edges=[str(d / "edges.csv")], nodes=str(nodes)))
    result = graph_pipeline(cfg)
    ml = result["mlflow"]
    client = MlflowClient(ml["tracking_uri"])
    run = client.get_run(ml["run_id"])
    assert run.data.metrics["test_acc"] > 0.68, run.data.metrics
    assert run.data.tags["graphpipe.input_encoding"] == "spectral (k=32)"
    assert run.data.params["normalize.structural"] == "auto"
    assert run.data.params["normalize.structural_dim"] == "32"
    local = client.download_artifacts(ml["run_id"], "stats/normalization.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["structural"]["method"] == "spectral"

    # scoring: the predictor's x is the stored encoding (features/<fp>/x.npy, snapshot order)
    features = Store(cfg.store).features_dir("cora_nofeat", run.data.tags["graphpipe.features_fingerprint"])
    x = torch.from_numpy(np.load(features / "x.npy"))
    assert x.shape == (2708, 34)
    src, dst = read_edges(result["snapshot"])
    edge_index = torch.from_numpy(np.stack([np.concatenate([src, dst]), np.concatenate([dst, src])]).astype(np.int64))
    mlflow.set_tracking_uri(ml["tracking_uri"])
    model = mlflow.pytorch.load_model(f"models:/{ml['model']}/{ml['model_version']}")
    pred = model(x, edge_index).argmax(dim=1).numpy()
    labels, split = read_nodes(result["snapshot"])
    test = split == SPLIT_TEST
    assert abs(float((pred[test] == labels[test]).mean()) - run.data.metrics["test_acc"]) < 0.005
