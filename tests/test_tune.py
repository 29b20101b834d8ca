"""graphpipe tune: the Optuna study, its MLflow child runs, pruning, the saved best config and its use."""

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tasks.config import PipelineConfig, load_config
from tasks.synthetic.generate import GeneratorConfig, generate_graph
from tasks.ingest.snapshot import ingest_graph
from tasks.normalize.features import normalize_features
from tasks.partition.layout import layout_node_data
from tasks.partition.partition import partition_graph
from storage.tuned import tuned_files
from tasks.tune.study import read_best, tune_graph
from tasks.tune.tuned import apply_tuned, tuned_config_path
from storage.store import Store


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    gen = generate_graph(GeneratorConfig(num_nodes=1500, num_classes=4, num_features=16, seed=3), root / "input")
    return gen


def _cfg(store: Path, gen, *overrides: str) -> PipelineConfig:
    return load_config(None, list(overrides), base={
        "store": str(store), "data": {"name": "g", "edges": [str(gen.edges_path)], "nodes": str(gen.nodes_path)},
        "partition": {"num_parts": 8}})


def test_small_tune_logs_child_runs_prunes_and_saves_the_best_config(graph_files, tmp_path):
    cfg = _cfg(tmp_path, graph_files, "train.epochs=12", "tune.trials=5", "tune.prune_startup_trials=1",
               "tune.prune_warmup_epochs=2", "tune.patience=5")
    snap = ingest_graph(cfg.data, cfg.split, Store(cfg.store))
    part = partition_graph(snap, cfg.partition, Store(cfg.store))
    result = tune_graph(cfg, snap, part, normalize=lambda sn, c: normalize_features(sn, c.normalize, Store(c.store)),
                        layout=lambda pa, sn, fe, c: layout_node_data(pa, sn, fe, Store(c.store)))

    assert sum(result.trials.values()) == 5
    assert result.trials.get("complete", 0) >= 1
    assert result.trials.get("pruned", 0) >= 1, result.trials
    client = MlflowClient(result.parent_run.tracking_uri)
    parent = client.get_run(result.parent_run.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_acc"] == pytest.approx(result.best_val_acc)
    assert parent.data.metrics["best_val_acc"] >= parent.data.metrics["default_val_acc"]
    # a trial replaces the configured one only with a real gain on validation (tune.min_improvement)
    assert result.best_trial == 0 or result.best_val_acc >= result.default_val_acc + cfg.tune.min_improvement
    children = client.search_runs([result.parent_run.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.parent_run.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(result.child_runs)
    assert len(children) == 5
    states = {r.data.tags["graphpipe.tune_trial"]: r.data.tags["graphpipe.tune_state"] for r in children}
    assert states["0"] == "complete"  # the default config is the first trial
    assert sorted(states.values()).count("pruned") == result.trials["pruned"]
    pruned = next(r for r in children if r.data.tags["graphpipe.tune_state"] == "pruned")
    assert "pruned at epoch" in pruned.data.tags["graphpipe.tune_pruned"]
    default = next(r for r in children if r.data.tags["graphpipe.tune_trial"] == "0")
    assert default.data.tags["graphpipe.tune_default"] == "True"
    assert default.data.params["train.lr"] == str(cfg.train.lr)
    for run in children:
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) >= 1
        if states[run.data.tags["graphpipe.tune_trial"]] == "complete":
            assert "test_acc" in run.data.metrics

    best = yaml.safe_load(Path(result.best_yaml).read_text())
    assert Path(result.best_yaml) == tuned_config_path(cfg)
    assert best["train"]["lr"] == pytest.approx(result.best_params["train.lr"])
    assert best["normalize"]["method"] == result.best_params["normalize.method"]
    assert read_best(cfg)["val_acc"] == pytest.approx(result.best_val_acc)
    assert tuned_files(Store(cfg.store), cfg.data.name).scores.is_file()
    # the saved file is a valid config file
    assert load_config(result.best_yaml).train.hidden == result.best_params["train.hidden"]
    # a rerun with the same total resumes the study: nothing more to do
    again = tune_graph(cfg, snap, part, normalize=lambda sn, c: normalize_features(sn, c.normalize, Store(c.store)),
                        layout=lambda pa, sn, fe, c: layout_node_data(pa, sn, fe, Store(c.store)))
    assert again.study_name == result.study_name and again.child_runs == []
    assert sum(again.trials.values()) == 5


def test_apply_tuned_fills_only_keys_not_set_explicitly(graph_files, tmp_path):
    cfg = _cfg(tmp_path, graph_files, "tune.use_tuned=true", "train.dropout=0.3")
    unchanged, used = apply_tuned(cfg)
    assert used is None and unchanged == cfg  # no tuned config yet: the configured values
    path = tuned_config_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({"normalize": {"method": "standard"},
                                    "train": {"lr": 0.003, "dropout": 0.6, "hidden": 256}}))
    tuned, used = apply_tuned(cfg)
    assert used == str(path)
    assert tuned.normalize.method == "standard" and tuned.train.lr == 0.003 and tuned.train.hidden == 256
    assert tuned.train.dropout == 0.3  # explicit beats tuned
    assert tuned.data == cfg.data
    assert apply_tuned(tuned)[0] == tuned  # applying twice changes nothing


@pytest.mark.slow
def test_tune_flow_on_cora_then_a_run_uses_the_tuned_config(prefect_harness, tmp_path):
    from flows.pipeline import graph_pipeline
    from flows.tune import graph_tune
    from tests.conftest import dataset

    d = dataset("cora")
    base = {"store": str(tmp_path / "store"),
            "data": {"name": "cora", "edges": [str(d / "edges.csv")], "nodes": str(d / "nodes.parquet")}}
    out = graph_tune(base, overrides={"train.epochs": 15, "tune.trials": 3, "tune.patience": 5,
                                      "tune.prune_startup_trials": 1, "tune.prune_warmup_epochs": 3})
    assert sum(out["trials"].values()) == 3
    client = MlflowClient(out["mlflow"]["tracking_uri"])
    parent = client.get_run(out["mlflow"]["run_id"])
    assert parent.data.tags["graphpipe.kind"] == "tune" and parent.data.tags["prefect.flow_run_id"]
    children = client.search_runs([out["mlflow"]["experiment_id"]], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "tuned")} == {"tuned/best.yaml", "tuned/best.json"}
    tuned = yaml.safe_load(Path(out["tuned_config"]).read_text())

    # a following run with use_tuned trains with the tuned values (explicit ones still win)
    result = graph_pipeline(base, overrides={"tune.use_tuned": True, "train.epochs": 20})
    run = client.get_run(result["mlflow"]["run_id"])
    params = run.data.params
    assert params["normalize.method"] == tuned["normalize"]["method"]
    assert float(params["train.lr"]) == pytest.approx(tuned["train"]["lr"])
    assert params["train.hidden"] == str(tuned["train"]["hidden"])
    assert params["train.clusters_per_batch"] == str(tuned["train"]["clusters_per_batch"])
    assert params["train.epochs"] == "20"  # explicit beats tuned
    assert run.data.tags["graphpipe.tuned_config"] == out["tuned_config"]

    # every run carries the features-only baseline and the health check
    metrics = run.data.metrics
    assert 0.4 <= metrics["baseline_test_acc"] <= 0.7 and 0.4 <= metrics["baseline_val_acc"] <= 0.7, metrics
    assert metrics["test_acc"] > metrics["baseline_test_acc"] + 0.1  # what the graph adds on Cora
    assert run.data.tags["graphpipe.health"] == "ok" and run.data.tags["graphpipe.health_reason"] == "none"
    assert result["baseline"]["test_acc"] == pytest.approx(metrics["baseline_test_acc"])
    assert result["health"]["status"] == "ok"

    # ... and so does the run's Prefect artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        latest = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["graphpipe-cora"])),
                                        sort="CREATED_DESC", limit=1)[0]
        tune_artifact = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["graphpipe-tune-cora"])), limit=1)[0]
    assert "features only (mlp)" in latest.data and "**Run health:** ok" in latest.data
    assert "best (trial" in tune_artifact.data and out["tuned_config"] in tune_artifact.data


@pytest.mark.slow
def test_cli_tune_then_run_with_the_tuned_config(prefect_harness, graph_files, tmp_path, capsys):
    from flows.cli import main

    store = str(tmp_path / "store")
    inputs = ["--edges", str(graph_files.edges_path), "--nodes", str(graph_files.nodes_path), "--store", store, "--name", "g"]
    assert main(["tune", *inputs, "--trials", "3", "--set", "train.epochs=4", "--set", "partition.num_parts=8"]) == 0
    out = capsys.readouterr().out
    assert "best    (trial" in out and "default (trial 0)" in out and "3 trial runs under it" in out
    best_yaml = Path(store) / "graphs" / "g" / "tuned" / "best.yaml"
    assert f"best config: {best_yaml}" in out
    tuned = yaml.safe_load(best_yaml.read_text())

    assert main(["train", "--store", store, "--name", "g", "--set", "tune.use_tuned=true",
                 "--set", "partition.num_parts=8", "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "features only (mlp, no graph)" in out
    run_id = out.split("MLflow: run ")[1].split()[0]
    params = MlflowClient(f"sqlite:///{store}/mlflow.db").get_run(run_id).data.params
    assert params["train.hidden"] == str(tuned["train"]["hidden"]) and params["normalize.method"] == tuned["normalize"]["method"]
    assert params["train.epochs"] == "2"
