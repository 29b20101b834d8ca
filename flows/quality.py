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
from storage.store import FeaturesRef, NodeDataRef, Store, output_at
from tasks.track import tracking as track_mod
from tasks.evaluate.baseline import BaselineResult, train_baseline
from tasks.config import PipelineConfig
from tasks.evaluate.evaluate import EvaluationRef
from tasks.evaluate.health import Health, chance_level, check_run_health
from tasks.train.result import TrainResult


@task(name="features-baseline", **_retrying)
def baseline(node_data: NodeDataRef, config: PipelineConfig, num_classes: int,
             run: track_mod.RunRef | None = None) -> BaselineResult | None:
    """Train the features-only model (``baseline.enabled``) and log ``baseline_val_acc``,
    ``baseline_test_acc`` (and ``baseline_train_acc``) to the MLflow run."""
    if not config.baseline.enabled:
        return None
    result = train_baseline(node_data, config.baseline, num_classes)
    get_run_logger().info(
        "features-only baseline (%s): val_acc %.4f, test_acc %.4f (%.1f s)",
        result.model, result.val_acc, result.test_acc, result.seconds,
    )
    if run is not None:
        track_mod.log_epoch(run, 0, result.metrics())
        track_mod.log_tags(run, {"graphpipe.baseline_model": result.model,
                                 "graphpipe.baseline_best_epoch": result.best_epoch})
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
    return out + health.markdown()


def summary(base: BaselineResult | None, health: Health) -> dict[str, Any]:
    """The part of the pipeline's result (and the CLI summary) about the baseline and the check."""
    return {
        "baseline": asdict(base) if base is not None else None,
        "health": {"status": health.status, "reason": health.reason, "suggestions": health.suggestions},
    }
