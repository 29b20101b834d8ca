"""Prefect tasks that judge a run: the features-only baseline and the failing-run check.

Both run after evaluation in every pipeline run; their results go to MLflow (metrics
``baseline_*_acc``, tags ``graphpipe.health`` and ``graphpipe.health_reason``), the Prefect log
and the run's markdown artifact (:func:`markdown`), and the CLI summary.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from prefect import get_run_logger, task

from flows.stages import _retrying, read_history
from storage.arrays import ClusterGraph
from storage.store import FeaturesRef, NodeDataRef, SnapshotRef, Store, output_at
from tasks.track import tracking as track_mod
from tasks.evaluate.baseline import BaselineResult, run_baseline
from tasks.config import BaselineConfig, PipelineConfig
from tasks.evaluate.evaluate import EvaluationRef
from tasks.evaluate.health import Health, chance_level, check_run_health
from tasks.train.result import TrainResult


@task(name="features-baseline", **_retrying)
def baseline(node_data: NodeDataRef, snapshot: SnapshotRef, config: BaselineConfig, num_classes: int, store: Store,
             run: track_mod.RunRef | None = None) -> BaselineResult | None:
    """The features-only model (``baseline.enabled``): trained, or the graph's stored result
    reused on a snapshot that barely grew (:func:`tasks.evaluate.baseline.run_baseline`); logs
    ``baseline_val_acc``, ``baseline_test_acc`` (and ``baseline_train_acc``) and the tags
    ``graphpipe.baseline_mode`` (``trained`` | ``reused``) and ``graphpipe.baseline_from`` (the
    snapshot it was trained on) to the MLflow run."""
    if not config.enabled:
        return None
    result = run_baseline(node_data, snapshot, config, num_classes, store)
    if result.mode == "reused":
        get_run_logger().info("features-only baseline (%s) reused from snapshot %s: val_acc %.4f, test_acc %.4f (%s)",
                              result.model, result.trained_on, result.val_acc, result.test_acc, result.reason)
    else:
        get_run_logger().info("features-only baseline (%s) trained: val_acc %.4f, test_acc %.4f (%.1f s; %s)",
                              result.model, result.val_acc, result.test_acc, result.seconds, result.reason)
    if run is not None:
        track_mod.log_epoch(run, 0, result.metrics())
        track_mod.log_tags(run, {"graphpipe.baseline_model": result.model,
                                 "graphpipe.baseline_best_epoch": result.best_epoch,
                                 "graphpipe.baseline_mode": result.mode,
                                 "graphpipe.baseline_from": result.trained_on,
                                 "graphpipe.baseline_reason": result.reason[:5000]})
    return result


@task(name="check-run-health")
def check_health(
    run: track_mod.RunRef,
    config: PipelineConfig,
    features: FeaturesRef,
    node_data: NodeDataRef,
    trained: TrainResult,
    evaluation: EvaluationRef,
    base: BaselineResult | None,
) -> Health:
    """The failing-run check (:func:`tasks.evaluate.health.check_run_health`): a WARNING in the log with
    what to try, and the MLflow tags ``graphpipe.health``, ``graphpipe.health_reason``."""
    graph = ClusterGraph.open(output_at(node_data.partition.path), output_at(node_data.path))
    chance = chance_level(np.asarray(graph.y), np.asarray(graph.split), trained.num_classes)
    health = check_run_health(
        read_history(trained, Store(config.store)),
        chance=chance,
        val_acc=evaluation.metrics.get("val_acc"),
        baseline_val_acc=base.val_acc if base is not None else None,
        settings={**config.flat(), "normalize.method_used": features.method},
    )
    logger = get_run_logger()
    if health.status == "ok":
        logger.info(health.message())
    else:
        logger.warning(health.message())
    track_mod.log_tags(run, health.tags())
    return health


def markdown(base: BaselineResult | None, health: Health, metrics: dict[str, float]) -> str:
    """The artifact's section: the GNN beside the features-only baseline, and the health check."""
    out = ""
    if base is not None:
        out += (
            "| model | val accuracy | test accuracy |\n|---|---|---|\n"
            f"| graph model | {metrics.get('val_acc', float('nan')):.4f} | {metrics.get('test_acc', float('nan')):.4f} |\n"
            f"| features only ({base.model}) | {base.val_acc:.4f} | {base.test_acc:.4f} |\n\n"
        )
        if base.mode == "reused":
            out += f"Features-only baseline reused from snapshot {base.trained_on} ({base.reason}).\n\n"
    return out + health.markdown()


def summary(base: BaselineResult | None, health: Health) -> dict[str, Any]:
    """The part of the pipeline's result (and the CLI summary) about the baseline and the check."""
    return {
        "baseline": asdict(base) if base is not None else None,
        "health": {"status": health.status, "reason": health.reason, "suggestions": health.suggestions},
    }
