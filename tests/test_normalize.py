import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from storage.atomic import publish_dir
from storage.snapshot import GraphTables, write_snapshot
from storage.store import SnapshotRef, Store, make_manifest, write_manifest
from tasks.config import load_config
from tasks.normalize.features import apply_stats, fit_stats, load_stats, normalize_features, resolve_method

X = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 4.0], [5.0, -1.0, 1.0]], dtype=np.float32)
SPLIT = np.array([1, 1, 2, 3], dtype=np.int8)  # train rows 0 and 1


def _snapshot(tmp_path: Path, x, name="g") -> SnapshotRef:
    import pyarrow as pa

    store = Store(tmp_path / "store")
    out = store.snapshot_dir(name, "fp")
    with publish_dir(out) as tmp:
        files = write_snapshot(tmp, GraphTables(
            src=np.array([0, 1, 2]), dst=np.array([1, 2, 3]), node_ids=pa.array([10, 11, 12, 13]),
            labels=np.array([0, 1, 0, 1]), split=SPLIT, features=x))
        write_manifest(tmp, make_manifest("snapshot", "fp", params={}, inputs={}, counts={"num_nodes": 4}, files=files))
    return SnapshotRef(str(out), name, "fp")


def _cfg(tmp_path, method):
    return load_config(None, [f"normalize.method={method}"], base={"store": str(tmp_path / "store"), "data": {"name": "g"}})


def test_row_normalization_exact(tmp_path):
    ref = normalize_features(_snapshot(tmp_path, np.abs(X)), (c := _cfg(tmp_path, "row")).normalize, Store(c.store))
    x = np.load(Path(ref.path) / "x.npy")
    np.testing.assert_allclose(x[0], [0.25, 0.75, 0.0])
    np.testing.assert_array_equal(x[1], [0, 0, 0])  # zero row stays zero
    np.testing.assert_allclose(x[3], [5 / 7, 1 / 7, 1 / 7])


def test_standard_uses_training_rows_only_and_is_saved(tmp_path):
    ref = normalize_features(_snapshot(tmp_path, X), (c := _cfg(tmp_path, "standard")).normalize, Store(c.store))
    stats = json.loads((Path(ref.path) / "stats.json").read_text())
    # train rows 0 and 1: mean (0.5, 1.5, 0), std (0.5, 1.5, 0 -> 1)
    assert stats["mean"] == [0.5, 1.5, 0.0]
    assert stats["std"] == [0.5, 1.5, 1.0]
    x = np.load(Path(ref.path) / "x.npy")
    np.testing.assert_allclose(x[2], [3.0, 1 / 3, 4.0], rtol=1e-6)
    # scoring applies the same transform to new rows
    new = np.array([[1.5, 0.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(apply_stats(new, load_stats(ref)), [[2.0, -1.0, 2.0]])


def test_auto_and_none(tmp_path):
    assert resolve_method("auto", np.abs(X)) == "l2"
    assert resolve_method("auto", X) == "standard"
    assert resolve_method("auto", sp.csr_matrix(np.abs(X))) == "l2"
    ref = normalize_features(_snapshot(tmp_path, X), (c := _cfg(tmp_path, "none")).normalize, Store(c.store))
    np.testing.assert_array_equal(np.load(Path(ref.path) / "x.npy"), X)


def test_sparse_features_give_the_same_result_as_dense():
    dense = apply_stats(np.abs(X), fit_stats(np.abs(X), "row", np.array([0, 1])))
    sparse = apply_stats(sp.csr_matrix(np.abs(X)), fit_stats(sp.csr_matrix(np.abs(X)), "row", np.array([0, 1])))
    np.testing.assert_allclose(dense, sparse)
    s1 = fit_stats(X, "standard", np.array([0, 1]))
    s2 = fit_stats(sp.csr_matrix(X), "standard", np.array([0, 1]))
    assert s1.mean == s2.mean and s1.std == s2.std


def test_cached_by_snapshot_and_method(tmp_path):
    snap = _snapshot(tmp_path, X)
    a = normalize_features(snap, (c := _cfg(tmp_path, "standard")).normalize, Store(c.store))
    mtime = (Path(a.path) / "x.npy").stat().st_mtime_ns
    assert normalize_features(snap, (c := _cfg(tmp_path, "standard")).normalize, Store(c.store)).path == a.path
    assert (Path(a.path) / "x.npy").stat().st_mtime_ns == mtime
    assert normalize_features(snap, (c := _cfg(tmp_path, "none")).normalize, Store(c.store)).path != a.path


def test_featureless_graph_gets_a_constant_feature_with_structural_none(tmp_path):
    cfg = load_config(None, ["normalize.structural=none"], base={"store": str(tmp_path / "store"), "data": {"name": "g"}})
    ref = normalize_features(_snapshot(tmp_path, None), cfg.normalize, Store(cfg.store))
    np.testing.assert_array_equal(np.load(Path(ref.path) / "x.npy"), np.ones((4, 1), np.float32))
    assert load_stats(ref).encoding() == "constant"


def test_standard_statistics_in_chunks_equal_numpy(monkeypatch):
    import tasks.normalize.features as normalize_mod

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1000, 7)) * [1, 10, 100, 0.1, 5, 1, 3] + 50).astype(np.float32)
    train = np.sort(rng.choice(1000, 600, replace=False))
    monkeypatch.setattr(normalize_mod, "_CHUNK_ROWS", 64)  # many chunks, a partial last one
    stats = normalize_mod.fit_stats(x, "standard", train)
    ref = x[train].astype(np.float64)
    np.testing.assert_allclose(stats.mean, ref.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.std, ref.std(axis=0), rtol=1e-9)


def test_l2_normalization_exact(tmp_path):
    ref = normalize_features(_snapshot(tmp_path, np.abs(X)), (c := _cfg(tmp_path, "l2")).normalize, Store(c.store))
    x = np.load(Path(ref.path) / "x.npy")
    np.testing.assert_allclose(x[0], np.array([1.0, 3.0, 0.0]) / np.sqrt(10), rtol=1e-6)
    np.testing.assert_array_equal(x[1], [0, 0, 0])  # zero row stays zero
    np.testing.assert_allclose(np.linalg.norm(x[[0, 2, 3]], axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("method", ["row", "l2", "standard", "none"])
def test_sparse_features_are_written_as_csr_equal_to_the_dense_normalization(tmp_path, method):
    """Below ``sparse_below`` density the features stay CSR; CSR minus the shift (standard only)
    equals the dense normalization of the same features."""
    from storage.arrays import has_sparse_x, open_csr

    x = np.zeros((4, 40), dtype=np.float32)
    x[0, [1, 5]] = [2.0, 1.0]
    x[2, [5, 30, 39]] = [1.0, 3.0, 1.0]
    x[3, 0] = 4.0
    snap = _snapshot(tmp_path, sp.csr_matrix(x))
    cfg = load_config(None, [f"normalize.method={method}", "normalize.sparse_below=0.1"],
                      base={"store": str(tmp_path / "store"), "data": {"name": "g"}})
    ref = normalize_features(snap, cfg.normalize, Store(cfg.store))
    assert has_sparse_x(ref.path) and not (Path(ref.path) / "x.npy").exists()
    stats = load_stats(ref)
    assert stats.sparse and stats.method == method
    csr = open_csr(ref.path)
    assert csr.nnz == 6  # zeros stay implicit, whatever the method
    got = csr.toarray()
    if method == "standard":
        got = got - np.load(Path(ref.path) / "x_shift.npy")
    np.testing.assert_allclose(got, apply_stats(x, stats), rtol=1e-6, atol=1e-6)
    # a dense threshold of 0 keeps the matrix dense, with the same values
    dense_cfg = load_config(None, [f"normalize.method={method}", "normalize.sparse_below=0"],
                            base={"store": str(tmp_path / "store"), "data": {"name": "g"}})
    dense_ref = normalize_features(snap, dense_cfg.normalize, Store(dense_cfg.store))
    np.testing.assert_allclose(np.load(Path(dense_ref.path) / "x.npy"), apply_stats(x, stats), rtol=1e-6, atol=1e-6)


def test_standard_statistics_of_sparse_features_equal_dense():
    rng = np.random.default_rng(3)
    x = (rng.random((300, 20)) < 0.05) * rng.integers(1, 5, (300, 20)).astype(np.float32)
    rows = np.arange(0, 300, 3)
    a, b = fit_stats(x, "standard", rows), fit_stats(sp.csr_matrix(x), "standard", rows)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.std, b.std, rtol=1e-7, atol=1e-12)
