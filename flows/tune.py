"""The ``graph-tune`` flow: an Optuna search on a graph's cached snapshot and partition.

::

    from flows.tune import graph_tune
    out = graph_tune(config, overrides={"tune.trials": 20})
    print(out["best"]["val_acc"], out["tuned_config"])

With input files in the config (``data.edges``) the graph is ingested first (a cache hit when
unchanged), else the graph's current snapshot is used. See :mod:`tasks.tune.study` for the space, the
pruning, the MLflow child runs and where the study and the best config are kept.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows import stages
from flows.pipeline import _graph_lock, resolve
from storage.store import store_for
from tasks.config import PipelineConfig
from tasks.track.tracking import run_link
from tasks.tune.study import TuneResult, tune_graph


@flow(name="graph-tune", log_prints=True)
def graph_tune(
    config: PipelineConfig | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Search normalization, lr, weight decay, hidden, dropout, layers and clusters per batch
    (``tune.trials`` trials in all, ``tune.timeout`` seconds at most); each trial an MLflow child
    run of one parent run; the best config saved to ``<store>/graphs/<name>/tuned/best.yaml``."""
    stages.forward_library_logs()
    cfg = resolve(config, config_file, overrides)
    if cfg.tune.use_tuned:  # the search starts from the configured values, not from its own last result
        cfg = resolve(config, config_file, {**(overrides or {}), "tune.use_tuned": False})
    stages.show_progress(cfg.progress)
    store = store_for(cfg)
    store.check()
    stages.check_tracking(cfg)
    # the tune writes the graph's snapshot, features, partition and node data like a run does: it
    # holds the graph's lock, so a nightly run started meanwhile waits for it (lock_timeout_seconds)
    with _graph_lock(cfg, store):
        snapshot = (stages.ingest(cfg.data, cfg.split, store) if cfg.data.edges
                    else stages.current_snapshot(cfg.data.name, store))
        partition = stages.partition(snapshot, cfg.partition, store)
        result = tune_graph(
            cfg, snapshot, partition,
            normalize=lambda snap, c: stages.normalize(snap, c.normalize, store),
            layout=lambda part, snap, feats, c: stages.layout(part, snap, feats, store),
            parent_tags={"prefect.flow_run_id": str(flow_run.get_id() or ""),
                         "prefect.flow_run_name": str(flow_run.get_name() or "")},
            run_name=f"tune-{cfg.data.name}-{flow_run.get_name() or 'local'}",
        )
    logger = get_run_logger()
    logger.info("tune of %s: best trial %d val_acc %.4f test_acc %.4f (default: val_acc %s, test_acc %s); %s; "
                "best config in %s", cfg.data.name, result.best_trial, result.best_val_acc, result.best_test_acc,
                _fmt(result.default_val_acc), _fmt(result.default_test_acc), result.trials, result.best_yaml)
    create_markdown_artifact(key=("graphpipe-tune-" + "".join(c if c.isalnum() else "-" for c in cfg.data.name.lower()))[:100],
                             markdown=markdown(cfg, result), description=f"graphpipe tune on {cfg.data.name}")
    return summary(cfg, result)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def markdown(cfg: PipelineConfig, result: TuneResult) -> str:
    """The tune's Prefect artifact: best against default, the best values, how to use them."""
    params = "\n".join(f"| `{k}` | {v:.4g} |" if isinstance(v, float) else f"| `{k}` | {v} |"
                       for k, v in result.best_params.items())
    link = run_link(result.parent_run) if result.parent_run else ""
    return (
        f"## graphpipe tune: {cfg.data.name}\n\n{link} (each trial is a child run)\n\n"
        f"| config | val accuracy | test accuracy |\n|---|---|---|\n"
        f"| best (trial {result.best_trial}) | {result.best_val_acc:.4f} | {result.best_test_acc:.4f} |\n"
        f"| default | {_fmt(result.default_val_acc)} | {_fmt(result.default_test_acc)} |\n\n"
        f"Trials: {result.trials}; {result.seconds:.0f} s.\n\n| key | best value |\n|---|---|\n{params}\n\n"
        f"Saved to `{result.best_yaml}`: runs use it with `tune.use_tuned: true` (or `--config {result.best_yaml}`).\n"
    )


def summary(cfg: PipelineConfig, result: TuneResult) -> dict[str, Any]:
    """The flow's result (and what ``graphpipe tune`` prints)."""
    run = result.parent_run
    return {
        "graph": cfg.data.name,
        "best": {"trial": result.best_trial, "val_acc": result.best_val_acc, "test_acc": result.best_test_acc,
                 "params": result.best_params},
        "default": {"val_acc": result.default_val_acc, "test_acc": result.default_test_acc},
        "trials": result.trials,
        "seconds": result.seconds,
        "tuned_config": result.best_yaml,
        "study": {"name": result.study_name, "storage": result.study_storage},
        "mlflow": {"tracking_uri": run.tracking_uri, "experiment_id": run.experiment_id, "run_id": run.run_id,
                   "child_runs": result.child_runs} if run else None,
    }
