"""The pipeline as Prefect flows: the whole thing, and each stage on its own.

::

    from flows.pipeline import graph_pipeline
    from tasks.config import PipelineConfig, DataConfig

    result = graph_pipeline(PipelineConfig(store="store", data=DataConfig(
        name="cora", edges=["cora/edges.csv"], nodes="cora/nodes.parquet")))
    print(result["metrics"]["test_acc"])
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from flows import quiet_errors, stages
from flows.startup import apply_startup_limit
from storage.evaluation import predictions_location
from storage.store import NodeDataRef, PartitionRef, Store, output_at, store_for
from tasks.config import PipelineConfig, load_config, redact_uri
from tasks.tune.tuned import apply_tuned, tuned_config_path

# torch, PyG and MLflow (tasks.track.tracking, tasks.train.loop...) are imported by the stages that use them, so
# `graphpipe ingest` never loads them. Flow calls from Python wait for the embedded Prefect server
# as long as the command line does (flows/startup.py).
apply_startup_limit()

quiet_errors.install()  # flow runs on workers too: no traceback for a user's mistake


def resolve(config: PipelineConfig | dict | None, config_file: str | None, overrides: dict[str, Any] | None) -> PipelineConfig:
    """The flow's parameters as one validated config: ``config``, then the file, then overrides;
    with ``tune.use_tuned``, the graph's tuned values for every key not set explicitly."""
    cfg = load_config(config_file, overrides, base=config)
    if cfg.tune.use_tuned:
        cfg, _ = apply_tuned(cfg)
    return cfg


def _setup(config: PipelineConfig | None, config_file: str | None,
           overrides: dict[str, Any] | None) -> tuple[PipelineConfig, Store]:
    """What every flow does first: its logging, the config resolved once, the progress switch
    set from it, and the one :class:`Store` its stages share."""
    stages.forward_library_logs()
    cfg = resolve(config, config_file, overrides)
    stages.show_progress(cfg.progress)
    store = store_for(cfg)
    store.check()  # a remote store's bucket and credentials, before any work
    return cfg, store


def _graph_lock(cfg: PipelineConfig, store: Store):
    """The graph's lock in the store, held while a flow writes it: a second run of the same graph
    waits (saying for whom) up to ``lock_timeout_seconds``, then stops with a clear error. Training
    on a deployment runs under the lock its parent flow holds."""
    return store.lock(cfg.data.name, cfg.lock_timeout_seconds)


def _prepare(cfg: PipelineConfig, store: Store, snapshot):
    """normalize, partition and lay out the node data of ``snapshot``: ``(features, partition, node_data)``."""
    features = stages.normalize(snapshot, cfg.normalize, store)
    partition = stages.partition(snapshot, cfg.partition, store)
    return features, partition, stages.layout(partition, snapshot, features, store)


def _train_and_track(cfg: PipelineConfig, store: Store, snapshot, train_on: str | None) -> dict[str, Any]:
    """normalize -> partition -> train -> evaluate -> MLflow, given a snapshot."""
    from flows import quality
    from tasks.track.tracking import end_run, ui_command

    features, partition, node_data = _prepare(cfg, store, snapshot)
    tuned = str(tuned_config_path(cfg)) if cfg.tune.use_tuned and tuned_config_path(cfg).is_file() else "none"
    run = stages.start_tracking(cfg, {**stages.lineage_tags(snapshot, features, partition, node_data),
                                      "graphpipe.tuned_config": tuned})
    try:
        init_from = stages.champion_weights(cfg) if cfg.train.warm_start else None
        if train_on:
            trained = stages.train_on_deployment(train_on, node_data, cfg, run, init_from, store=store)
        else:
            trained = stages.train(node_data, cfg, run, init_from, store=store)
        evaluation = stages.evaluate(trained, node_data, snapshot, store, device=cfg.train.device,
                                     seed=cfg.train.seed, embedding_nodes=cfg.track.embedding_plot_nodes,
                                     workers=cfg.train.world_size,
                                     # the champion scores later: if it is this model, from this pass
                                     scores=cfg.score if cfg.score.enabled and cfg.score.model is None else None)
        base = quality.baseline(node_data, snapshot, cfg.baseline, trained.num_classes, store, run)
        health = quality.check_health(run, cfg, features, node_data, trained, evaluation, base)
        tracked = stages.log_run(run, cfg, snapshot, features, node_data, trained, evaluation,
                                 notes=quality.markdown(base, health, evaluation.metrics))
    except BaseException as exc:
        end_run(run, "FAILED", reason=f"{type(exc).__name__}: {exc}")
        raise
    end_run(run, "FINISHED")
    summary = {
        "graph": cfg.data.name,
        "snapshot": snapshot.path,
        "partition": partition.path,
        "metrics": evaluation.metrics,
        "predictions": predictions_location(output_at(evaluation.path)),
        "mlflow": {
            "tracking_uri": redact_uri(run.tracking_uri),
            "experiment_id": run.experiment_id,
            "run_id": run.run_id,
            "model": tracked.model_name,
            "model_version": tracked.model_version,
            "champion": tracked.champion,
            "ui": ui_command(run),
        },
        **quality.summary(base, health),
    }
    if cfg.score.enabled:  # tonight's snapshot scored with the (possibly new) champion; drift vs the last scoring
        from flows.score import score_and_drift

        summary["scores"] = score_and_drift(cfg, store, snapshot, node_data, run)
    m = evaluation.metrics
    get_run_logger().info(
        "%s: train_acc %.4f, val_acc %.4f, test_acc %.4f (test macro-F1 %.4f); MLflow run %s",
        cfg.data.name, m["train_acc"], m["val_acc"], m["test_acc"], m["test_macro_f1"], run.run_id,
    )
    return summary


@flow(name="graph-pipeline", log_prints=True)
def graph_pipeline(
    config: PipelineConfig | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    train_on: str | None = None,
) -> dict[str, Any]:
    """ingest -> normalize -> partition -> train -> evaluate -> MLflow.

    ``train_on``: a deployment of :func:`train_stage` (e.g. ``graph-train-stage/gpu`` on a GPU
    work pool) to run training on; ``None`` trains inside this flow run.
    """
    cfg, store = _setup(config, config_file, overrides)
    stages.check_tracking(cfg)
    with _graph_lock(cfg, store):
        snapshot = stages.ingest(cfg.data, cfg.split, store)
        return _train_and_track(cfg, store, snapshot, train_on)


@flow(name="graph-ingest")
def ingest_flow(config: PipelineConfig | None = None, config_file: str | None = None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """ingest only: the snapshot becomes the graph's current one."""
    cfg, store = _setup(config, config_file, overrides)
    with _graph_lock(cfg, store):
        snapshot = stages.ingest(cfg.data, cfg.split, store)
    return {"snapshot": snapshot.path, "fingerprint": snapshot.fingerprint}


@flow(name="graph-partition")
def partition_flow(config: PipelineConfig | None = None, config_file: str | None = None,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """normalize + partition the current snapshot."""
    cfg, store = _setup(config, config_file, overrides)
    with _graph_lock(cfg, store):
        snapshot = stages.current_snapshot(cfg.data.name, store)
        _, partition, node_data = _prepare(cfg, store, snapshot)
    return {"snapshot": snapshot.path, "partition": partition.path, "node_data": node_data.path}


@flow(name="graph-train")
def train_flow(config: PipelineConfig | None = None, config_file: str | None = None,
               overrides: dict[str, Any] | None = None, train_on: str | None = None) -> dict[str, Any]:
    """Train on the current snapshot (normalize and partition reused when cached)."""
    cfg, store = _setup(config, config_file, overrides)
    stages.check_tracking(cfg)
    with _graph_lock(cfg, store):
        return _train_and_track(cfg, store, stages.current_snapshot(cfg.data.name, store), train_on)


@flow(name="graph-train-stage")
def train_stage(
    node_data: dict[str, Any], config: PipelineConfig, run: dict[str, Any], init_from: str | None = None
) -> dict[str, Any]:
    """Training alone, for a GPU work pool: reads the partitioned graph from the shared store,
    logs epochs to the MLflow run ``run``, writes checkpoints and its result back to the store."""
    from tasks.track.tracking import RunRef

    stages.forward_library_logs()
    stages.show_progress(config.progress)
    ref = NodeDataRef(**{**node_data, "partition": PartitionRef(**node_data["partition"])})
    return asdict(stages.train(ref, config, RunRef(**run), init_from))
