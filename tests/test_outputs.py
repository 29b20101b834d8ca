"""Every stage's output goes through storage.outputs: a damaged one is found and rebuilt.

A small hand-built graph (three communities of 20 nodes) is taken through ingest, normalize,
partition, layout, training and evaluation without Prefect. Then, for each stage's output, one
of its data files is deleted (or its manifest, leaving the data without one), and the stage is run
again: it logs a warning, rebuilds the output under the same fingerprint, and the output is
complete again with the same contents.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage.evaluation import read_confusion, read_embedding, read_metrics, read_predictions
from storage.manifest import MANIFEST
from storage.store import Store
from tasks.config import PipelineConfig, load_config
from tasks.evaluate.evaluate import evaluate_model
from tasks.ingest.snapshot import ingest_graph
from tasks.normalize.features import load_stats, normalize_features
from tasks.partition.layout import layout_node_data
from tasks.partition.partition import partition_graph

STAGES = ("snapshot", "features", "partition", "node_data", "evaluation")


def _write_graph(root: Path, sparse: bool) -> dict[str, Any]:
    """60 nodes in 3 communities (label = community), 8 features; the edge list and node table."""
    rng = np.random.default_rng(0)
    n, k = 60, 3
    label = np.arange(n) % k
    edges = {(int(u), int(v)) for u, v in rng.integers(0, n, (400, 2)) if u != v and label[u] == label[v]}
    edges |= {(int(u), int(v)) for u, v in rng.integers(0, n, (20, 2)) if u != v}
    root.mkdir(parents=True, exist_ok=True)
    (root / "edges.csv").write_text("src,dst\n" + "".join(f"{100 + u},{100 + v}\n" for u, v in sorted(edges)))
    (root / "nodes.csv").write_text("node_id,label\n" + "".join(f"{100 + i},{label[i]}\n" for i in range(n)))
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x[np.arange(n), label] += 3.0
    if sparse:
        x[np.abs(x) < 1.0] = 0.0
    np.save(root / "features.npy", x)
    return {"name": "g", "edges": [str(root / "edges.csv")], "nodes": str(root / "nodes.csv"),
            "features": str(root / "features.npy")}


def _config(root: Path, sparse: bool) -> PipelineConfig:
    overrides = ["partition.num_parts=4", "train.epochs=3", "train.clusters_per_batch=2", "split.train_per_class=5",
                 "split.val_per_class=5", "track.embedding_plot_nodes=20"]
    if sparse:  # standardized CSR features: x_* arrays and a shift, copied through the layout
        overrides += ["normalize.method=standard", "normalize.sparse_below=1.0"]
    return load_config(None, overrides, base={"store": str(root / "store"), "data": _write_graph(root / "input", sparse)})


def _run(kind: str, cfg: PipelineConfig, store: Store, refs: dict[str, Any]):
    """Run the stage that produces ``kind`` on the references of the earlier stages."""
    if kind == "snapshot":
        return ingest_graph(cfg.data, cfg.split, store)
    if kind == "features":
        return normalize_features(refs["snapshot"], cfg.normalize, store)
    if kind == "partition":
        return partition_graph(refs["snapshot"], cfg.partition, store)
    if kind == "node_data":
        return layout_node_data(refs["partition"], refs["snapshot"], refs["features"], store)
    return evaluate_model(refs["trained"], refs["node_data"], refs["snapshot"], store, device="cpu",
                          seed=cfg.train.seed, embedding_nodes=cfg.track.embedding_plot_nodes)


@pytest.fixture(scope="module", params=[False, True], ids=["dense", "sparse"])
def pipeline(request, tmp_path_factory):
    """The graph through every stage once: ``(config, store, refs)``."""
    from tests.helpers import train as train_cluster_gcn

    cfg = _config(tmp_path_factory.mktemp("outputs"), sparse=request.param)
    store = Store(cfg.store)
    refs: dict[str, Any] = {}
    for kind in STAGES[:-1]:
        refs[kind] = _run(kind, cfg, store, refs)
    refs["trained"] = train_cluster_gcn(refs["node_data"], cfg)
    refs["evaluation"] = _run("evaluation", cfg, store, refs)
    return cfg, store, refs


def _contents(path: Path) -> dict[str, str]:
    """Each data file's SHA-256; the manifest aside (it records a creation time), and a JSON
    document's ``seconds`` (the partition's timings)."""
    out = {}
    for p in sorted(path.iterdir()):
        if p.name == MANIFEST:
            continue
        data = p.read_bytes()
        if p.suffix == ".json":
            doc = json.loads(data)
            doc.pop("seconds", None)
            data = json.dumps(doc, sort_keys=True).encode()
        out[p.name] = hashlib.sha256(data).hexdigest()
    return out


def test_each_stage_output_is_complete_and_describes_itself(pipeline):
    cfg, store, refs = pipeline
    for kind in STAGES:
        out = store.open(refs[kind].path)
        assert out.kind == kind and out.exists(), kind
        manifest = out.manifest()
        assert manifest["kind"] == kind
        assert sorted(manifest["files"]) == sorted(_contents(out.path)), kind  # nothing unlisted, nothing missing
        assert not [p for p in out.path.parent.iterdir() if p.name.startswith(".")], kind  # no temporaries left
    if cfg.normalize.sparse_below == 1.0:
        assert load_stats(refs["features"]).sparse
        assert store.open(refs["node_data"].path).has("x_shift")


def test_evaluation_output_is_read_back_by_name(pipeline):
    cfg, store, refs = pipeline
    out = store.open(refs["evaluation"].path)
    metrics = read_metrics(out)
    assert metrics == pytest.approx(refs["evaluation"].metrics, nan_ok=True)
    predictions = read_predictions(out)
    assert predictions.column_names == ["node_id", "prediction", "confidence", "label", "split"]
    assert sorted(predictions.column("node_id").to_pylist()) == list(range(100, 160))
    cm = read_confusion(out)
    assert cm.shape == (3, 3) and cm.sum() == int((np.asarray(predictions.column("split")) == 3).sum())
    coords, labels = read_embedding(out)
    assert coords.shape == (20, 2) and labels.shape == (20,)
    again = _run("evaluation", cfg, store, refs)
    assert again.reused and again.path == refs["evaluation"].path and again.metrics == pytest.approx(metrics, nan_ok=True)


@pytest.mark.parametrize("damage", ["a data file deleted", "no manifest"])
@pytest.mark.parametrize("kind", STAGES)
def test_a_damaged_output_is_rebuilt(pipeline, kind, damage, caplog):
    cfg, store, refs = pipeline
    ref = refs[kind]
    out = store.open(ref.path)
    before = _contents(out.path)
    if damage == "no manifest":
        (out.path / MANIFEST).unlink()  # the data is all there, but nothing says it is complete
    else:
        (out.path / sorted(before)[0]).unlink()
    assert not out.exists()

    with caplog.at_level(logging.WARNING, logger="storage"):
        again = _run(kind, cfg, store, refs)

    assert not again.reused  # rebuilt, not reused
    assert again.path == ref.path and getattr(again, "fingerprint", None) == getattr(ref, "fingerprint", None)
    assert out.exists()
    assert _contents(out.path) == before  # the same output again
    assert "damaged or incomplete" in caplog.text and str(out.path) in caplog.text
    assert not [p for p in out.path.parent.iterdir() if p.name.startswith(".")]  # the damaged copy is gone
    assert _run(kind, cfg, store, refs).reused  # and the next run reuses it


def test_a_stage_reads_its_inputs_where_their_references_point(pipeline, tmp_path):
    """A partition of one store's snapshot published into another store (as the partition
    benchmark does): the input is read through its reference, the output lands in the given store."""
    cfg, store, refs = pipeline
    other = Store(tmp_path / "other")
    ref = partition_graph(refs["snapshot"], cfg.partition, other)
    assert not ref.reused and ref.fingerprint == refs["partition"].fingerprint
    assert other.open(ref.path).exists() and Path(ref.path).is_relative_to(other.root)
    assert _contents(Path(ref.path)) == _contents(Path(refs["partition"].path))
