"""The command line: stage commands on real data, and a user's mistake as one clear message."""

import json
import subprocess
import sys

from flows.cli import main
from storage.store import Store, read_manifest
from tests.conftest import dataset


def test_dblp_ingests_and_partitions_without_conversion(prefect_harness, tmp_path, capsys):
    d = dataset("snap_com_dblp")
    store = tmp_path / "store"
    assert main(["ingest", "--edges", str(d / "edges.csv.gz"), "--nodes", str(d / "nodes.parquet"),
                 "--store", str(store), "--name", "dblp"]) == 0
    snap = Store(store).current_snapshot("dblp")
    counts = read_manifest(snap.path)["counts"]
    assert counts["num_nodes"] == 317_080
    assert counts["undirected_edges"] == 1_049_866
    assert main(["partition", "--store", str(store), "--name", "dblp", "--set", "partition.num_parts=64"]) == 0
    out = capsys.readouterr().out
    part = json.loads(out[out.index("{", out.index("partition:")):])
    assert part["num_parts"] == 64 and part["num_nodes"] == 317_080
    assert part["edge_cut_fraction"] < 0.3
    assert part["balance"] <= 1.1


def test_generate_then_run_stage_by_stage(prefect_harness, tmp_path, capsys):
    gen = tmp_path / "gen"
    assert main(["generate", "--out", str(gen), "--nodes", "2000", "--classes", "3", "--features", "8", "--seed", "3"]) == 0
    edges = next(p for p in gen.iterdir() if p.name.startswith("edges"))
    store = str(tmp_path / "store")
    assert main(["ingest", "--edges", str(edges), "--nodes", str(gen / "nodes.parquet"), "--store", store, "--name", "g"]) == 0
    assert main(["train", "--store", store, "--name", "g", "--set", "train.epochs=3", "--set", "train.hidden=8"]) == 0
    out = capsys.readouterr().out
    assert "test  accuracy" in out and "mlflow ui --backend-store-uri sqlite:///" in out


def test_bad_input_is_one_clear_error_without_traceback(tmp_path):
    nodes = tmp_path / "nodes.csv"
    nodes.write_text("node_id,label\n1,0\n2,1\n3,0\n")
    edges = tmp_path / "edges.csv"
    edges.write_text("src,dst\n1,2\n2,9\n")
    store = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "ingest", "--edges", str(edges), "--nodes", str(nodes), "--store", str(store)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert str(edges) in errors[0] and "row 2" in errors[0] and "9" in errors[0]
    assert not (store / "graphs" / "graph" / "CURRENT.json").exists()


def test_config_typo_is_rejected(tmp_path, capsys):
    assert main(["partition", "--store", str(tmp_path), "--set", "partition.num_part=4"]) == 2
    err = capsys.readouterr().err
    assert "partition.num_part" in err and "Extra inputs are not permitted" in err
