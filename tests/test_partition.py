"""Tests of the partition stage on hand-built graphs with exact answers, and on Cora."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import tasks.partition.layout as layout_mod
import tasks.partition.metis as metis_mod
import tasks.partition.partition as partition_mod
from storage.arrays import ClusterGraph, open_array, write_arrays
from storage.atomic import publish_dir, read_json
from storage.fingerprint import fingerprint_value
from storage.snapshot import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, GraphTables, write_snapshot
from storage.store import (
    FeaturesRef,
    PartitionRef,
    SnapshotRef,
    Store,
    is_complete,
    make_manifest,
    read_manifest,
    write_manifest,
)
from tasks.config import PartitionConfig, PipelineConfig
from tasks.errors import InputError
from tasks.partition.csr import build_csr
from tasks.partition.layout import layout_node_data, load_cluster_graph
from tasks.partition.partition import partition_graph, resolve_num_parts

CORA = Path("/work/shared/data/cora")
TWO_TRIANGLES = ([0, 0, 1, 2, 3, 3, 4], [1, 2, 2, 3, 4, 5, 5])


# -- helpers ----------------------------------------------------------------------------------
def canonical(src, dst) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges once each, ``src < dst``, sorted, no loops."""
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    keep = a != b
    n = int(max(b.max(initial=0), 0)) + 1
    key = np.unique(a[keep] * n + b[keep])
    return (key // n).astype(np.int32), (key % n).astype(np.int32)


def make_config(tmp_path: Path, num_parts: int | str = "auto", seed: int = 0) -> PipelineConfig:
    return PipelineConfig(store=str(tmp_path / "store"), partition=PartitionConfig(num_parts=num_parts, seed=seed))


def make_snapshot(
    config: PipelineConfig,
    src,
    dst,
    num_nodes: int,
    labels: np.ndarray | None = None,
    split: np.ndarray | None = None,
    name: str = "g",
) -> SnapshotRef:
    """Publish a snapshot directory (Parquet tables + manifest) as ingest would."""
    src, dst = canonical(src, dst)
    labels = np.full(num_nodes, -1, np.int64) if labels is None else np.asarray(labels)
    split = np.zeros(num_nodes, np.int8) if split is None else np.asarray(split, np.int8)
    tables = GraphTables(src, dst, pa.array(np.arange(num_nodes)), labels, split, None)
    fp = fingerprint_value(src, dst, labels, split, num_nodes)
    final = Store(config.store).snapshot_dir(name, fp)
    with publish_dir(final) as tmp:
        files = write_snapshot(tmp, tables)
        counts = {"num_nodes": num_nodes, "num_edges": len(src)}
        write_manifest(tmp, make_manifest("snapshot", fp, params={}, inputs={}, counts=counts, files=files))
    return SnapshotRef(path=str(final), name=name, fingerprint=fp)


def make_features(config: PipelineConfig, snapshot: SnapshotRef, x: np.ndarray) -> FeaturesRef:
    """Publish a normalized-features directory holding ``x.npy``."""
    fp = fingerprint_value(snapshot.fingerprint, x)
    final = Store(config.store).features_dir(snapshot.name, fp)
    with publish_dir(final) as tmp:
        files = write_arrays(tmp, x=x.astype(np.float32))
        write_manifest(tmp, make_manifest("features", fp, params={}, inputs={}, counts={}, files=files))
    return FeaturesRef(path=str(final), fingerprint=fp, method="none")


def dense(src, dst, n: int) -> np.ndarray:
    a = np.zeros((n, n), dtype=np.int64)
    a[np.asarray(src), np.asarray(dst)] = 1
    a[np.asarray(dst), np.asarray(src)] = 1
    np.fill_diagonal(a, 0)
    return a


def csr_to_dense(indptr: np.ndarray, indices: np.ndarray, n: int) -> np.ndarray:
    """Dense counts of a CSR (a repeated entry would show as 2)."""
    a = np.zeros((n, n), dtype=np.int64)
    rows = np.repeat(np.arange(n), np.diff(indptr))
    np.add.at(a, (rows, np.asarray(indices)), 1)
    return a


def rows_sorted(indptr: np.ndarray, indices: np.ndarray) -> bool:
    """Strictly increasing neighbours within every row."""
    idx = np.asarray(indices, dtype=np.int64)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    same_row = rows[1:] == rows[:-1]
    return bool(np.all(idx[1:][same_row] > idx[:-1][same_row]))


def random_community_graph(n: int, m: int, blocks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    block = np.arange(n) % blocks
    s = rng.integers(0, n, m)
    same = rng.random(m) < 0.8
    d = np.where(same, (s + blocks * rng.integers(1, 4, m)) % n, rng.integers(0, n, m))
    assert np.all(block[s[same]] == block[d[same]])
    return canonical(s, d)


# -- build_csr --------------------------------------------------------------------------------
def test_build_csr_matches_dense_reference_with_repeats_loops_and_both_directions():
    rng = np.random.default_rng(0)
    n = 30
    src = rng.integers(0, n, 200)
    dst = rng.integers(0, n, 200)
    src = np.concatenate([src, dst[:50], [3, 3]])  # reversed copies and a self-loop
    dst = np.concatenate([dst, src[:50], [3, 3]])
    indptr, indices = build_csr(src, dst, n)
    assert indptr.dtype == np.int64 and indices.dtype == np.int32
    assert indptr[0] == 0 and indptr[-1] == len(indices)
    got = csr_to_dense(indptr, indices, n)
    assert np.array_equal(got, dense(src, dst, n))  # symmetric, 0/1 (no repeats), no diagonal
    assert rows_sorted(indptr, indices)


def test_build_csr_of_canonical_edges_and_index_dtype():
    src, dst = canonical(*TWO_TRIANGLES)
    indptr, indices = build_csr(src, dst, 6)
    assert indptr.tolist() == [0, 2, 4, 7, 10, 12, 14]
    assert indices.tolist() == [1, 2, 0, 2, 0, 1, 3, 2, 4, 5, 3, 5, 3, 4]
    _, wide = build_csr(src, dst, 6, index_dtype=np.int64)
    assert wide.dtype == np.int64 and wide.tolist() == indices.tolist()


def test_build_csr_without_edges_and_with_isolated_nodes():
    indptr, indices = build_csr(np.zeros(0, np.int32), np.zeros(0, np.int32), 4)
    assert indptr.tolist() == [0, 0, 0, 0, 0] and len(indices) == 0
    indptr, indices = build_csr(np.array([1]), np.array([3]), 5)
    assert indptr.tolist() == [0, 0, 1, 1, 2, 2] and indices.tolist() == [3, 1]


def test_build_csr_rejects_ids_outside_the_graph():
    with pytest.raises(ValueError, match="outside the graph's 3 node ids"):
        build_csr(np.array([0, 1]), np.array([1, 3]), 3)
    with pytest.raises(ValueError, match="-1"):
        build_csr(np.array([-1]), np.array([1]), 3)


# -- resolve_num_parts ------------------------------------------------------------------------
def test_resolve_num_parts_auto_and_fixed():
    assert resolve_num_parts(1000, PartitionConfig(num_parts="auto", target_cluster_size=200)) == 5
    assert resolve_num_parts(1001, PartitionConfig(num_parts="auto", target_cluster_size=200)) == 6
    assert resolve_num_parts(7, PartitionConfig(num_parts="auto", target_cluster_size=200)) == 1
    assert resolve_num_parts(12, PartitionConfig(num_parts=12)) == 12


def test_more_parts_than_nodes_is_an_input_error_naming_both_numbers(tmp_path):
    config = make_config(tmp_path, num_parts=100)
    snap = make_snapshot(config, *TWO_TRIANGLES, 12)
    with pytest.raises(InputError) as err:
        partition_graph(snap, config.partition, Store(config.store))
    message = str(err.value)
    assert "partition.num_parts=100" in message and "12 nodes" in message and snap.path in message
    assert not Store(config.store).graph_dir("g").joinpath("partitions").exists()


@pytest.mark.parametrize("k", [0, -3])
def test_fewer_than_one_part_is_an_input_error(k):
    with pytest.raises(InputError, match=f"num_parts={k}"):
        resolve_num_parts(10, PartitionConfig(num_parts=k))


# -- partition_graph --------------------------------------------------------------------------
def test_two_triangles_joined_by_one_edge(tmp_path):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    ref = partition_graph(snap, config.partition, Store(config.store))
    assert isinstance(ref, PartitionRef) and ref.num_parts == 2 and is_complete(ref.path)
    d = ref.path
    assert open_array(d, "cluster_ptr").tolist() == [0, 3, 6]
    perm = open_array(d, "perm")
    assert perm.dtype == np.int64
    assert sorted(map(sorted, (perm[:3].tolist(), perm[3:].tolist()))) == [[0, 1, 2], [3, 4, 5]]
    assert open_array(d, "node_cluster").tolist() == [0, 0, 0, 1, 1, 1]
    assignment = open_array(d, "assignment")
    assert assignment.dtype == np.int32 and np.array_equal(assignment[perm], [0, 0, 0, 1, 1, 1])
    a = dense(*TWO_TRIANGLES, 6)
    indptr, indices = open_array(d, "indptr"), open_array(d, "indices")
    assert np.array_equal(csr_to_dense(indptr, indices, 6), a[np.ix_(perm, perm)])
    counts = read_manifest(d)["counts"]
    assert read_manifest(d)["kind"] == "partition"
    assert counts["edge_cut"] == 1 and counts["metis_edge_cut"] == 1
    assert counts["num_edges"] == 7 and counts["nnz"] == 14
    assert counts["edge_cut_fraction"] == pytest.approx(1 / 7)
    assert (counts["cluster_size_min"], counts["cluster_size_max"], counts["balance"]) == (3, 3, 1.0)
    assert counts["empty_clusters"] == 0
    assert {"seconds_metis", "seconds_build_csr", "seconds_permute", "seconds_total"} <= set(counts)
    stats = read_json(Path(d) / "stats.json")
    assert stats["cluster_sizes"] == [3, 3] and stats["edge_cut"] == 1 and stats["labels"] is None


@pytest.mark.parametrize("k", [1, 3, 5])
def test_permuted_csr_is_P_A_Pt(tmp_path, k):
    n = 60
    src, dst = random_community_graph(n, 300, blocks=4, seed=k)
    labels = np.arange(n) % 3
    split = np.where(np.arange(n) < 10, SPLIT_TRAIN, SPLIT_TEST)
    config = make_config(tmp_path, num_parts=k)
    snap = make_snapshot(config, src, dst, n, labels=labels, split=split)
    ref = partition_graph(snap, config.partition, Store(config.store))
    g = ClusterGraph(
        cluster_ptr=open_array(ref.path, "cluster_ptr"), node_cluster=open_array(ref.path, "node_cluster"),
        indptr=open_array(ref.path, "indptr"), indices=open_array(ref.path, "indices"),
        perm=open_array(ref.path, "perm"), x=np.zeros((n, 1)), y=np.zeros(n), split=np.zeros(n),
    )
    assignment = open_array(ref.path, "assignment")
    perm = np.asarray(g.perm)
    assert sorted(perm.tolist()) == list(range(n))
    assert np.all(np.diff(assignment[perm]) >= 0)  # cluster order
    assert np.array_equal(g.node_cluster, assignment[perm])
    assert np.array_equal(np.diff(g.cluster_ptr), np.bincount(assignment, minlength=k)) and g.num_parts == k
    for c in range(k):  # stable: snapshot order kept within each cluster
        assert np.all(np.diff(perm[g.cluster_ptr[c] : g.cluster_ptr[c + 1]]) > 0)
    a = dense(src, dst, n)
    assert g.indices.dtype == np.int32
    assert np.array_equal(csr_to_dense(g.indptr, g.indices, n), a[np.ix_(perm, perm)])
    assert rows_sorted(g.indptr, g.indices)
    cut = int((assignment[src] != assignment[dst]).sum())
    counts = read_manifest(ref.path)["counts"]
    assert counts["edge_cut"] == cut == counts["metis_edge_cut"]
    assert counts["edge_cut_fraction"] == pytest.approx(cut / len(src))
    stats = read_json(Path(ref.path) / "stats.json")
    expected = np.zeros((k, 3), np.int64)
    np.add.at(expected, (assignment, labels), 1)
    assert stats["labels"]["counts"] == expected.tolist() and stats["labels"]["num_classes"] == 3
    assert stats["split"]["train"] == np.bincount(assignment[:10], minlength=k).tolist()
    assert 0 <= stats["labels"]["mean_cluster_entropy_bits"] <= np.log2(3) + 1e-9
    if k == 1:
        assert perm.tolist() == list(range(n)) and cut == 0


def test_one_part_skips_metis(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("METIS must not run for one part")

    monkeypatch.setattr(partition_mod, "run_metis", boom)
    config = make_config(tmp_path, num_parts=1)
    ref = partition_graph(make_snapshot(config, *TWO_TRIANGLES, 6), config.partition, Store(config.store))
    assert open_array(ref.path, "assignment").tolist() == [0] * 6
    assert open_array(ref.path, "cluster_ptr").tolist() == [0, 6]


def test_cache_hit_returns_the_same_partition_without_recomputing(tmp_path, monkeypatch, caplog):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    first = partition_graph(snap, config.partition, Store(config.store))
    created = read_manifest(first.path)["created_at"]
    mtime = os.stat(Path(first.path) / "indices.npy").st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("recomputed on a cache hit")

    monkeypatch.setattr(partition_mod, "build_csr", boom)
    with caplog.at_level(logging.INFO, logger="tasks.partition.partition"):
        second = partition_graph(snap, config.partition, Store(config.store))
    assert second == first
    assert "cache hit" in caplog.text
    assert read_manifest(second.path)["created_at"] == created
    assert os.stat(Path(second.path) / "indices.npy").st_mtime_ns == mtime
    monkeypatch.undo()

    changed = make_snapshot(config, TWO_TRIANGLES[0] + [0], TWO_TRIANGLES[1] + [5], 6)
    assert changed.fingerprint != snap.fingerprint
    third = partition_graph(changed, config.partition, Store(config.store))
    assert third.path != first.path and third.fingerprint != first.fingerprint
    assert read_manifest(third.path)["counts"]["num_edges"] == 8
    other_seed = partition_graph(snap, (c := make_config(tmp_path, num_parts=2, seed=1)).partition, Store(c.store))
    assert other_seed.path != first.path


def test_auto_num_parts_with_the_same_result_shares_the_cache(tmp_path):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    fixed = partition_graph(snap, config.partition, Store(config.store))
    auto = config.model_copy(update={"partition": PartitionConfig(num_parts="auto", target_cluster_size=3)})
    assert partition_graph(snap, auto.partition, Store(auto.store)) == fixed


def test_progress_logs_before_and_after_metis(tmp_path, caplog):
    config = make_config(tmp_path, num_parts=2)
    with caplog.at_level(logging.INFO, logger="graphpipe.progress"):
        partition_graph(make_snapshot(config, *TWO_TRIANGLES, 6), config.partition, Store(config.store))
    assert "METIS running" in caplog.text and "METIS done in" in caplog.text


def test_metis_runs_in_a_child_process_that_reports_elapsed_time(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(metis_mod, "METIS_HEARTBEAT_SECONDS", 0.05)  # the child takes longer to start
    config = make_config(tmp_path, num_parts=2)
    with caplog.at_level(logging.INFO, logger="graphpipe.progress"):
        ref = partition_graph(make_snapshot(config, *TWO_TRIANGLES, 6), config.partition, Store(config.store))
    assert "s elapsed (2 parts, 6 nodes)" in caplog.text
    published = sorted(p.name for p in Path(ref.path).iterdir())
    assert not [p for p in published if p.startswith(".")]  # the CSR handed to METIS is not published
    assert sorted(read_manifest(ref.path)["files"]) == sorted(set(published) - {"manifest.json"})


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_a_failing_metis_process_is_a_clear_error_and_publishes_nothing(tmp_path, monkeypatch):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    monkeypatch.setattr(metis_mod.sys, "executable", _fake_python(tmp_path, "echo 'METIS: out of memory' >&2; exit 3"))
    with pytest.raises(RuntimeError, match=r"METIS failed \(exit status 3\) on 6 nodes, 2 parts: METIS: out of memory"):
        partition_graph(snap, config.partition, Store(config.store))
    assert _no_partition_published(config)


def test_an_interrupted_partition_stage_kills_metis(tmp_path, monkeypatch, caplog):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    pid_file = tmp_path / "metis.pid"
    monkeypatch.setattr(metis_mod.sys, "executable", _fake_python(tmp_path, f"echo $$ > {pid_file}; exec sleep 20"))
    monkeypatch.setattr(metis_mod, "METIS_HEARTBEAT_SECONDS", 0.2)

    class Interrupt(logging.Handler):
        def emit(self, record):
            if "elapsed" in record.getMessage():
                raise KeyboardInterrupt  # what a cancelled run raises in the stage's thread

    handler = Interrupt()
    metis_mod.PROGRESS.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="graphpipe.progress"), pytest.raises(KeyboardInterrupt):
            partition_graph(snap, config.partition, Store(config.store))
    finally:
        metis_mod.PROGRESS.removeHandler(handler)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    assert _no_partition_published(config)


def _no_partition_published(config: PipelineConfig) -> bool:
    parts = Store(config.store).graph_dir("g") / "partitions"
    return not parts.exists() or list(parts.iterdir()) == []


def test_failure_midway_publishes_no_partial_directory(tmp_path):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    (Path(snap.path) / "nodes.parquet").write_bytes(b"not parquet at all")  # read after METIS
    with pytest.raises(pa.ArrowInvalid):
        partition_graph(snap, config.partition, Store(config.store))
    assert _no_partition_published(config)  # neither the final nor a temporary directory


def test_failure_after_arrays_were_written_removes_them(tmp_path, monkeypatch):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    seen: list[str] = []

    def failing_read_nodes(path):
        parts = Store(config.store).graph_dir("g") / "partitions"
        seen.extend(sorted(p.name for p in parts.glob("*/*.npy")))
        raise OSError("disk went away")

    monkeypatch.setattr(partition_mod, "read_nodes", failing_read_nodes)
    with pytest.raises(OSError, match="disk went away"):
        partition_graph(snap, config.partition, Store(config.store))
    assert "indices.npy" in seen and "perm.npy" in seen  # a partial directory existed...
    assert _no_partition_published(config)  # ...and is gone


def test_edges_outside_the_manifest_node_count_are_an_input_error(tmp_path):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    manifest = read_manifest(snap.path)
    manifest["counts"]["num_nodes"] = 5
    write_manifest(snap.path, manifest)
    with pytest.raises(InputError, match="edges.parquet: edge endpoint 5 is outside"):
        partition_graph(snap, config.partition, Store(config.store))
    assert _no_partition_published(config)


# -- layout_node_data -------------------------------------------------------------------------
def test_layout_node_data_follows_the_permutation(tmp_path, monkeypatch, caplog):
    n = 50
    src, dst = random_community_graph(n, 200, blocks=5, seed=7)
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 4, n)
    split = rng.integers(0, 4, n).astype(np.int8)
    x = rng.standard_normal((n, 7)).astype(np.float32)
    config = make_config(tmp_path, num_parts=4)
    snap = make_snapshot(config, src, dst, n, labels=labels, split=split)
    feats = make_features(config, snap, x)
    part = partition_graph(snap, config.partition, Store(config.store))
    monkeypatch.setattr(layout_mod, "_LAYOUT_CHUNK_BYTES", 3 * 7 * 4)  # several slices of 3 rows
    nd = layout_node_data(part, snap, feats, Store(config.store))
    perm = open_array(part.path, "perm")
    xs, ys, ss = open_array(nd.path, "x"), open_array(nd.path, "y"), open_array(nd.path, "split")
    assert xs.dtype == np.float32 and ys.dtype == np.int64 and ss.dtype == np.int8
    assert np.array_equal(xs, x[perm]) and np.array_equal(ys, labels[perm]) and np.array_equal(ss, split[perm])
    manifest = read_manifest(nd.path)
    assert manifest["kind"] == "node_data" and manifest["counts"]["num_features"] == 7
    assert manifest["counts"]["train_nodes"] == int((split == SPLIT_TRAIN).sum())
    assert manifest["counts"]["val_nodes"] == int((split == SPLIT_VAL).sum())
    assert nd.partition == part

    with caplog.at_level(logging.INFO, logger="tasks.partition.layout"):
        assert layout_node_data(part, snap, feats, Store(config.store)) == nd
    assert "cache hit" in caplog.text

    g = load_cluster_graph(nd)
    assert isinstance(g, ClusterGraph)
    assert (g.num_nodes, g.num_parts, g.num_features) == (n, 4, 7)
    assert np.array_equal(g.x, x[perm])


def test_layout_rejects_features_of_another_size(tmp_path):
    config = make_config(tmp_path, num_parts=2)
    snap = make_snapshot(config, *TWO_TRIANGLES, 6)
    feats = make_features(config, snap, np.ones((5, 3)))
    part = partition_graph(snap, config.partition, Store(config.store))
    with pytest.raises(InputError, match=r"\(5, 3\)"):
        layout_node_data(part, snap, feats, Store(config.store))
    assert not (Store(config.store).graph_dir("g") / "node_data").exists() or not any(
        (Store(config.store).graph_dir("g") / "node_data").iterdir()
    )


# -- real data --------------------------------------------------------------------------------
@pytest.mark.skipif(not CORA.is_dir(), reason="Cora not available")
def test_cora_eight_parts_cut_and_balance(tmp_path):
    edges = pacsv.read_csv(CORA / "edges.csv")
    nodes = pq.read_table(CORA / "nodes.parquet", columns=["node_id", "label", "split"])
    n = nodes.num_rows
    assert nodes.column("node_id").to_numpy().tolist() == list(range(n))
    codes = {"train": SPLIT_TRAIN, "val": SPLIT_VAL, "test": SPLIT_TEST}
    split = np.array([codes.get(s, 0) for s in nodes.column("split").to_pylist()], np.int8)
    labels = nodes.column("label").to_numpy()
    config = make_config(tmp_path, num_parts=8)
    snap = make_snapshot(
        config, edges.column("src").to_numpy(), edges.column("dst").to_numpy(), n, labels, split, name="cora"
    )
    ref = partition_graph(snap, config.partition, Store(config.store))
    counts = read_manifest(ref.path)["counts"]
    assert counts["num_nodes"] == 2708 and counts["num_edges"] == 5278 and counts["nnz"] == 10556
    assert counts["edge_cut_fraction"] < 0.25
    assert counts["balance"] <= 1.1
    assert counts["edge_cut"] == counts["metis_edge_cut"]
    stats = read_json(Path(ref.path) / "stats.json")
    label_counts = np.array(stats["labels"]["counts"])
    assert label_counts.shape == (8, 7)
    assert label_counts.sum(axis=0).tolist() == [351, 217, 418, 818, 426, 298, 180]
    # METIS clusters of a citation graph are purer than the whole graph
    assert stats["labels"]["mean_cluster_entropy_bits"] < stats["labels"]["global_entropy_bits"]
    assert sum(stats["split"]["train"]) == 140


def test_layout_of_sparse_features_permutes_csr_rows(tmp_path, monkeypatch):
    """Sparse features (x_* CSR files) are laid out as CSR rows in cluster order, slice by slice,
    with the standardization shift carried along."""
    import scipy.sparse as sp

    from storage.arrays import CSRRows, write_csr

    n = 50
    src, dst = random_community_graph(n, 200, blocks=5, seed=3)
    x = sp.random(n, 9, density=0.2, format="csr", dtype=np.float32, random_state=2)
    config = make_config(tmp_path, num_parts=4)
    snap = make_snapshot(config, src, dst, n)
    fp = fingerprint_value(snap.fingerprint, "sparse")
    final = Store(config.store).features_dir(snap.name, fp)
    shift = np.arange(9, dtype=np.float32)
    with publish_dir(final) as tmp:
        files = write_csr(tmp, x.indptr, x.indices, x.data, x.shape)
        np.save(tmp / "x_shift.npy", shift)
        write_manifest(tmp, make_manifest("features", fp, params={}, inputs={}, counts={}, files=files))
    feats = FeaturesRef(path=str(final), fingerprint=fp, method="standard")
    part = partition_graph(snap, config.partition, Store(config.store))
    monkeypatch.setattr(layout_mod, "_LAYOUT_CHUNK_BYTES", 40)  # several slices
    nd = layout_node_data(part, snap, feats, Store(config.store))
    perm = open_array(part.path, "perm")
    g = load_cluster_graph(nd)
    assert isinstance(g.x, CSRRows) and g.sparse_x and g.num_features == 9
    assert not (Path(nd.path) / "x.npy").exists()
    np.testing.assert_array_equal(g.x.toarray(), x.toarray()[perm])
    np.testing.assert_array_equal(g.x.rows(10, 20).toarray(), x.toarray()[perm][10:20])
    np.testing.assert_array_equal(g.x[10:20], x.toarray()[perm][10:20])  # reads like dense rows
    np.testing.assert_array_equal(g.x[np.array([7, 3, 7])], x.toarray()[perm][[7, 3, 7]])
    np.testing.assert_array_equal(g.x[5], x.toarray()[perm][5])
    np.testing.assert_array_equal(g.x_shift, shift)
    assert read_manifest(nd.path)["counts"]["feature_nnz"] == x.nnz
