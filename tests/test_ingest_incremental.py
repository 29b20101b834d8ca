"""Incremental ingest (issue 12) and ``data.edges`` globs/directories, on small hand-built graphs.

A nightly run whose edge directory gained a dated file re-reads only that file and appends its edges
to the current snapshot; anything else that changed falls back to a full ingest with the reason in
the manifest. The grown snapshot must equal a full ingest of the same input (fingerprint, edge set,
node order, labels, features).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import tasks.ingest.snapshot as ingest_module
from storage.snapshot import (
    SPLIT_NONE,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VAL,
    edge_files,
    read_edges,
    read_features,
    read_node_ids,
    read_nodes,
)
from storage.store import Store, output_at
from storage.verify import verify_graph
from tasks.config import PipelineConfig
from tasks.errors import InputError
from tasks.ingest.files import expand_edge_entries
from tasks.ingest.snapshot import check_inputs, ingest_graph, input_files

# -- helpers ------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def nodes_csv(path: Path, rows: list[tuple], header: str = "node_id,label,f0,f1") -> Path:
    return write(path, header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def config(store: Path | str, edges: list, split: dict | None = None, **data) -> PipelineConfig:
    data = {"name": "g", "edges": [str(e) for e in edges], **{k: str(v) if isinstance(v, Path) else v
                                                              for k, v in data.items()}}
    return PipelineConfig.model_validate({"store": str(store), "data": data, "split": split or {}})


STORES: dict[str, Store] = {}  # s3:// stores by URI, each with its test's cache directory


def run(store: Path | str, edges: list, split: dict | None = None, **data) -> SimpleNamespace:
    """Ingest into ``store``; what the snapshot holds, with its manifest."""
    c = config(store, edges, split, **data)
    s = STORES.get(str(store)) or Store(c.store)
    ref = ingest_graph(c.data, c.split, s)
    out = s.open(ref.path)
    src, dst = read_edges(out)
    labels, codes = read_nodes(out)
    x = read_features(out)
    return SimpleNamespace(
        ref=ref, manifest=out.manifest(), edges=set(zip(src.tolist(), dst.tolist())), num_edge_rows=len(src),
        ids=read_node_ids(out).to_pylist(), labels=labels.tolist(), split=codes.tolist(),
        x=None if x is None else np.asarray(x), files=edge_files(out.local_dir()),
    )


@pytest.fixture
def reads(monkeypatch):
    """The edge files ingest reads (parses), in order."""
    seen: list[str] = []
    real = ingest_module.read_edge_file

    def recording(path, *args, **kwargs):
        seen.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ingest_module, "read_edge_file", recording)
    return seen


def day1(tmp: Path) -> tuple[Path, Path]:
    """A directory of one dated edge file and a node table with given features and labels."""
    edges = tmp / "in" / "edges"
    write(edges / "2026-11-01.csv", "src,dst\na,b\nb,c\nc,d\nd,a\na,c\n")
    nodes = nodes_csv(tmp / "in" / "nodes.csv", [("a", 0, 1.0, 0.0), ("b", 1, 0.5, 0.5), ("c", 0, 0.0, 1.0),
                                                 ("d", 1, 0.25, 0.75)])
    return edges, nodes


def grow(edges: Path, nodes: Path) -> None:
    """The next day: a new dated file (new nodes e, f; one edge the graph has, reversed; a
    self-loop) and two rows appended to the node table."""
    write(edges / "2026-11-02.csv", "src,dst\ne,a\nf,e\nb,a\nf,f\nc,f\n")
    with open(nodes, "a") as f:
        f.write("e,1,0.1,0.9\nf,0,0.9,0.1\n")


# -- data.edges: globs and directories ------------------------------------------------------------


def test_directory_and_glob_expand_to_sorted_edge_files(tmp_path):
    d = tmp_path / "edges"
    for name in ("b.tsv", "a.csv", "c.txt.gz", "d.parquet", "notes.md", ".partial.csv", "e.CSV"):
        write(d / name, "x")
    (d / "sub.csv").mkdir()  # a directory with an edge-file name is no file
    assert [Path(p).name for p in expand_edge_entries([str(d)])] == \
        ["a.csv", "b.tsv", "c.txt.gz", "d.parquet", "e.CSV"]
    assert [Path(p).name for p in expand_edge_entries([str(d / "*.csv"), str(d / "a.csv")])] == ["a.csv"]
    write(tmp_path / "deep" / "x" / "1.csv", "x")
    write(tmp_path / "deep" / "y" / "2.csv", "x")
    assert [Path(p).name for p in expand_edge_entries([str(tmp_path / "deep" / "**" / "*.csv")])] == ["1.csv", "2.csv"]
    assert expand_edge_entries([str(tmp_path / "plain.csv")]) == [str(tmp_path / "plain.csv")]  # checked later


def test_entry_matching_nothing_is_a_one_line_error(tmp_path):
    pattern = str(tmp_path / "edges" / "*.csv")
    with pytest.raises(InputError) as e:
        check_inputs(config(tmp_path / "s", [pattern]).data)
    assert str(e.value) == f"{pattern}: the pattern in data.edges matches no file"
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / "readme.md", "no edges here")
    with pytest.raises(InputError, match=r"empty: the directory in data.edges holds no edge files \(expected"):
        input_files(config(tmp_path / "s", [tmp_path / "empty"]).data)


def test_glob_input_is_expanded_when_ingesting(tmp_path):
    edges, nodes = day1(tmp_path)
    write(edges / "2026-11-02.csv", "src,dst\nd,b\n")
    snap = run(tmp_path / "s", [edges / "2026-*.csv"], nodes=nodes)
    assert [e["path"] for e in snap.manifest["inputs"]["edges"]] == \
        [str(edges / "2026-11-01.csv"), str(edges / "2026-11-02.csv")]
    assert len(snap.edges) == 6 and snap.manifest["ingest_mode"] == "full"
    assert snap.manifest["ingest_reason"] == "the graph has no current snapshot"


# -- incremental growth ---------------------------------------------------------------------------


def test_new_file_is_appended_and_equals_a_full_ingest(tmp_path, reads):
    edges, nodes = day1(tmp_path)
    first = run(tmp_path / "s", [edges], nodes=nodes)
    assert first.manifest["ingest_mode"] == "full" and reads == ["2026-11-01.csv"]
    grow(edges, nodes)
    reads.clear()
    grown = run(tmp_path / "s", [edges], nodes=nodes)
    m = grown.manifest
    assert reads == ["2026-11-02.csv"]  # only the new file is parsed
    assert m["ingest_mode"] == "incremental" and m["base_snapshot"] == first.ref.fingerprint
    assert m["ingest_reason"] == "1 new edge file(s)"
    assert (m["appended_nodes"], m["appended_edges"]) == (2, 3)  # e-a, e-f, c-f; b-a is known, f-f a loop
    assert m["counts"]["appended_duplicates_dropped"] == 1
    assert grown.ids[:4] == first.ids == ["a", "b", "c", "d"] and grown.ids[4:] == ["e", "f"]
    assert grown.files == ["edges.parquet", "edges-00001.parquet"]  # the base file is reused, not rewritten
    assert (tmp_path / "s").exists() and first.edges < grown.edges

    full = run(tmp_path / "fresh", [edges], nodes=nodes)
    assert full.manifest["ingest_mode"] == "full"
    assert full.ref.fingerprint == grown.ref.fingerprint
    assert (full.edges, full.ids, full.labels, full.split) == (grown.edges, grown.ids, grown.labels, grown.split)
    assert full.num_edge_rows == grown.num_edge_rows == len(grown.edges)  # each edge once
    np.testing.assert_array_equal(full.x, grown.x)
    for key in ("num_nodes", "undirected_edges", "edge_rows_total", "self_loops_dropped", "duplicates_dropped",
                "isolated_nodes", "label_counts", "split_sizes", "node_table_rows"):
        assert full.manifest["counts"][key] == m["counts"][key], key
    assert all(c.status == "ok" for c in verify_graph(tmp_path / "s", "g")), verify_graph(tmp_path / "s", "g")


def test_same_input_again_is_a_cache_hit_and_a_second_day_grows_again(tmp_path, reads):
    edges, nodes = day1(tmp_path)
    run(tmp_path / "s", [edges], nodes=nodes)
    grow(edges, nodes)
    second = run(tmp_path / "s", [edges], nodes=nodes)
    reads.clear()
    assert run(tmp_path / "s", [edges], nodes=nodes).ref.fingerprint == second.ref.fingerprint and reads == []
    write(edges / "2026-11-03.csv", "src,dst\nd,f\n")
    third = run(tmp_path / "s", [edges], nodes=nodes)
    assert reads == ["2026-11-03.csv"]
    assert third.manifest["ingest_mode"] == "incremental" and third.manifest["base_snapshot"] == second.ref.fingerprint
    assert third.files == ["edges.parquet", "edges-00001.parquet", "edges-00002.parquet"]
    assert third.edges == run(tmp_path / "fresh", [edges], nodes=nodes).edges


def test_edges_only_ids_without_node_table(tmp_path, reads):
    edges = tmp_path / "edges"
    write(edges / "1.txt", "3 4\n4 5\n5 3\n")
    first = run(tmp_path / "s", [edges])
    write(edges / "2.txt", "5 6\n6 7\n4 3\n")
    grown = run(tmp_path / "s", [edges])
    assert grown.manifest["ingest_mode"] == "incremental" and reads[-1:] == ["2.txt"]
    assert grown.ids == [3, 4, 5, 6, 7] and grown.ids[:3] == first.ids
    assert grown.edges == run(tmp_path / "fresh", [edges]).edges
    # an id below the existing ones would shift their contiguous ids: a full ingest, said why
    write(edges / "3.txt", "1 3\n")
    low = run(tmp_path / "s", [edges])
    assert low.manifest["ingest_mode"] == "full" and "reorder" in low.manifest["ingest_reason"]
    assert low.ids == [1, 3, 4, 5, 6, 7]


def test_generated_split_keeps_existing_nodes_and_is_reproducible(tmp_path):
    edges = tmp_path / "edges"
    rows = [(i, i % 2, 0.0, 1.0) for i in range(40)]
    write(edges / "1.csv", "".join(f"{i},{i + 1}\n" for i in range(39)))
    nodes = nodes_csv(tmp_path / "nodes.csv", rows)
    split = {"train_per_class": 5, "val_per_class": 5}
    first = run(tmp_path / "s", [edges], split, nodes=nodes)
    assert first.split.count(SPLIT_TRAIN) == 10 and first.split.count(SPLIT_VAL) == 10
    write(edges / "2.csv", "".join(f"{i},{i + 1}\n" for i in range(39, 59)))
    nodes_csv(nodes, rows + [(i, i % 2, 0.0, 1.0) for i in range(40, 60)])
    grown = run(tmp_path / "s", [edges], split, nodes=nodes)
    assert grown.manifest["ingest_mode"] == "incremental"
    assert grown.split[:40] == first.split  # existing nodes keep their split
    assert set(grown.split[40:]) == {SPLIT_TEST}  # quotas filled already: the new nodes are test
    assert grown.manifest["counts"]["split_source"] == "generated:per_class"
    # the same history in another store draws the same split
    nodes_csv(nodes, rows)
    (edges / "2.csv").rename(tmp_path / "2.csv")
    run(tmp_path / "other", [edges], split, nodes=nodes)
    (tmp_path / "2.csv").rename(edges / "2.csv")
    nodes_csv(nodes, rows + [(i, i % 2, 0.0, 1.0) for i in range(40, 60)])
    assert run(tmp_path / "other", [edges], split, nodes=nodes).split == grown.split


def test_fraction_split_draws_the_new_nodes_by_fraction(tmp_path):
    edges = tmp_path / "edges"
    write(edges / "1.csv", "".join(f"{i},{i + 1}\n" for i in range(9)))
    rows = [(i, i % 3, 1.0, 0.0) for i in range(10)]
    nodes = nodes_csv(tmp_path / "nodes.csv", rows)
    split = {"method": "fraction", "train_fraction": 0.5, "val_fraction": 0.2}
    first = run(tmp_path / "s", [edges], split, nodes=nodes)
    write(edges / "2.csv", "".join(f"{i},{i + 1}\n" for i in range(9, 109)))
    nodes_csv(nodes, rows + [(i, i % 3, 1.0, 0.0) for i in range(10, 110)])
    grown = run(tmp_path / "s", [edges], split, nodes=nodes)
    assert grown.manifest["ingest_mode"] == "incremental" and grown.split[:10] == first.split
    new = grown.split[10:]
    assert (new.count(SPLIT_TRAIN), new.count(SPLIT_VAL), new.count(SPLIT_TEST)) == (50, 20, 30)
    assert SPLIT_NONE not in new


# -- fallbacks to a full ingest -------------------------------------------------------------------


def _grown_with(tmp_path: Path, change, caplog, **data) -> SimpleNamespace:
    edges, nodes = day1(tmp_path)
    run(tmp_path / "s", [edges], nodes=nodes, **data)
    grow(edges, nodes)
    change(edges, nodes)
    caplog.clear()  # the first run's records too are captured once another test set "tasks" to INFO
    with caplog.at_level(logging.INFO, logger="tasks.ingest.snapshot"):
        snap = run(tmp_path / "s", [edges], nodes=nodes, **data)
    assert snap.manifest["ingest_mode"] == "full" and snap.manifest["base_snapshot"] is None
    assert snap.manifest["appended_nodes"] == snap.manifest["appended_edges"] == 0
    # each record once: after a test that gave the "tasks" logger Prefect's handlers
    # (flows.stages.forward_library_logs), caplog's own handler can receive the same record twice
    lines = list({id(r): r for r in caplog.records if r.getMessage().startswith("full ingest of graph 'g': ")}.values())
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert lines[0].getMessage().endswith(snap.manifest["ingest_reason"])
    assert snap.edges == run(tmp_path / "fresh", [edges], nodes=nodes, **data).edges
    return snap


def _relabel(edges, nodes):
    nodes.write_text(nodes.read_text().replace("b,1,", "b,0,"))


def _reorder(edges, nodes):
    lines = nodes.read_text().splitlines()
    nodes.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")


def _remove_row(edges, nodes):
    nodes.write_text("".join(line + "\n" for line in nodes.read_text().splitlines() if not line.startswith("d,")))


def _new_features(edges, nodes):
    nodes.write_text(nodes.read_text().replace("a,0,1.0,0.0", "a,0,2.0,0.0"))


@pytest.mark.parametrize("change, reason", [
    (_relabel, "the label of existing node 1 (row 2) changed"),
    (_reorder, "the node table's existing rows changed or new nodes would reorder existing ones"),
    (_new_features, "the existing nodes' features changed"),
])
def test_changed_node_rows_fall_back_to_full(tmp_path, caplog, change, reason):
    assert _grown_with(tmp_path, change, caplog).manifest["ingest_reason"] == reason


def test_changed_edge_file_falls_back_to_full(tmp_path, caplog):
    def change(edges, nodes):
        with open(edges / "2026-11-01.csv", "a") as f:
            f.write("b,d\n")
    snap = _grown_with(tmp_path, change, caplog)
    assert snap.manifest["ingest_reason"] == f"edge file {tmp_path / 'in' / 'edges' / '2026-11-01.csv'} changed since the current snapshot"
    assert (1, 3) in snap.edges


def test_removed_edge_file_falls_back_to_full(tmp_path, caplog):
    def change(edges, nodes):
        (edges / "2026-11-01.csv").unlink()
    snap = _grown_with(tmp_path, change, caplog)
    assert snap.manifest["ingest_reason"] == f"edge file {tmp_path / 'in' / 'edges' / '2026-11-01.csv'} of the current snapshot is gone"
    assert len(snap.edges) == 4  # e-a, f-e, b-a, c-f


def test_removed_node_row_falls_back_to_full(tmp_path, caplog):
    snap = _grown_with(tmp_path, _remove_row, caplog, unknown_nodes="add")
    assert "reorder" in snap.manifest["ingest_reason"]
    assert snap.ids == ["a", "b", "c", "e", "f", "d"]  # d: named by the edges only now


def test_other_settings_fall_back_to_full(tmp_path, caplog):
    edges, nodes = day1(tmp_path)
    run(tmp_path / "s", [edges], nodes=nodes)
    grow(edges, nodes)
    snap = run(tmp_path / "s", [edges], {"seed": 7}, nodes=nodes)
    assert snap.manifest["ingest_mode"] == "full" and "settings differ" in snap.manifest["ingest_reason"]


def test_bad_new_file_publishes_nothing_and_keeps_current(tmp_path):
    edges, nodes = day1(tmp_path)
    first = run(tmp_path / "s", [edges], nodes=nodes)
    write(edges / "2026-11-02.csv", "src,dst\na,zz\n")  # zz is in no node table
    with pytest.raises(InputError, match=r"2026-11-02.csv: row 1: node id 'zz' in column dst is not in the node table"):
        run(tmp_path / "s", [edges], nodes=nodes)
    assert Store(tmp_path / "s").current_snapshot("g").fingerprint == first.ref.fingerprint


# -- an object store ------------------------------------------------------------------------------


def test_incremental_ingest_on_an_s3_store(s3_env, tmp_path, reads):
    uri = f"s3://{s3_env}/incr/{tmp_path.name}"
    STORES[uri] = Store(uri, cache_dir=tmp_path / "cache")
    edges, nodes = day1(tmp_path)
    first = run(uri, [edges], nodes=nodes)
    grow(edges, nodes)
    STORES[uri] = Store(uri, cache_dir=tmp_path / "cache2")  # another worker: nothing cached
    grown = run(uri, [edges], nodes=nodes)
    assert grown.manifest["ingest_mode"] == "incremental" and grown.manifest["base_snapshot"] == first.ref.fingerprint
    assert grown.files == ["edges.parquet", "edges-00001.parquet"] and reads[-1] == "2026-11-02.csv"
    assert grown.edges == run(tmp_path / "fresh", [edges], nodes=nodes).edges
    assert output_at(grown.ref.path).damage() is None


def test_node_table_growth_without_new_edge_file(tmp_path, reads):
    edges, nodes = day1(tmp_path)
    first = run(tmp_path / "s", [edges], nodes=nodes)
    with open(nodes, "a") as f:
        f.write("z,1,0.3,0.3\n")  # an isolated new node
    reads.clear()
    grown = run(tmp_path / "s", [edges], nodes=nodes)
    assert reads == [] and grown.manifest["ingest_mode"] == "incremental"
    assert grown.manifest["ingest_reason"] == "0 new edge file(s)"
    assert (grown.manifest["appended_nodes"], grown.manifest["appended_edges"]) == (1, 0)
    assert grown.files == ["edges.parquet"] and grown.edges == first.edges and grown.ids[-1] == "z"
    assert grown.manifest["counts"]["isolated_nodes"] == 1


def test_snapshot_without_recorded_settings_is_ingested_fully(tmp_path):
    edges, nodes = day1(tmp_path)
    first = run(tmp_path / "s", [edges], nodes=nodes)
    manifest = Path(first.ref.path) / "manifest.json"
    m = json.loads(manifest.read_text())
    del m["ingest_settings"]  # as made before incremental ingest
    manifest.write_text(json.dumps(m))
    grow(edges, nodes)
    snap = run(tmp_path / "s", [edges], nodes=nodes)
    assert snap.manifest["ingest_mode"] == "full"
    assert snap.manifest["ingest_reason"].endswith("records no ingest settings (made before incremental ingest)")


def test_cli_edges_directory_is_checked_before_prefect(tmp_path):
    from flows.cli import _checked_inputs, parser

    edges, nodes = day1(tmp_path)
    args = parser().parse_args(["ingest", "--edges", str(edges), "--nodes", str(nodes), "--store", str(tmp_path / "s")])
    assert _checked_inputs(args, "ingest").data.edges == [str(edges)]  # kept as given: expanded at run time
    missing = str(tmp_path / "in" / "nope-*.csv")
    args = parser().parse_args(["ingest", "--edges", missing, "--nodes", str(nodes), "--store", str(tmp_path / "s")])
    with pytest.raises(InputError, match="the pattern in data.edges matches no file"):
        _checked_inputs(args, "ingest")


def test_grown_snapshot_reads_back_as_the_full_ingests_sorted_edges(tmp_path):
    edges, nodes = day1(tmp_path)
    run(tmp_path / "s", [edges], nodes=nodes)
    grow(edges, nodes)
    write(edges / "2026-11-03.csv", "src,dst\na,d\nb,f\n")  # b-f sorts between existing edges
    grown = run(tmp_path / "s", [edges], nodes=nodes)
    full = run(tmp_path / "fresh", [edges], nodes=nodes)
    assert grown.manifest["ingest_mode"] == "incremental" and len(grown.files) == 2
    a, b = read_edges(output_at(grown.ref.path)), read_edges(output_at(full.ref.path))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
        assert x.dtype == y.dtype
    key = a[0].astype(np.int64) * 10 + a[1]
    assert (np.diff(key) > 0).all() and (a[0] < a[1]).all()


def test_incrementally_grown_snapshot_is_partitioned_by_refresh(tmp_path):
    """The partition stage sees a grown snapshot as an extension of the previous one."""
    from tasks.config import PartitionConfig
    from tasks.partition.partition import partition_graph

    rng = np.random.default_rng(0)
    edges = tmp_path / "edges"
    blocks = [(rng.integers(0, 60, 400) + b * 60, rng.integers(0, 60, 400) + b * 60) for b in range(4)]
    rows = "".join(f"{s},{d}\n" for src, dst in blocks for s, d in zip(src, dst)) + "0,60\n60,120\n120,180\n"
    write(edges / "1.csv", "src,dst\n" + rows)
    first = run(tmp_path / "s", [edges])
    store, config = Store(tmp_path / "s"), PartitionConfig(num_parts=4)
    base = partition_graph(first.ref, config, store)
    write(edges / "2.csv", "src,dst\n" + "".join(f"{240 + i},{(i * 7) % 60}\n{240 + i},{(i * 11) % 60}\n"
                                                 for i in range(6)))
    grown = run(tmp_path / "s", [edges])
    assert grown.manifest["ingest_mode"] == "incremental" and grown.manifest["appended_nodes"] == 6
    ref = partition_graph(grown.ref, config, store)
    assert ref.mode == "refreshed", ref.reason
    old, new = (store.open(r.path).array("assignment", mmap=False) for r in (base, ref))
    assert np.array_equal(new[:240], old)
