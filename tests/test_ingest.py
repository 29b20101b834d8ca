"""Tests of tasks.ingest.snapshot: tiny hand-made inputs with exact expected snapshots, every InputError
(each naming the file and the row or column), atomic publishing, and the real datasets."""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

import tasks.ingest.snapshot as ingest_module
import tasks.ingest.files as input_files
from storage.snapshot import SPLIT_NONE, SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, read_edges, read_features, read_node_ids, read_nodes
from storage.store import Store, is_complete, read_manifest
from tasks.config import PipelineConfig
from tasks.errors import InputError
from tasks.ingest.snapshot import canonical_edges, ingest_counts, ingest_graph

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the project


# -- helpers ------------------------------------------------------------------------------------


def config(tmp_path: Path, split: dict | None = None, **data) -> PipelineConfig:
    data = {"name": "g", **data}
    for key in ("edges",):
        data[key] = [str(p) for p in data[key]]
    for key in ("nodes", "features"):
        if data.get(key) is not None:
            data[key] = str(data[key])
    return PipelineConfig.model_validate({"store": str(tmp_path / "store"), "data": data, "split": split or {}})


def ingest(tmp_path: Path, split: dict | None = None, **data) -> SimpleNamespace:
    ref = ingest_graph((c := config(tmp_path, split, **data)).data, c.split, Store(c.store))
    src, dst = read_edges(ref.path)
    labels, codes = read_nodes(ref.path)
    return SimpleNamespace(
        ref=ref,
        edges=list(zip(src.tolist(), dst.tolist())),
        ids=read_node_ids(ref.path).to_pylist(),
        labels=labels.tolist(),
        split=codes.tolist(),
        x=read_features(ref.path),
        counts=ingest_counts(ref),
        manifest=read_manifest(ref.path),
    )


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def parquet(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def error(tmp_path: Path, split: dict | None = None, **data) -> str:
    with pytest.raises(InputError) as info:
        ingest_graph((c := config(tmp_path, split, **data)).data, c.split, Store(c.store))
    return str(info.value)


# The reference graph: ids 10, 20, 30, 40 (-> 0..3); rows: an edge, its reverse, a self-loop, a new
# edge, an exact duplicate and one more edge. Kept: (0,1), (1,2), (2,3).
ROWS = [(10, 20), (20, 10), (10, 10), (30, 20), (10, 20), (40, 30)]
EXPECTED_EDGES = [(0, 1), (1, 2), (2, 3)]


def rows_text(sep: str, rows=ROWS) -> str:
    return "".join(f"{a}{sep}{b}\n" for a, b in rows)


# -- node ids and edges -------------------------------------------------------------------------


def test_noncontiguous_int_ids_without_node_table(tmp_path):
    edges = write(tmp_path / "e.csv", "src,dst\n" + rows_text(","))
    g = ingest(tmp_path, edges=[edges])
    assert g.ids == [10, 20, 30, 40]
    assert g.edges == EXPECTED_EDGES
    c = g.counts
    assert (c["edge_rows_total"], c["self_loops_dropped"], c["duplicates_dropped"], c["undirected_edges"]) == (6, 1, 2, 3)
    assert (c["num_nodes"], c["node_table_rows"], c["nodes_added_from_edges"], c["isolated_nodes"]) == (4, 0, 0, 0)
    assert c["edge_rows_per_file"] == [{"file": str(edges), "rows": 6}]
    assert (c["num_features"], c["feature_storage"], c["num_classes"], c["labeled_nodes"]) == (0, "none", 0, 0)
    assert c["split_source"] == "none" and c["split_sizes"] == {"train": 0, "val": 0, "test": 0}
    assert g.x is None and g.labels == [-1] * 4 and g.split == [0] * 4


def test_string_ids_follow_node_table_order(tmp_path):
    nodes = write(tmp_path / "n.csv", "node_id,label\ncarol,0\nalice,1\nbob,0\ndave,\n")
    edges = write(tmp_path / "e.csv", "src,dst\nalice,bob\nbob,carol\ncarol,alice\nalice,alice\n")
    g = ingest(tmp_path, edges=[edges], nodes=nodes)
    assert g.ids == ["carol", "alice", "bob", "dave"]
    # alice-bob = (1,2), bob-carol = (0,2), carol-alice = (0,1); the self-loop is dropped
    assert g.edges == [(0, 1), (0, 2), (1, 2)]
    assert g.labels == [0, 1, 0, -1]
    assert g.counts["isolated_nodes"] == 1 and g.counts["id_type"] == "string"
    assert g.counts["self_loops_dropped"] == 1


def test_noncontiguous_int_ids_follow_node_table_order(tmp_path):
    nodes = parquet(tmp_path / "n.parquet", {"node_id": pa.array([40, 10, 30, 20, 99], pa.int32())})
    edges = write(tmp_path / "e.csv", "src,dst\n" + rows_text(","))
    g = ingest(tmp_path, edges=[edges], nodes=nodes)
    assert g.ids == [40, 10, 30, 20, 99]
    # 10-20 = (1,3), 30-20 = (2,3), 40-30 = (0,2)
    assert g.edges == [(0, 2), (1, 3), (2, 3)]
    assert g.counts["isolated_nodes"] == 1 and g.counts["num_nodes"] == 5


def test_string_node_ids_with_integer_looking_edges_compare_as_strings(tmp_path):
    nodes = parquet(tmp_path / "n.parquet", {"node_id": ["07", "10", "x"]})
    edges = write(tmp_path / "e.csv", "src,dst\n07,10\n10,x\n")
    g = ingest(tmp_path, edges=[edges], nodes=nodes)
    assert g.ids == ["07", "10", "x"] and g.edges == [(0, 1), (1, 2)]


def test_int_node_ids_with_string_edge_ids_compare_as_strings(tmp_path):
    nodes = parquet(tmp_path / "n.parquet", {"node_id": [1, 2, 3]})
    edges = parquet(tmp_path / "e.parquet", {"src": ["1", "2"], "dst": ["2", "3"]})
    g = ingest(tmp_path, edges=[edges], nodes=nodes)
    assert g.ids == [1, 2, 3] and g.edges == [(0, 1), (1, 2)]


def test_canonical_edges_dedup_is_exact():
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 50, 2000), rng.integers(0, 50, 2000)
    out_src, out_dst, loops, dups = canonical_edges(src, dst, 50)
    pairs = {(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist()) if a != b}
    assert list(zip(out_src.tolist(), out_dst.tolist())) == sorted(pairs)
    assert loops == int((src == dst).sum()) and dups == 2000 - loops - len(pairs)
    assert out_src.dtype == np.int32


# -- formats ------------------------------------------------------------------------------------

WHITESPACE = (
    "# Undirected graph: comment lines start with #\n"
    "# FromNodeId\tToNodeId\n"
    "10 \t 20\n"
    "  20\t10  \n"
    "\n"
    "10 10\r\n"
    "30    20\n"
    "   # a comment in the middle\n"
    "10\t20\n"
    "40 30"  # no final newline
)


def _parquet_edges(path: Path) -> Path:
    a, b = zip(*ROWS)
    return parquet(path, {"weight": [1.0] * len(ROWS), "src": pa.array(a, pa.int32()), "dst": pa.array(b, pa.int32())})


FORMATS = {
    "csv": lambda d: write(d / "e.csv", "src,dst,weight\n" + "".join(f"{a},{b},1.5\n" for a, b in ROWS)),
    "csv_no_header": lambda d: write(d / "e.csv", rows_text(",")),
    "csv_source_target": lambda d: write(d / "e.csv", "weight,source,target\n" + "".join(f"0.5,{a},{b}\n" for a, b in ROWS)),
    "csv_gz": lambda d: write(d / "e.csv.gz", "src,dst\n" + rows_text(",")),
    "tsv": lambda d: write(d / "e.tsv", "src\tdst\n" + rows_text("\t")),
    "tsv_gz_no_header": lambda d: write(d / "e.tsv.gz", rows_text("\t")),
    "whitespace_txt": lambda d: write(d / "e.txt", WHITESPACE),
    "whitespace_edges": lambda d: write(d / "graph.edges", WHITESPACE),
    "whitespace_txt_gz": lambda d: write(d / "e.txt.gz", WHITESPACE),
    "whitespace_header": lambda d: write(d / "e.txt", "# c\nsrc dst\n" + rows_text(" ")),
    "parquet": lambda d: _parquet_edges(d / "e.parquet"),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_gives_the_same_snapshot(tmp_path, fmt):
    g = ingest(tmp_path, edges=[FORMATS[fmt](tmp_path)])
    assert g.ids == [10, 20, 30, 40]
    assert g.edges == EXPECTED_EDGES
    assert g.counts["edge_rows_total"] == 6
    assert (g.counts["self_loops_dropped"], g.counts["duplicates_dropped"]) == (1, 2)


@pytest.mark.parametrize("fmt", ["csv", "whitespace_txt_gz"])
def test_small_blocks_give_the_same_snapshot(tmp_path, fmt, monkeypatch):
    monkeypatch.setattr(input_files, "BLOCK_SIZE", 24)
    g = ingest(tmp_path, edges=[FORMATS[fmt](tmp_path)])
    assert g.edges == EXPECTED_EDGES and g.counts["edge_rows_total"] == 6


def test_same_content_in_another_format_is_the_same_graph(tmp_path):
    a = ingest(tmp_path / "a", edges=[FORMATS["parquet"](tmp_path)])
    b = ingest(tmp_path / "b", edges=[FORMATS["whitespace_txt_gz"](tmp_path)])
    assert (a.ids, a.edges) == (b.ids, b.edges)


def test_explicit_edge_format_and_columns(tmp_path):
    edges = write(tmp_path / "edges.dat", "a\tfrom\tto\nx\t10\t20\ny\t30\t20\n")
    g = ingest(tmp_path, edges=[edges], edge_format="tsv", src_column="from", dst_column="to")
    assert g.ids == [10, 20, 30] and g.edges == [(0, 1), (1, 2)]


def test_multiple_edge_files_are_concatenated(tmp_path):
    one = write(tmp_path / "one.csv", "src,dst\n1,2\n2,3\n")
    two = write(tmp_path / "two.txt", "# more\n3 2\n3 4\n5 5\n")
    g = ingest(tmp_path, edges=[one, two])
    assert g.ids == [1, 2, 3, 4, 5]
    assert g.edges == [(0, 1), (1, 2), (2, 3)]
    assert g.counts["edge_rows_per_file"] == [{"file": str(one), "rows": 2}, {"file": str(two), "rows": 3}]
    assert (g.counts["edge_rows_total"], g.counts["duplicates_dropped"], g.counts["self_loops_dropped"]) == (5, 1, 1)
    assert g.counts["isolated_nodes"] == 1


def test_non_integer_edge_id_in_a_later_csv_block(tmp_path, monkeypatch):
    monkeypatch.setattr(input_files, "BLOCK_SIZE", 16)  # the first blocks hold integers only
    edges = write(tmp_path / "e.csv", "src,dst\n1,2\n2,3\n3,1\n1,2\n2,3\n3,x\n")
    msg = error(tmp_path, edges=[edges])
    assert msg.startswith(f"{edges}: row 6: node id 'x' in column 'dst' is not an integer, but 5 of 6 ids in the column are")
    nodes = parquet(tmp_path / "n.parquet", {"node_id": ["1", "2", "3", "x"]})
    g = ingest(tmp_path, edges=[edges], nodes=nodes)
    assert g.edges == [(0, 1), (0, 2), (1, 2), (2, 3)]
    nodes = parquet(tmp_path / "n.parquet", {"node_id": [1, 2, 3]})
    msg = error(tmp_path, edges=[edges], nodes=nodes)
    assert msg.startswith(f"{edges}: row 6: node id 'x' in column dst is not in the node table {nodes}")


# -- node table: labels, split, features --------------------------------------------------------


def test_string_labels_become_sorted_class_codes(tmp_path):
    nodes = parquet(tmp_path / "n.parquet", {"id": [5, 6, 7, 8], "label": ["dog", None, "cat", "emu"]})
    edges = write(tmp_path / "e.csv", "5,6\n7,8\n")
    g = ingest(tmp_path, edges=[edges], nodes=nodes)
    assert g.labels == [1, -1, 0, 2]
    assert g.manifest["label_names"] == ["cat", "dog", "emu"]
    assert g.counts["num_classes"] == 3 and g.counts["labeled_nodes"] == 3 and g.counts["label_counts"] == [1, 1, 1]


def test_given_split_column(tmp_path):
    nodes = write(
        tmp_path / "n.csv", "node_id,label,split\n0,0,train\n1,1,val\n2,1,test\n3,0,\n4,-1,\n"
    )
    g = ingest(tmp_path, edges=[write(tmp_path / "e.csv", "0,1\n1,2\n")], nodes=nodes)
    assert g.split == [SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST, SPLIT_NONE, SPLIT_NONE]
    assert g.labels == [0, 1, 1, 0, -1]
    assert g.counts["split_source"] == "given" and g.counts["split_sizes"] == {"train": 1, "val": 1, "test": 1}


def test_given_masks(tmp_path):
    nodes = parquet(
        tmp_path / "n.parquet",
        {"node_id": [0, 1, 2, 3], "label": [0, 1, 0, 1], "train_mask": [True, False, False, False],
         "val_mask": [False, True, False, False], "test_mask": [False, False, True, None]},
    )
    g = ingest(tmp_path, edges=[write(tmp_path / "e.csv", "0,1\n2,3\n")], nodes=nodes)
    assert g.split == [SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST, SPLIT_NONE]
    assert g.x is None  # boolean masks are not features


def _class_nodes(tmp_path: Path, sizes: list[int]) -> tuple[Path, Path, list[int]]:
    labels = [c for c, n in enumerate(sizes) for _ in range(n)]
    ids = list(range(len(labels)))
    nodes = parquet(tmp_path / "n.parquet", {"node_id": ids, "label": labels, "split": [""] * len(ids)})
    edges = write(tmp_path / "e.csv", "".join(f"{i},{i + 1}\n" for i in ids[:-1]))
    return nodes, edges, labels


def test_generated_per_class_split_is_exact_and_reproducible(tmp_path):
    nodes, edges, labels = _class_nodes(tmp_path, [10, 8, 3])
    split = {"method": "per_class", "train_per_class": 2, "val_per_class": 3, "seed": 7}
    g = ingest(tmp_path, split, edges=[edges], nodes=nodes)
    per_class = np.zeros((3, 4), int)
    np.add.at(per_class, (np.array(labels), np.array(g.split)), 1)
    # columns: none, train, val, test; the 3-node class gets 2 train, 1 val, no test
    assert per_class.tolist() == [[0, 2, 3, 5], [0, 2, 3, 3], [0, 2, 1, 0]]
    assert g.counts["split_source"] == "generated:per_class"
    assert g.counts["split_sizes"] == {"train": 6, "val": 7, "test": 8}
    again = ingest(tmp_path / "again", split, edges=[edges], nodes=nodes)
    assert again.split == g.split
    other = ingest(tmp_path / "other", {**split, "seed": 8}, edges=[edges], nodes=nodes)
    assert other.split != g.split


def test_generated_split_with_test_per_class_and_force(tmp_path):
    nodes, edges, labels = _class_nodes(tmp_path, [10, 10])
    table = pq.read_table(nodes).drop_columns(["split"]).append_column("split", pa.array(["train"] * 20))
    pq.write_table(table, nodes)
    split = {"train_per_class": 1, "val_per_class": 2, "test_per_class": 3, "force": True}
    g = ingest(tmp_path, split, edges=[edges], nodes=nodes)
    assert g.counts["split_sizes"] == {"train": 2, "val": 4, "test": 6}
    assert g.split.count(SPLIT_NONE) == 8


def test_generated_fraction_split(tmp_path):
    nodes, edges, labels = _class_nodes(tmp_path, [6, 4])
    table = pq.read_table(nodes)
    pq.write_table(table.set_column(1, "label", pa.array([0, 1, -1, 0, 1, 0, 1, 0, 1, 0])), nodes)
    g = ingest(tmp_path, {"method": "fraction", "train_fraction": 0.5, "val_fraction": 0.25}, edges=[edges], nodes=nodes)
    # 9 labeled nodes: round(4.5) = 4 train, round(2.25) = 2 val, 3 test; the unlabeled node has none
    assert g.counts["split_sizes"] == {"train": 4, "val": 2, "test": 3}
    assert g.split[2] == SPLIT_NONE and g.counts["split_source"] == "generated:fraction"


def test_numeric_column_features(tmp_path):
    nodes = parquet(
        tmp_path / "n.parquet",
        {"node_id": [3, 1, 2], "label": [0, 1, 0], "split": ["train", "val", "test"],
         "f0": pa.array([1.0, 2.0, 3.0], pa.float32()), "name": ["a", "b", "c"], "year": [2000, 2001, 2002],
         "test_mask": [True, False, False]},
    )
    g = ingest(tmp_path, edges=[write(tmp_path / "e.csv", "1,2\n2,3\n")], nodes=nodes)
    assert g.x.dtype == np.float32
    np.testing.assert_array_equal(g.x, [[1, 2000], [2, 2001], [3, 2002]])
    assert (g.counts["num_features"], g.counts["feature_storage"], g.counts["feature_source"]) == (2, "dense", "columns")


def test_explicit_feature_columns(tmp_path):
    nodes = parquet(tmp_path / "n.parquet", {"node_id": [0, 1], "a": [1.0, 2.0], "b": [3.0, 4.0], "c": [5, 6]})
    g = ingest(tmp_path, edges=[write(tmp_path / "e.csv", "0,1\n")], nodes=nodes, feature_columns=["c", "a"])
    np.testing.assert_array_equal(g.x, [[5, 1], [6, 2]])


def test_feature_file_wins_over_columns_and_empty_feature_columns_mean_none(tmp_path):
    nodes = parquet(tmp_path / "n.parquet", {"node_id": [0, 1], "year": [2000, 2001], "__index_level_0__": [7, 8]})
    edges = write(tmp_path / "e.csv", "0,1\n")
    np.save(tmp_path / "x.npy", np.ones((2, 3)))
    g = ingest(tmp_path, edges=[edges], nodes=nodes, features=tmp_path / "x.npy")
    np.testing.assert_array_equal(g.x, np.ones((2, 3)))
    assert ingest(tmp_path / "none", edges=[edges], nodes=nodes, feature_columns=[]).x is None
    np.testing.assert_array_equal(ingest(tmp_path / "auto", edges=[edges], nodes=nodes).x, [[2000], [2001]])


@pytest.mark.parametrize("fixed", [True, False])
def test_list_column_features(tmp_path, fixed):
    values = [[1.0, 0.0, 2.0], [0.0, 3.0, 0.0], [4.0, 5.0, 6.0]]
    kind = pa.list_(pa.float32(), 3) if fixed else pa.list_(pa.float64())
    nodes = parquet(tmp_path / "n.parquet", {"node_id": [0, 1, 2], "emb": pa.array(values, kind), "weight": [1, 2, 3]})
    g = ingest(tmp_path, edges=[write(tmp_path / "e.csv", "0,1\n1,2\n")], nodes=nodes)
    np.testing.assert_array_equal(g.x, values)  # the list column wins over the numeric 'weight'


def test_npy_features(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "x.npy", x)
    nodes = parquet(tmp_path / "n.parquet", {"node_id": [10, 20, 30, 40], "extra": [1, 2, 3, 4]})
    g = ingest(tmp_path, edges=[write(tmp_path / "e.csv", rows_text(","))], nodes=nodes, features=tmp_path / "x.npy")
    np.testing.assert_array_equal(g.x, x)
    assert g.x.dtype == np.float32 and g.counts["feature_source"] == "file"


def test_npz_features_stay_sparse(tmp_path):
    x = sp.random(4, 6, density=0.4, format="csr", dtype=np.float64, random_state=0)
    sp.save_npz(tmp_path / "x.npz", x)
    g = ingest(tmp_path, edges=[write(tmp_path / "e.csv", rows_text(","))], features=tmp_path / "x.npz")
    assert sp.issparse(g.x) and g.x.shape == (4, 6) and g.x.dtype == np.float32
    np.testing.assert_allclose(g.x.toarray(), x.toarray().astype(np.float32))
    assert g.counts["feature_storage"] == "sparse" and g.counts["num_features"] == 6


def test_unknown_nodes_add(tmp_path):
    nodes = parquet(tmp_path / "n.parquet", {"node_id": [1, 2, 3], "label": [0, 1, 0], "f": [1.0, 2.0, 3.0]})
    edges = write(tmp_path / "e.csv", "src,dst\n1,2\n2,9\n5,3\n9,5\n")
    g = ingest(tmp_path, edges=[edges], nodes=nodes, unknown_nodes="add")
    assert g.ids == [1, 2, 3, 5, 9]
    assert g.edges == [(0, 1), (1, 4), (2, 3), (3, 4)]
    assert g.labels == [0, 1, 0, -1, -1]
    np.testing.assert_array_equal(g.x[:, 0], [1, 2, 3, 0, 0])
    assert g.counts["nodes_added_from_edges"] == 2 and g.counts["node_table_rows"] == 3


def test_unknown_nodes_add_with_sparse_features(tmp_path):
    sp.save_npz(tmp_path / "x.npz", sp.csr_matrix(np.eye(2, dtype=np.float32)))
    nodes = parquet(tmp_path / "n.parquet", {"node_id": ["a", "b"]})
    edges = write(tmp_path / "e.csv", "src,dst\na,b\nb,c\n")
    g = ingest(tmp_path, edges=[edges], nodes=nodes, features=tmp_path / "x.npz", unknown_nodes="add")
    assert g.ids == ["a", "b", "c"]
    np.testing.assert_array_equal(g.x.toarray(), [[1, 0], [0, 1], [0, 0]])


# -- the store: cache and atomic publishing -----------------------------------------------------


def test_cache_hit_skips_work_and_sets_current(tmp_path, caplog, monkeypatch):
    edges = write(tmp_path / "e.csv", rows_text(","))
    cfg = config(tmp_path, edges=[edges])
    first = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
    other = ingest_graph((c := config(tmp_path, edges=[write(tmp_path / "f.csv", "1,2\n")])).data, c.split, Store(c.store))
    assert Store(cfg.store).current_snapshot("g") == other
    monkeypatch.setattr(ingest_module, "build_graph", lambda *a, **k: pytest.fail("rebuilt on a cache hit"))
    with caplog.at_level(logging.INFO, logger="tasks.ingest.snapshot"):
        again = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
    assert again == first and "cache hit" in caplog.text
    assert Store(cfg.store).current_snapshot("g") == first


def test_fingerprint_follows_content_and_settings_not_name(tmp_path):
    edges = write(tmp_path / "e.csv", rows_text(","))
    base = ingest_graph((c := config(tmp_path, edges=[edges])).data, c.split, Store(c.store)).fingerprint
    assert ingest_graph((c := config(tmp_path, edges=[edges], name="other")).data, c.split, Store(c.store)).fingerprint == base
    assert ingest_graph((c := config(tmp_path, {"seed": 3}, edges=[edges])).data, c.split, Store(c.store)).fingerprint != base
    write(edges, rows_text(",") + "50,60\n")
    assert ingest_graph((c := config(tmp_path, edges=[edges])).data, c.split, Store(c.store)).fingerprint != base


def _store_state(tmp_path: Path) -> tuple[bytes, list[str]]:
    gdir = Store(tmp_path / "store").graph_dir("g")
    return (gdir / "CURRENT.json").read_bytes(), sorted(p.name for p in (gdir / "snapshots").iterdir())


def test_failed_ingest_leaves_previous_snapshot_and_current(tmp_path, monkeypatch):
    nodes = parquet(tmp_path / "n.parquet", {"node_id": [10, 20, 30, 40]})
    edges = write(tmp_path / "e.csv", rows_text(","))
    good = ingest_graph((c := config(tmp_path, edges=[edges], nodes=nodes)).data, c.split, Store(c.store))
    before = _store_state(tmp_path)
    assert before[1] == [good.fingerprint]

    write(edges, rows_text(",") + "10,77\n")  # validation fails before anything is written
    with pytest.raises(InputError, match="77"):
        ingest_graph((c := config(tmp_path, edges=[edges], nodes=nodes)).data, c.split, Store(c.store))
    assert _store_state(tmp_path) == before

    write(edges, rows_text(",") + "10,30\n")  # valid, but writing fails half-way
    def broken(writer, tables):
        (writer.dir / "edges.parquet").write_bytes(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(ingest_module, "write_snapshot", broken)
    with pytest.raises(OSError, match="disk full"):
        ingest_graph((c := config(tmp_path, edges=[edges], nodes=nodes)).data, c.split, Store(c.store))
    assert _store_state(tmp_path) == before
    assert is_complete(good.path) and json.loads(before[0])["fingerprint"] == good.fingerprint


def test_damaged_snapshot_directory_is_rebuilt(tmp_path):
    edges = write(tmp_path / "e.csv", rows_text(","))
    ref = ingest_graph((c := config(tmp_path, edges=[edges])).data, c.split, Store(c.store))
    (Path(ref.path) / "edges.parquet").unlink()
    assert not is_complete(ref.path)
    assert ingest_graph((c := config(tmp_path, edges=[edges])).data, c.split, Store(c.store)) == ref
    assert is_complete(ref.path)


# -- errors: each names the file and the row or column ------------------------------------------


def test_error_unknown_node_id(tmp_path):
    nodes = parquet(tmp_path / "nodes.parquet", {"node_id": [1, 2, 3]})
    edges = write(tmp_path / "e.txt", "# header comment\n# another\n1 2\n2 3\n3 9\n9 8\n")
    msg = error(tmp_path, edges=[edges], nodes=nodes)
    assert msg.startswith(f"{edges}: row 3: node id 9 in column dst is not in the node table {nodes}")
    assert "3 edge endpoints, 2 distinct ids" in msg


def test_error_unknown_string_id_against_int_node_table(tmp_path):
    nodes = parquet(tmp_path / "nodes.parquet", {"node_id": [1, 2, 3]})
    edges = write(tmp_path / "e.csv", "from,to\n1,2\nabc,3\n")
    msg = error(tmp_path, edges=[edges], nodes=nodes, src_column="from", dst_column="to")
    assert msg.startswith(f"{edges}: row 2: node id 'abc' in column from is not in the node table {nodes}")
    msg = error(tmp_path, edges=[edges], nodes=nodes, src_column="from", dst_column="to", unknown_nodes="add")
    assert str(nodes) in msg and "cannot add" in msg


def test_error_duplicate_node_ids(tmp_path):
    nodes = write(tmp_path / "nodes.csv", "node_id,label\n5,0\n6,1\n7,0\n6,1\n5,0\n")
    msg = error(tmp_path, edges=[write(tmp_path / "e.csv", "5,6\n")], nodes=nodes)
    assert msg.startswith(f"{nodes}: node id 6 in column 'node_id' occurs twice, in rows 2 and 4")


def test_error_non_numeric_id_in_integer_id_column(tmp_path):
    nodes = write(tmp_path / "nodes.csv", "node_id,label\n1,0\n2,1\nabc,0\n4,1\n")
    msg = error(tmp_path, edges=[write(tmp_path / "e.csv", "1,2\n")], nodes=nodes)
    assert msg.startswith(f"{nodes}: row 3: node id 'abc' in column 'node_id' is not an integer")


def test_error_missing_node_id(tmp_path):
    nodes = parquet(tmp_path / "nodes.parquet", {"id": [1, None, 3]})
    msg = error(tmp_path, edges=[write(tmp_path / "e.csv", "1,3\n")], nodes=nodes)
    assert msg == f"{nodes}: row 2: missing node id in column 'id'"


@pytest.mark.parametrize("where", ["column", "npy", "npz", "list"])
def test_error_nan_in_features(tmp_path, where):
    ids = {"node_id": [0, 1, 2]}
    edges = write(tmp_path / "e.csv", "0,1\n1,2\n")
    if where == "column":
        nodes = parquet(tmp_path / "nodes.parquet", {**ids, "f0": [0.0, 1.0, 2.0], "f1": [0.0, 1.0, np.inf]})
        msg = error(tmp_path, edges=[edges], nodes=nodes)
        assert msg.startswith(f"{nodes}: row 3: feature column 'f1' is inf")
        return
    if where == "list":
        nodes = parquet(tmp_path / "nodes.parquet", {**ids, "x": [[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]]})
        msg = error(tmp_path, edges=[edges], nodes=nodes)
        assert msg.startswith(f"{nodes}: row 2: feature column 'x' (index 0) is nan")
        return
    x = np.zeros((3, 4), np.float32)
    x[1, 2] = np.nan
    path = tmp_path / f"x.{where}"
    np.save(path, x) if where == "npy" else sp.save_npz(path, sp.csr_matrix(np.where(np.isnan(x), x, 1.0)))
    msg = error(tmp_path, edges=[edges], features=path)
    assert msg.startswith(f"{path}: row 2: feature index 2 is nan")


def test_error_feature_rows_mismatch(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 2)))
    nodes = parquet(tmp_path / "nodes.parquet", {"node_id": [0, 1, 2]})
    msg = error(tmp_path, edges=[write(tmp_path / "e.csv", "0,1\n")], nodes=nodes, features=tmp_path / "x.npy")
    assert msg == f"{tmp_path / 'x.npy'}: the feature file has 5 rows, but the node table {nodes} has 3 nodes"


def test_error_missing_edge_column(tmp_path):
    edges = write(tmp_path / "e.csv", "a,b,c\n1,2,3\n")
    msg = error(tmp_path, edges=[edges], src_column="from")
    assert msg == f"{edges}: edge column 'from' (data.src_column) not found; columns found: ['a', 'b', 'c']"
    edges = parquet(tmp_path / "e.parquet", {"x": [1], "y": [2]})
    msg = error(tmp_path, edges=[edges], dst_column="to")
    assert msg == f"{edges}: edge column 'to' (data.dst_column) not found; columns found: ['x', 'y']"


@pytest.mark.parametrize("content", ["", "src,dst\n", "# only a comment\n"])
def test_error_empty_edge_file(tmp_path, content):
    good = write(tmp_path / "good.csv", "1,2\n")
    empty = write(tmp_path / ("empty.txt" if content.startswith("#") else "empty.csv"), content)
    msg = error(tmp_path, edges=[good, empty])
    assert msg.startswith(f"{empty}: no edge rows")


def test_error_unparseable_edge_row(tmp_path):
    edges = write(tmp_path / "e.csv", "src,dst\n1,2\n3\n4,5\n")
    assert error(tmp_path, edges=[edges]).startswith(f"{edges}: row 2: cannot parse: Expected 2 columns, got 1")
    edges = write(tmp_path / "e.txt", "# c\n1 2\n# c\n3 4\n5\n")
    assert error(tmp_path, edges=[edges]).startswith(f"{edges}: row 3: cannot parse: Expected 2 columns, got 1")
    edges = write(tmp_path / "e2.csv", "src,dst\n1,2\n3,\n")
    assert error(tmp_path, edges=[edges]) == f"{edges}: row 2: missing node id in column 'dst'"


def test_error_unparseable_node_table_and_feature_file(tmp_path):
    edges = write(tmp_path / "e.csv", "0,1\n")
    nodes = write(tmp_path / "nodes.csv", "node_id,label\n0,1\n1,0,5\n")
    assert error(tmp_path, edges=[edges], nodes=nodes).startswith(f"{nodes}: row 2: cannot parse: Expected 2 columns, got 3")
    np.save(tmp_path / "x.npy", np.zeros(2))
    msg = error(tmp_path, edges=[edges], features=tmp_path / "x.npy")
    assert msg.startswith(f"{tmp_path / 'x.npy'}: expected a 2-D numeric array")
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    msg = error(tmp_path, edges=[edges], features=tmp_path / "x.npz")
    assert msg.startswith(f"{tmp_path / 'x.npz'}: not a scipy sparse matrix")


def test_error_not_gzip_despite_suffix(tmp_path):
    write(tmp_path / "e.csv", "0,1\n").rename(tmp_path / "e.csv.gz")
    assert error(tmp_path, edges=[tmp_path / "e.csv.gz"]).startswith(f"{tmp_path / 'e.csv.gz'}: cannot read the edge file")
    nodes = write(tmp_path / "n.csv", "node_id\n0\n1\n").rename(tmp_path / "n.csv.gz")
    msg = error(tmp_path, edges=[write(tmp_path / "e.csv", "0,1\n")], nodes=tmp_path / "n.csv.gz")
    assert msg.startswith(f"{tmp_path / 'n.csv.gz'}: cannot read the node table")


def test_error_stray_non_integer_id_without_node_table(tmp_path):
    edges = write(tmp_path / "e.csv", "src,dst\n1,2\n2,3\n3,4\n4,x5\n")
    msg = error(tmp_path, edges=[edges])
    assert msg.startswith(f"{edges}: row 4: node id 'x5' in column 'dst' is not an integer")


def test_error_fewer_classes_than_configured(tmp_path):
    nodes = parquet(tmp_path / "nodes.parquet", {"node_id": list(range(6)), "label": [0, 1, 2, 3, 4, -1]})
    edges = write(tmp_path / "e.csv", "0,1\n")
    msg = error(tmp_path, edges=[edges], nodes=nodes, num_classes=7)
    assert msg == f"{nodes}: label column 'label' has 5 classes, config data.num_classes says 7"
    msg = error(tmp_path, edges=[edges], nodes=nodes, num_classes=4)
    assert msg.startswith(f"{nodes}: row 5: label 4 in column 'label' is not below data.num_classes = 4")


def test_error_bad_labels(tmp_path):
    edges = write(tmp_path / "e.csv", "0,1\n")
    nodes = parquet(tmp_path / "nodes.parquet", {"node_id": [0, 1], "label": [0, -3]})
    assert error(tmp_path, edges=[edges], nodes=nodes).startswith(f"{nodes}: row 2: label -3 in column 'label'")
    nodes = parquet(tmp_path / "nodes.parquet", {"node_id": [0, 1], "y": [0.5, 1.0]})
    msg = error(tmp_path, edges=[edges], nodes=nodes, label_column="y")
    assert msg == f"{nodes}: row 1: label 0.5 in column 'y' is not an integer"


def test_error_overlapping_masks(tmp_path):
    nodes = parquet(
        tmp_path / "nodes.parquet",
        {"node_id": [0, 1, 2], "label": [0, 1, 0], "train_mask": [True, False, True], "test_mask": [False, False, True]},
    )
    msg = error(tmp_path, edges=[write(tmp_path / "e.csv", "0,1\n")], nodes=nodes)
    assert msg == f"{nodes}: row 3: node is in both 'train_mask' and 'test_mask' (masks must not overlap)"


def test_error_bad_split_value_and_unlabeled_split_node(tmp_path):
    edges = write(tmp_path / "e.csv", "0,1\n")
    nodes = write(tmp_path / "nodes.csv", "node_id,label,split\n0,0,train\n1,1,training\n")
    msg = error(tmp_path, edges=[edges], nodes=nodes)
    assert msg.startswith(f"{nodes}: row 2: split value 'training' in column 'split' is not one of train, val, test")
    nodes = write(tmp_path / "nodes.csv", "node_id,label,split\n0,0,train\n1,,test\n")
    msg = error(tmp_path, edges=[edges], nodes=nodes)
    assert msg == f"{nodes}: row 2: node is in the test split but has no label (column 'label')"


def test_error_missing_input_file_and_settings(tmp_path):
    assert error(tmp_path, edges=[tmp_path / "nope.csv"]) == f"{tmp_path / 'nope.csv'}: edge file (data.edges) not found"
    assert error(tmp_path, edges=[]) == "data.edges: at least one edge file is required"
    edges = write(tmp_path / "e.csv", "0,1\n")
    assert "data.label_column is set but there is no node table" in error(tmp_path, edges=[edges], label_column="y")


# -- real data ----------------------------------------------------------------------------------

def dataset(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.fail(f"test data missing: {path} (the project expects ../shared/data beside it)")
    return path


def test_cora(tmp_path):
    start = time.perf_counter()
    d = dataset("cora")
    g = ingest(tmp_path, edges=[d / "edges.csv"], nodes=d / "nodes.parquet")
    c = g.counts
    assert (c["num_nodes"], c["undirected_edges"], c["num_features"], c["num_classes"]) == (2708, 5278, 1433, 7)
    assert c["split_sizes"] == {"train": 140, "val": 500, "test": 1000} and c["split_source"] == "given"
    assert c["label_counts"] == [351, 217, 418, 818, 426, 298, 180]
    assert (c["self_loops_dropped"], c["duplicates_dropped"], c["isolated_nodes"]) == (0, 0, 0)
    table = pq.read_table(d / "nodes.parquet", columns=["f0", "f1432"])
    np.testing.assert_array_equal(g.x[:, 0], table.column("f0").to_numpy())
    np.testing.assert_array_equal(g.x[:, -1], table.column("f1432").to_numpy())
    assert time.perf_counter() - start < 20


def test_coauthor_cs_sparse_features_and_generated_split(tmp_path):
    start = time.perf_counter()
    d = dataset("coauthor_cs")
    split = {"method": "per_class", "train_per_class": 20, "val_per_class": 30}
    g = ingest(tmp_path, split, edges=[d / "edges.csv"], nodes=d / "nodes.parquet", features=d / "features.npz")
    c = g.counts
    assert (c["num_nodes"], c["undirected_edges"], c["num_classes"]) == (18333, 81894, 15)
    assert sp.issparse(g.x) and g.x.shape == (18333, 6805) and g.x.nnz == 1_092_079
    assert c["feature_storage"] == "sparse" and c["split_source"] == "generated:per_class"
    assert c["split_sizes"] == {"train": 300, "val": 450, "test": 18333 - 750}
    labels, codes = np.array(g.labels), np.array(g.split)
    assert np.bincount(labels[codes == SPLIT_TRAIN], minlength=15).tolist() == [20] * 15
    assert time.perf_counter() - start < 20


def test_snap_com_dblp_gzipped_without_labels(tmp_path):
    start = time.perf_counter()
    d = dataset("snap_com_dblp")
    g = ingest(tmp_path, edges=[d / "edges.csv.gz"], nodes=d / "nodes.parquet")
    c = g.counts
    assert (c["num_nodes"], c["undirected_edges"], c["edge_rows_total"]) == (317_080, 1_049_866, 1_049_866)
    assert (c["labeled_nodes"], c["num_classes"], c["split_source"], c["num_features"]) == (0, 0, "none", 0)
    assert g.ids[-1] == 425_956 and c["isolated_nodes"] == 0
    assert time.perf_counter() - start < 20
