"""The partition stage's refresh (issue 12): a grown snapshot keeps the previous clusters, and
full METIS runs when the refresh is off, degraded, too old, or the snapshot does not extend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from storage.fingerprint import fingerprint_value
from storage.latest import latest
from storage.snapshot import GraphTables, write_snapshot
from storage.store import SnapshotRef, Store
from tasks.config import PartitionConfig
from tasks.partition.partition import partition_graph

BLOCKS, BLOCK = 4, 60  # four dense communities of 60 nodes


def canonical(src, dst) -> tuple[np.ndarray, np.ndarray]:
    src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    keep = a != b
    n = int(b.max(initial=0)) + 1
    key = np.unique(a[keep] * n + b[keep])
    return (key // n).astype(np.int32), (key % n).astype(np.int32)


def snapshot(store: Store, src, dst, num_nodes: int, ids=None) -> SnapshotRef:
    """Publish a snapshot as ingest would (node ids ``ids``, default ``0..num_nodes-1``)."""
    src, dst = canonical(src, dst)
    ids = pa.array(np.arange(num_nodes) if ids is None else ids)
    labels, split = np.full(num_nodes, -1, np.int64), np.zeros(num_nodes, np.int8)
    fp = fingerprint_value(src, dst, ids.to_numpy(zero_copy_only=False), num_nodes)
    out = store.output("g", "snapshot", fp)
    with store.publish(out, params={}, inputs={}) as w:
        write_snapshot(w, GraphTables(src, dst, ids, labels, split, None))
        w.counts.update(num_nodes=num_nodes, num_edges=len(src))
    return SnapshotRef(path=out.location, name="g", fingerprint=fp)


def communities(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four communities (random dense blocks) joined by a few edges."""
    rng = np.random.default_rng(seed)
    src, dst = [], []
    for b in range(BLOCKS):
        s = rng.integers(0, BLOCK, 600) + b * BLOCK
        d = rng.integers(0, BLOCK, 600) + b * BLOCK
        src.append(s)
        dst.append(d)
    src.append(np.arange(BLOCKS - 1) * BLOCK)
    dst.append(np.arange(1, BLOCKS) * BLOCK)
    return np.concatenate(src), np.concatenate(dst)


def grow(src, dst, n_old: int, new: int, *, local: bool, seed: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """``new`` nodes appended, each with 4 edges: inside one community (``local``) or anywhere."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n_old, n_old + new)
    if local:
        block = rng.integers(0, BLOCKS, new)
        nbrs = block[:, None] * BLOCK + rng.integers(0, BLOCK, (new, 4))
    else:
        nbrs = rng.integers(0, n_old, (new, 4))
    return (np.concatenate([src, np.repeat(ids, 4)]), np.concatenate([dst, nbrs.ravel()]), n_old + new)


def config(**kw) -> PartitionConfig:
    return PartitionConfig(num_parts=BLOCKS, **kw)


def arrays(store: Store, ref) -> dict[str, np.ndarray]:
    out = store.open(ref.path)
    return {k: out.array(k, mmap=False) for k in ("perm", "assignment", "cluster_ptr", "node_cluster", "indptr", "indices")}


def assert_consistent(a: dict[str, np.ndarray], src, dst, n: int) -> None:
    """Cluster order follows the assignment, and the permuted CSR is exactly the graph."""
    perm, assignment = a["perm"], a["assignment"]
    assert sorted(perm.tolist()) == list(range(n))
    assert np.all(np.diff(assignment[perm]) >= 0)
    assert np.array_equal(a["node_cluster"], assignment[perm])
    assert np.array_equal(np.diff(a["cluster_ptr"]), np.bincount(assignment, minlength=len(a["cluster_ptr"]) - 1))
    s, d = canonical(src, dst)
    want = np.zeros((n, n), dtype=np.int64)
    want[s, d] = want[d, s] = 1
    got = np.zeros((n, n), dtype=np.int64)
    rows = np.repeat(np.arange(n), np.diff(a["indptr"]))
    np.add.at(got, (rows, a["indices"].astype(np.int64)), 1)
    assert np.array_equal(got, want[np.ix_(perm, perm)])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_growth_is_refreshed_old_nodes_keep_their_clusters(store):
    src, dst = communities()
    n0 = BLOCKS * BLOCK
    first = partition_graph(snapshot(store, src, dst, n0), config(), store)
    assert first.mode == "full" and "no previous partition" in first.reason
    src2, dst2, n1 = grow(src, dst, n0, 12, local=True)
    grown = snapshot(store, src2, dst2, n1)
    ref = partition_graph(grown, config(), store)
    assert ref.mode == "refreshed" and not ref.reused and ref.num_parts == BLOCKS
    old, new = arrays(store, first), arrays(store, ref)
    assert np.array_equal(new["assignment"][:n0], old["assignment"])
    assert_consistent(new, src2, dst2, n1)
    manifest = store.open(ref.path).manifest()
    lineage = manifest["lineage"]
    base = store.open(first.path).manifest()["counts"]
    assert lineage["mode"] == "refreshed" and lineage["refreshes"] == 1
    assert lineage["base_fingerprint"] == first.fingerprint
    assert lineage["base_edge_cut_fraction"] == pytest.approx(base["edge_cut_fraction"])
    assert lineage["base_imbalance"] == pytest.approx(base["balance"])
    assert lineage["edge_cut_fraction"] == pytest.approx(manifest["counts"]["edge_cut_fraction"])
    assert store.open(ref.path).json("stats")["lineage"] == lineage
    assert latest(store, "g", "partition").key == ref.fingerprint
    # the same snapshot again: the refreshed partition is the cache hit
    again = partition_graph(grown, config(), store)
    assert again.reused and again.fingerprint == ref.fingerprint and again.mode == "refreshed"
    # a forced full run of the same snapshot is not a cache hit on the refreshed one
    full = partition_graph(grown, config(refresh=False), store)
    assert full.mode == "full" and not full.reused and full.fingerprint != ref.fingerprint
    assert full.reason == "partition.refresh=false"
    assert_consistent(arrays(store, full), src2, dst2, n1)


def test_refresh_exceeding_the_edge_cut_limit_runs_full_metis(store):
    src, dst = communities()
    n0 = BLOCKS * BLOCK
    partition_graph(snapshot(store, src, dst, n0), config(), store)
    src2, dst2, n1 = grow(src, dst, n0, 40, local=False)  # random attachments cut across clusters
    ref = partition_graph(snapshot(store, src2, dst2, n1), config(max_cut_increase=0.0), store)
    assert ref.mode == "full" and "edge cut" in ref.reason and "max_cut_increase" in ref.reason
    lineage = store.open(ref.path).manifest()["lineage"]
    assert lineage["refreshes"] == 0 and lineage["base_fingerprint"] == ref.fingerprint
    assert_consistent(arrays(store, ref), src2, dst2, n1)


def test_max_refreshes_reached_runs_full_metis(store):
    src, dst = communities()
    n = BLOCKS * BLOCK
    cfg = config(max_refreshes=1, max_cut_increase=1.0)
    partition_graph(snapshot(store, src, dst, n), cfg, store)
    src, dst, n = grow(src, dst, n, 8, local=True, seed=1)
    assert partition_graph(snapshot(store, src, dst, n), cfg, store).mode == "refreshed"
    src, dst, n = grow(src, dst, n, 8, local=True, seed=2)
    ref = partition_graph(snapshot(store, src, dst, n), cfg, store)
    assert ref.mode == "full" and "max_refreshes=1" in ref.reason


def test_refresh_off_runs_full_metis(store):
    src, dst = communities()
    n0 = BLOCKS * BLOCK
    partition_graph(snapshot(store, src, dst, n0), config(), store)
    src2, dst2, n1 = grow(src, dst, n0, 12, local=True)
    ref = partition_graph(snapshot(store, src2, dst2, n1), config(refresh=False), store)
    assert ref.mode == "full" and ref.reason == "partition.refresh=false"


def test_snapshot_with_a_node_removed_runs_full_metis(store):
    src, dst = communities()
    n0 = BLOCKS * BLOCK
    partition_graph(snapshot(store, src, dst, n0), config(), store)
    keep = (src != n0 - 1) & (dst != n0 - 1)  # the last node (and its edges) removed, a new one added
    ids = np.concatenate([np.arange(n0 - 1), [10_000]])
    s2, d2 = np.concatenate([src[keep], [n0 - 1]]), np.concatenate([dst[keep], [0]])
    ref = partition_graph(snapshot(store, s2, d2, n0, ids=ids), config(), store)
    assert ref.mode == "full" and "does not extend" in ref.reason and f"{n0 - 1}" in ref.reason


def test_snapshot_with_an_edge_removed_runs_full_metis(store):
    src, dst = communities()
    n0 = BLOCKS * BLOCK
    partition_graph(snapshot(store, src, dst, n0), config(), store)
    s, d = canonical(src, dst)
    src2, dst2, n1 = grow(s[1:], d[1:], n0, 4, local=True)
    ref = partition_graph(snapshot(store, src2, dst2, n1), config(), store)
    assert ref.mode == "full" and "1 edges removed" in ref.reason
    assert f"({s[0]}, {d[0]})" in ref.reason


def test_changed_partition_settings_run_full_metis(store):
    src, dst = communities()
    n0 = BLOCKS * BLOCK
    partition_graph(snapshot(store, src, dst, n0), config(), store)
    src2, dst2, n1 = grow(src, dst, n0, 12, local=True)
    ref = partition_graph(snapshot(store, src2, dst2, n1), PartitionConfig(num_parts=BLOCKS, seed=3), store)
    assert ref.mode == "full" and "settings changed" in ref.reason and "seed" in ref.reason


def test_reporting_tags_and_markdown_say_which_mode_and_why(store):
    from flows.stages import partition_markdown, partition_tags
    from tasks.partition.partition import partition_lineage

    src, dst = communities()
    n0 = BLOCKS * BLOCK
    first = partition_graph(snapshot(store, src, dst, n0), config(), store)
    src2, dst2, n1 = grow(src, dst, n0, 12, local=True)
    ref = partition_graph(snapshot(store, src2, dst2, n1), config(), store)
    tags = partition_tags(ref)
    counts = store.open(ref.path).manifest()["counts"]
    assert tags["graphpipe.partition_mode"] == "refreshed"
    assert "12 new nodes placed" in tags["graphpipe.partition_reason"]
    assert float(tags["graphpipe.partition_edge_cut_fraction"]) == pytest.approx(counts["edge_cut_fraction"], abs=1e-6)
    base = store.open(first.path).manifest()["counts"]["edge_cut_fraction"]
    assert float(tags["graphpipe.partition_base_edge_cut_fraction"]) == pytest.approx(base, abs=1e-6)
    assert tags["graphpipe.partition_refreshes"] == "1"
    line = partition_markdown(partition_lineage(ref), ref)
    assert "**refreshed**" in line and "12 new nodes placed" in line and "last full METIS run" in line
    first_tags = partition_tags(first)
    assert first_tags["graphpipe.partition_mode"] == "full"
    assert "no previous partition" in partition_markdown(partition_lineage(first), first)


def test_refresh_on_a_bucket_store(s3_env, tmp_path):
    """The pointer and the previous partition are found through the store on object storage too."""
    store = Store(f"s3://{s3_env}/stores/refresh", cache_dir=tmp_path / "cache")
    src, dst = communities()
    n0 = BLOCKS * BLOCK
    first = partition_graph(snapshot(store, src, dst, n0), config(), store)
    src2, dst2, n1 = grow(src, dst, n0, 12, local=True)
    ref = partition_graph(snapshot(store, src2, dst2, n1), config(), store)
    assert first.path.startswith("s3://") and ref.mode == "refreshed"
    assert np.array_equal(arrays(store, ref)["assignment"][:n0], arrays(store, first)["assignment"])
    assert latest(store, "g", "partition").location == ref.path


def test_a_lost_previous_partition_or_a_bad_pointer_means_full_metis(store):
    from storage.latest import set_latest

    src, dst = communities()
    n0 = BLOCKS * BLOCK
    first = partition_graph(snapshot(store, src, dst, n0), config(), store)
    store.open(first.path).discard()
    assert latest(store, "g", "partition") is None
    src2, dst2, n1 = grow(src, dst, n0, 12, local=True)
    grown = snapshot(store, src2, dst2, n1)
    ref = partition_graph(grown, config(), store)
    assert ref.mode == "full" and "no previous partition" in ref.reason
    store.put_object("g", "LATEST_PARTITION.json", data=b"not json")
    assert latest(store, "g", "partition") is None
    set_latest(store, store.open(ref.path))
    assert latest(store, "g", "partition").key == ref.fingerprint


def test_a_refresh_reads_the_new_snapshots_edges_once_with_the_same_result(store, monkeypatch):
    """The extension check and the refresh's CSR share one read of tonight's edges; the refreshed
    assignment is the one :func:`refresh_assignment` gives on the snapshot's CSR."""
    import math

    import tasks.partition.extend as extend_mod
    import tasks.partition.partition as partition_mod
    from tasks.partition.csr import build_csr
    from tasks.partition.refresh import refresh_assignment

    src, dst = communities()
    n0 = BLOCKS * BLOCK
    first = partition_graph(snapshot(store, src, dst, n0), config(), store)
    src2, dst2, n1 = grow(src, dst, n0, 12, local=True)
    grown = snapshot(store, src2, dst2, n1)
    reads: list[str] = []
    for mod in (extend_mod, partition_mod):
        def counted(source, _orig=mod.read_edges):
            reads.append(str(source.location))
            return _orig(source)

        monkeypatch.setattr(mod, "read_edges", counted)
    ref = partition_graph(grown, config(), store)
    assert ref.mode == "refreshed"
    previous_snapshot = str(store.open(first.path).manifest()["inputs"]["snapshot"]["path"])
    assert sorted(reads) == sorted([grown.path, previous_snapshot])  # tonight's edges once, yesterday's once
    s, d = canonical(src2, dst2)
    indptr, indices = build_csr(s, d, n1)
    old = arrays(store, first)["assignment"]
    cap = max(1, math.ceil(config().refresh_cap * int(store.open(first.path).manifest()["counts"]["cluster_size_max"])))
    assert np.array_equal(arrays(store, ref)["assignment"], refresh_assignment(indptr, indices, old, BLOCKS, cap))
    assert_consistent(arrays(store, ref), src2, dst2, n1)
    assert "read_edges" in store.open(ref.path).json("stats")["seconds"]
