import json
from pathlib import Path

import numpy as np
import pytest

from storage.atomic import publish_dir, write_json
from storage.fingerprint import fingerprint_file, fingerprint_value
from storage.store import SnapshotRef, Store, is_complete, make_manifest, write_manifest


def test_publish_dir_is_all_or_nothing(tmp_path):
    final = tmp_path / "out"
    with publish_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with publish_dir(tmp_path / "broken") as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("disk full")
    assert not (tmp_path / "broken").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_publish_dir_replace_keeps_old_until_new_is_complete(tmp_path):
    final = tmp_path / "out"
    with publish_dir(final) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(ValueError):
        with publish_dir(final, replace=True) as tmp:
            (tmp / "v").write_text("2")
            raise ValueError
    assert (final / "v").read_text() == "1"
    with publish_dir(final, replace=True) as tmp:
        (tmp / "v").write_text("2")
    assert (final / "v").read_text() == "2"
    with publish_dir(final) as tmp:  # content-addressed: an existing directory wins
        (tmp / "v").write_text("3")
    assert (final / "v").read_text() == "2"


def test_fingerprints_follow_content(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    a = fingerprint_file(f)
    f.write_bytes(b"abd")
    assert fingerprint_file(f) != a
    assert fingerprint_value({"b": 1, "a": 2}) == fingerprint_value({"a": 2, "b": 1})
    assert fingerprint_value(1) != fingerprint_value("1")


def test_manifest_marks_completeness_and_current_pointer(tmp_path):
    store = Store(tmp_path)
    d = store.snapshot_dir("g", "fp1")
    d.mkdir(parents=True)
    (d / "x").write_text("x")
    assert not is_complete(d)
    write_manifest(d, make_manifest("snapshot", "fp1", params={}, inputs={}, counts={}, files=["x"]))
    assert is_complete(d)
    (d / "x").unlink()
    assert not is_complete(d)  # a listed file went missing
    (d / "x").write_text("x")
    ref = SnapshotRef(str(d), "g", "fp1")
    store.set_current(ref)
    store.set_current(ref)
    assert store.current_snapshot("g") == ref
    assert [h["fingerprint"] for h in store.history("g")] == ["fp1"]
    write_json(d / "manifest.json", {**json.loads((d / "manifest.json").read_text()), "format_version": 0})
    assert store.current_snapshot("g") is None  # an old format is not trusted


def _rss_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def test_mapped_arrays_read_like_np_load(tmp_path):
    from storage.arrays import map_array, write_arrays

    rng = np.random.default_rng(0)
    a = rng.standard_normal((100, 7)).astype(np.float32)
    write_arrays(tmp_path, a=a, empty=np.zeros((0, 3), np.int64), f=np.asfortranarray(a))
    for name, expected in (("a", a), ("empty", np.zeros((0, 3), np.int64)), ("f", a)):
        arr, _ = map_array(tmp_path / f"{name}.npy")
        assert arr.dtype == expected.dtype and arr.shape == expected.shape
        np.testing.assert_array_equal(arr, expected)
        assert not arr.flags.writeable


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_release_drops_mapped_pages_but_keeps_the_data(tmp_path):
    from storage.arrays import map_array, release_pages, scratch_array, write_arrays

    n = 8_000_000  # 32 MB of float32
    write_arrays(tmp_path, big=np.arange(n, dtype=np.float32))
    arr, mapping = map_array(tmp_path / "big.npy")
    before = _rss_file_kb()
    assert float(arr.sum(dtype=np.float64)) == float(n) * (n - 1) / 2  # touches every page
    touched = _rss_file_kb()
    assert touched - before > 24_000
    release_pages(mapping)
    assert _rss_file_kb() < touched - 24_000
    assert arr[n - 1] == n - 1  # faults back in

    out, out_map = scratch_array((n,), np.float32, tmp_path)
    out[:] = 7.0
    release_pages(out_map)  # written pages of a shared file map survive MADV_DONTNEED
    assert float(out.min()) == 7.0 and float(out.max()) == 7.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npy"]  # the scratch file is unlinked


@pytest.mark.parametrize("sparse", [False, True])
def test_read_feature_rows_equals_indexing_the_whole_matrix(tmp_path, monkeypatch, sparse):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import scipy.sparse as sp

    from storage.snapshot import GraphTables, read_feature_rows, read_features, write_snapshot

    rng = np.random.default_rng(0)
    n = 150_000  # more than one record batch
    dense = (rng.random((n, 6)) * (rng.random((n, 6)) < 0.3)).astype(np.float32)
    x = sp.csr_matrix(dense) if sparse else dense
    write_snapshot(tmp_path, GraphTables(np.array([0]), np.array([1]), pa.array(np.arange(n)), np.zeros(n, np.int64),
                                         np.zeros(n, np.int8), x))
    assert pq.ParquetFile(tmp_path / "features.parquet").metadata.num_rows == n
    rows = np.array([n - 1, 5, 70_000, 5, 0, 131_071, 131_072])
    got = read_feature_rows(tmp_path, rows)
    got = got.toarray() if sparse else got
    np.testing.assert_array_equal(got, dense[rows])
    whole = read_features(tmp_path)
    np.testing.assert_array_equal(whole.toarray() if sparse else whole, dense)
