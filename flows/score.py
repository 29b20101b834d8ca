"""Scoring and what changed: the ``graph-score`` flow (``graphpipe score``) and the scoring step at
the end of the pipeline flow.

Both score the graph's snapshot with the champion (or ``score.model``), compare with the graph's
previous "latest" scoring (:func:`tasks.score.score.drift_since_latest`), publish a Prefect
markdown artifact (marked ALERT when the share of changed predictions exceeds
``score.drift_alert``) and then move the "latest" pointer. In the pipeline the drift figures are
also logged to the night's MLflow run (``drift_*`` metrics, tag ``graphpipe.drift_alert``)::

    from flows.score import graph_score
    graph_score(overrides={"store": "store", "data.name": "cora"})
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows import quiet_errors, stages
from flows.startup import apply_startup_limit
from storage.scores import ScoresRef, scores_location, set_latest
from storage.store import NodeDataRef, SnapshotRef, Store, store_for
from tasks.config import PipelineConfig, ScoreConfig, load_config
from tasks.tune.tuned import apply_tuned

if TYPE_CHECKING:
    from tasks.score.drift import Drift
    from tasks.track.tracking import RunRef

apply_startup_limit()
quiet_errors.install()


@task(name="resolve-scoring-model", **stages._retrying)
def scoring_model(config: PipelineConfig) -> tuple[str, str]:
    """``(local weights, label)`` of the model that scores (:func:`tasks.score.source.model_weights`)."""
    from tasks.score.source import model_weights

    return model_weights(config)


@stages.reusable_stage(name="score", **stages._retrying)
def score(node_data: NodeDataRef, snapshot: SnapshotRef, config: ScoreConfig, store: Store, *,
          weights: str, model_label: str) -> ScoresRef:
    """Every node of the snapshot scored by full-graph inference -> the ``scores`` output."""
    from tasks.score.score import score_nodes

    return score_nodes(node_data, snapshot, config, store, weights=weights, model_label=model_label)


def _log_drift(run: RunRef, drift: Drift | None, alert: bool) -> None:
    """The drift figures as ``drift_*`` metrics and the alert tag on the MLflow run ``run``."""
    from mlflow.entities import Metric
    import time

    from tasks.track.tracking import _client, log_tags

    if drift is not None:
        now = int(time.time() * 1000)
        _client(run.tracking_uri).log_batch(run.run_id, metrics=[Metric(k, v, now, 0) for k, v in drift.metrics().items()])
    log_tags(run, {"graphpipe.drift_alert": "true" if alert else "false"})


@task(name="report-drift", **stages._retrying)
def report_drift(current: ScoresRef, config: ScoreConfig, store: Store, run: RunRef | None = None) -> dict[str, Any]:
    """Drift of ``current`` against the previous latest scoring: a markdown artifact, the MLflow
    figures when there is a ``run``; then ``current`` becomes the latest. Returns the figures."""
    from tasks.score.drift import drift_markdown
    from tasks.score.score import drift_since_latest

    drift, previous = drift_since_latest(current, store)
    alert = drift is not None and drift.changed_share > config.drift_alert
    if drift is None:
        text = f"## Prediction drift\n\nFirst scoring of {current.graph}: nothing to compare with yet.\n"
    else:
        text = drift_markdown(drift, config.drift_alert) + f"\nprevious scoring: {previous.model}, {previous.path}\n"
    text += f"\nscored with {current.model}: `{scores_location(store.open(current.path))}`\n"
    create_markdown_artifact(key=("graphpipe-drift-" + re.sub(r"[^a-z0-9-]+", "-", current.graph.lower()))[:100],
                             markdown=text, description=f"prediction drift of {current.graph}")
    if run is not None:
        _log_drift(run, drift, alert)
    set_latest(store, current)
    if alert:
        get_run_logger().warning("drift ALERT on %s: %.1f%% of predictions changed (threshold %.1f%%)",
                                 current.graph, 100 * drift.changed_share, 100 * config.drift_alert)
    return {"alert": alert, **(drift.metrics() if drift is not None else {})}


def score_and_drift(cfg: PipelineConfig, store: Store, snapshot: SnapshotRef, node_data: NodeDataRef,
                    run: RunRef | None = None) -> dict[str, Any]:
    """Score ``snapshot`` with the champion (or ``score.model``), report drift, move "latest".
    Returns the run summary's ``scores`` entry."""
    weights, label = scoring_model(cfg)
    ref = score(node_data, snapshot, cfg.score, store, weights=weights, model_label=label)
    drift = report_drift(ref, cfg.score, store, run)
    return {"path": scores_location(store.open(ref.path)), "model": label, "reused": ref.reused, "drift": drift}


@flow(name="graph-score")
def graph_score(config: PipelineConfig | None = None, config_file: str | None = None,
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score the graph's current snapshot with the champion, without training (normalize,
    partition and layout reused from the store when cached), and report the drift."""
    stages.forward_library_logs()
    cfg = load_config(config_file, overrides, base=config)
    if cfg.tune.use_tuned:
        cfg, _ = apply_tuned(cfg)
    stages.show_progress(cfg.progress)
    store = store_for(cfg)
    store.check()
    with store.lock(cfg.data.name, cfg.lock_timeout_seconds):
        snapshot = stages.current_snapshot(cfg.data.name, store)
        features = stages.normalize(snapshot, cfg.normalize, store)
        part = stages.partition(snapshot, cfg.partition, store)
        node_data = stages.layout(part, snapshot, features, store)
        return {"graph": cfg.data.name, "snapshot": snapshot.path,
                "scores": score_and_drift(cfg, store, snapshot, node_data)}
