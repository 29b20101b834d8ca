"""The added models on real data (issue 10, part 5), without Prefect: prepare -> train -> evaluate."""

from pathlib import Path

import pytest

from storage.store import Store
from tasks.config import DataConfig, PipelineConfig
from tasks.evaluate.evaluate import evaluate_model
from tasks.prepare import prepare_graph
from tests.conftest import dataset
from tests.helpers import train as train_cluster_gcn

pytestmark = pytest.mark.slow


def _run(tmp_path: Path, name: str, **train) -> dict[str, float]:
    d = dataset(name)
    cfg = PipelineConfig(
        store=str(tmp_path / "store"),
        data=DataConfig(name=name, edges=[str(d / "edges.csv")], nodes=str(d / "nodes.parquet")),
        train=train,
    )
    prepared = prepare_graph(cfg)
    trained = train_cluster_gcn(prepared.node_data, cfg)
    return evaluate_model(trained, prepared.node_data, prepared.snapshot, Store(cfg.store), device="cpu").metrics


def test_cora_with_gat(tmp_path):
    """train.model=gat with the default settings (8 heads of 16 channels): about 30 s here."""
    metrics = _run(tmp_path, "cora", model="gat")
    assert metrics["test_acc"] >= 0.78, metrics
