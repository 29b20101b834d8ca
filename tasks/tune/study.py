"""Hyper-parameter search for one graph: an Optuna study over the cached snapshot and partition.

The space: normalization (``row``, ``standard``, ``none``), learning rate, weight decay, hidden
size, dropout, number of layers and clusters per batch. The sampler is TPE (seeded); bad trials
are pruned by a median rule on the validation accuracy reported after every epoch (through the
training's ``on_epoch`` callback). The first trial of a new study is the configured (default)
setting, so the best trial is never worse than the defaults on validation accuracy.

Every trial is an MLflow child run (tag ``mlflow.parentRunId``) of the tune's parent run, with its
config as params and its per-epoch metrics; a pruned one says so (tag ``graphpipe.tune_state``).
Normalization is computed per trial only when it changes (the store caches it by fingerprint);
the METIS partition is computed once.

The study lives in the graph's tuned directory (:mod:`storage.tuned`: an SQLite database), named
after the data and partition fingerprints and the search space, so a tune that is stopped resumes
where it was (``tune.trials`` is the study's total). The best config is saved beside it (usable
as ``--config`` or through ``tune.use_tuned``) with its scores (:func:`read_best`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
from storage.arrays import ClusterGraph
from storage.checkpoints import Checkpoints
from storage.fingerprint import fingerprint_value
from storage.store import FeaturesRef, NodeDataRef, PartitionRef, SnapshotRef, Store, output_at
from storage.tuned import TunedFiles, open_tuned, read_tuned_scores, write_tuned
from tasks.track import tracking as track_mod
from tasks.config import NormalizeConfig, PipelineConfig, load_config
from tasks.errors import InputError
from tasks.evaluate.inference import predict_full_graph
from tasks.evaluate.metrics import split_metrics
from tasks.train.model import load_trained, resolve_device
from tasks.train.loop import train_cluster_gcn
from tasks.train.steps import partition_cut_fraction, resolve_clusters_per_batch

if TYPE_CHECKING:  # optuna is imported where it is used
    import optuna

log = logging.getLogger(__name__)

SPACE_VERSION = "space-v1"
# every normalization the config knows, but "auto" (which is one of them)
NORMALIZATIONS = [m for m in get_args(NormalizeConfig.model_fields["method"].annotation) if m != "auto"]
HIDDEN = [64, 128, 256]
LR = (1e-3, 5e-2)
WEIGHT_DECAY = (1e-7, 1e-2)
DROPOUT = (0.0, 0.7, 0.1)
LAYERS = (2, 3)
# keys a tuned config sets (with train.epochs and train.patience, so a run repeats the trial)
TUNED_KEYS = ("normalize.method", "train.lr", "train.weight_decay", "train.hidden", "train.dropout",
              "train.num_layers", "train.clusters_per_batch")


def suggest(trial: optuna.Trial, num_parts: int) -> dict[str, Any]:
    """One point of the search space as dotted config keys."""
    return {
        "normalize.method": trial.suggest_categorical("normalize.method", NORMALIZATIONS),
        "train.lr": trial.suggest_float("train.lr", *LR, log=True),
        "train.weight_decay": trial.suggest_float("train.weight_decay", *WEIGHT_DECAY, log=True),
        "train.hidden": trial.suggest_categorical("train.hidden", HIDDEN),
        "train.dropout": trial.suggest_float("train.dropout", DROPOUT[0], DROPOUT[1], step=DROPOUT[2]),
        "train.num_layers": trial.suggest_int("train.num_layers", *LAYERS),
        "train.clusters_per_batch": trial.suggest_int("train.clusters_per_batch", 1, max(1, num_parts // 2), log=True),
    }


def default_point(config: PipelineConfig, method: str, clusters_per_batch: int, num_parts: int) -> dict[str, Any]:
    """The configured setting as a point of the space (clamped into its ranges), enqueued as the
    first trial of a new study: the tune's reference."""
    tc = config.train

    def clamp(v: float, lo: float, hi: float) -> float:
        return float(min(max(v, lo), hi))

    return {
        "normalize.method": method,
        "train.lr": clamp(tc.lr, *LR),
        "train.weight_decay": clamp(tc.weight_decay, *WEIGHT_DECAY),
        "train.hidden": min(HIDDEN, key=lambda h: abs(h - tc.hidden)),
        "train.dropout": round(clamp(tc.dropout, DROPOUT[0], DROPOUT[1]), 1),
        "train.num_layers": int(clamp(tc.num_layers, *LAYERS)),
        "train.clusters_per_batch": int(clamp(clusters_per_batch, 1, max(1, num_parts // 2))),
    }


@dataclass
class TuneResult:
    """What a tune found: the best trial, the default trial, counts, and where things are."""

    best_params: dict[str, Any]
    best_val_acc: float
    best_test_acc: float
    best_trial: int
    default_val_acc: float | None
    default_test_acc: float | None
    trials: dict[str, int]
    seconds: float
    best_yaml: str
    study_storage: str
    study_name: str
    parent_run: track_mod.RunRef | None = None
    child_runs: list[str] = field(default_factory=list)


def _test_accuracy(checkpoint_dir: str, node_data: NodeDataRef, num_classes: int, device: str) -> dict[str, float]:
    model, _ = load_trained(checkpoint_dir)
    graph = ClusterGraph.open(output_at(node_data.partition.path), output_at(node_data.path))
    dev = resolve_device(device)
    pred = predict_full_graph(model.to(dev), graph, dev, scratch_dir=Checkpoints.at(checkpoint_dir).local_dir())
    sm = split_metrics(pred, np.asarray(graph.y), np.asarray(graph.split), num_classes)
    graph.release()
    return sm.flat()


Normalizer = Callable[[SnapshotRef, PipelineConfig], FeaturesRef]
Layout = Callable[[PartitionRef, SnapshotRef, FeaturesRef, PipelineConfig], NodeDataRef]


@dataclass
class _Tune:
    """What every step of one tune shares: its inputs, the fixed training settings and its runs."""

    config: PipelineConfig
    snapshot: SnapshotRef
    partition: PartitionRef
    normalize: Normalizer
    layout: Layout
    files: TunedFiles
    fixed: dict[str, Any]
    num_parts: int = 0
    parent: track_mod.RunRef | None = None
    children: list[str] = field(default_factory=list)


def tune_graph(
    config: PipelineConfig,
    snapshot: SnapshotRef,
    partition: PartitionRef,
    *,
    normalize: Normalizer,
    layout: Layout,
    parent_tags: dict[str, str] | None = None,
    run_name: str | None = None,
) -> TuneResult:
    """Run (or resume) the graph's study up to ``tune.trials`` trials (or ``tune.timeout``
    seconds), each trial an MLflow child run under one parent run; save the best config.

    Args:
        config: the resolved pipeline config; ``config.tune`` drives the search, the other sections
            are each trial's starting point (the tuned keys, :data:`TUNED_KEYS`, are replaced).
        snapshot: the graph's snapshot (ingested).
        partition: its METIS partition, shared by every trial.
        normalize: makes a trial's normalized features (the pipeline's cached stage, or
            :func:`tasks.normalize.features.normalize_features`).
        layout: makes a trial's node data in partition order (the pipeline's cached stage, or
            :func:`tasks.partition.partition.layout_node_data`).
        parent_tags: extra tags of the parent MLflow run (e.g. the Prefect flow run).
        run_name: the parent run's name (default ``tune-<graph>``).

    Returns:
        the best and the default trial's scores, the trial counts and where the best config is.

    Raises:
        InputError: when no trial completed (all pruned or failed).

    Caveats: the study is keyed by the data and partition fingerprints and the fixed training
    settings, so a changed graph or setting starts a new study in the same database; ``tune.trials``
    counts the study's trials, those of earlier (stopped) tunes included. The parent run is marked
    FAILED when the tune raises.
    """
    t0 = time.perf_counter()
    tune = _Tune(config, snapshot, partition, normalize, layout,
                 files=open_tuned(Store(config.store), config.data.name), fixed=_fixed_settings(config))
    default_method, default_q = _reference_setting(tune)
    study, study_name = _open_study(tune)
    _enqueue_default(study, tune, default_method, default_q)
    tune.parent = track_mod.start_run(
        config, {"graphpipe.kind": "tune", "graphpipe.tune_study": study_name,
                 "graphpipe.tune_storage": tune.files.study_url, **(parent_tags or {})},
        run_name=run_name or f"tune-{config.data.name}")
    try:
        _optimize(study, tune)
        result = _finish(tune, study, study_name, time.perf_counter() - t0)
    except BaseException as exc:
        track_mod.end_run(tune.parent, "FAILED", reason=f"{type(exc).__name__}: {exc}")
        raise
    result.parent_run, result.child_runs = tune.parent, tune.children
    _log_parent(tune.parent, result, tune.files)
    track_mod.end_run(tune.parent, "FINISHED")
    return result


def _fixed_settings(config: PipelineConfig) -> dict[str, Any]:
    """The training settings no trial changes: epochs, the trials' patience (each trial stops after
    ``tune.patience`` epochs without a better validation accuracy) and the untuned ``train.*`` keys."""
    tc = config.tune
    skipped = ("epochs", "patience", "device", "prefetch", "resume", "loader_workers", "warm_start")
    return {"epochs": config.train.epochs, "patience": min(config.train.patience or tc.patience, tc.patience),
            "rest": {k: v for k, v in config.train.model_dump(mode="json").items()
                     if f"train.{k}" not in TUNED_KEYS and k not in skipped}}


def _reference_setting(tune: _Tune) -> tuple[str, int]:
    """The configured normalization (``auto`` resolved) and clusters per batch; sets ``num_parts``."""
    features = tune.normalize(tune.snapshot, tune.config)
    node_data = tune.layout(tune.partition, tune.snapshot, features, tune.config)
    graph = ClusterGraph.open(output_at(tune.partition.path), output_at(node_data.path))
    try:
        tune.num_parts = graph.num_parts
        return features.method, resolve_clusters_per_batch(graph, tune.config.train,
                                                           partition_cut_fraction(node_data, graph))
    finally:
        graph.release()


def _open_study(tune: _Tune) -> tuple[optuna.Study, str]:
    """The graph's study (created or resumed) with its seeded TPE sampler and median pruner."""
    import optuna

    tc = tune.config.tune
    study_name = "tune-" + fingerprint_value(SPACE_VERSION, NORMALIZATIONS, tune.snapshot.fingerprint,
                                             tune.partition.fingerprint, tune.fixed)
    with warnings.catch_warnings():  # heartbeats (trials of a killed tune are marked failed) are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(tune.files.study_url, heartbeat_interval=60, grace_period=180)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=tc.seed), pruner=optuna.pruners.NopPruner())
    done_before = len(study.trials)
    # reseed on resume, so a resumed study does not replay the first run's random trials
    study.sampler = optuna.samplers.TPESampler(seed=tc.seed + done_before, n_startup_trials=max(4, min(10, tc.trials // 2)))
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=tc.prune_startup_trials, n_warmup_steps=tc.prune_warmup_epochs)
    return study, study_name


def _enqueue_default(study: optuna.Study, tune: _Tune, method: str, clusters_per_batch: int) -> None:
    """The configured setting as the study's next trial, unless it already ran (or waits to)."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.WAITING)
    if not any(t.user_attrs.get("default") and t.state in states for t in study.trials):
        study.enqueue_trial(default_point(tune.config, method, clusters_per_batch, tune.num_parts),
                            user_attrs={"default": True})


def _optimize(study: optuna.Study, tune: _Tune) -> None:
    """Run the trials the study still lacks (completed and pruned ones count), within ``tune.timeout``."""
    import optuna

    tc = tune.config.tune
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = tc.trials - len(study.get_trials(deepcopy=False, states=counted))
    if remaining > 0:
        study.optimize(lambda trial: _run_trial(trial, tune), n_trials=remaining, timeout=tc.timeout,
                       gc_after_trial=False, callbacks=[optuna.study.MaxTrialsCallback(tc.trials, states=counted)])


def _run_trial(trial: optuna.Trial, tune: _Tune) -> float:
    """One trial (the objective): train a suggested setting as an MLflow child run; its best val_acc.

    Raises ``optuna.TrialPruned`` when the median rule stops it (the child run is FINISHED and
    tagged ``pruned``); any other error marks the child run FAILED and is raised."""
    import optuna

    params = suggest(trial, tune.num_parts)
    cfg = load_config(None, {**params, "train.epochs": tune.fixed["epochs"], "train.patience": tune.fixed["patience"],
                             "tune.use_tuned": False}, base=tune.config.model_dump(mode="json"))
    features = tune.normalize(tune.snapshot, cfg)
    node_data = tune.layout(tune.partition, tune.snapshot, features, cfg)
    child = track_mod.start_run(cfg, {"mlflow.parentRunId": tune.parent.run_id, "graphpipe.kind": "tune-trial",
                                      "graphpipe.tune_trial": str(trial.number),
                                      "graphpipe.tune_default": str(bool(trial.user_attrs.get("default"))),
                                      "graphpipe.normalization": features.method},
                                run_name=f"trial-{trial.number}")
    tune.children.append(child.run_id)
    trial.set_user_attr("mlflow_run_id", child.run_id)
    try:
        trained = train_cluster_gcn(node_data, cfg.train, Store(cfg.store), num_classes=cfg.data.num_classes,
                                    lock_timeout=cfg.lock_timeout_seconds, on_epoch=_pruning_callback(trial, child))
    except optuna.TrialPruned as pruned:
        track_mod.log_tags(child, {"graphpipe.tune_state": "pruned", "graphpipe.tune_pruned": str(pruned)})
        track_mod.end_run(child, "FINISHED")
        log.info("%s", pruned)
        raise
    except BaseException as exc:
        track_mod.log_tags(child, {"graphpipe.tune_state": "failed"})
        track_mod.end_run(child, "FAILED", reason=f"{type(exc).__name__}: {exc}")
        raise
    scores = _test_accuracy(trained.checkpoint_dir, node_data, trained.num_classes, cfg.train.device)
    track_mod.log_epoch(child, 0, {**scores, "best_epoch": trained.best_epoch})
    track_mod.log_tags(child, {"graphpipe.tune_state": "complete", "graphpipe.best_epoch": trained.best_epoch,
                               "graphpipe.epochs_run": trained.epochs_run})
    track_mod.end_run(child, "FINISHED")
    trial.set_user_attr("test_acc", scores["test_acc"])
    trial.set_user_attr("train_acc", scores["train_acc"])
    log.info("trial %d: val_acc %.4f, test_acc %.4f (%s)", trial.number, scores["val_acc"], scores["test_acc"],
             {k.split(".", 1)[1]: v for k, v in params.items()})
    return float(trained.best_val_acc)


def _pruning_callback(trial: optuna.Trial, child: track_mod.RunRef) -> Callable[[int, dict[str, float]], None]:
    """The training's ``on_epoch``: log the epoch to the child run, report val_acc, prune if told."""
    import optuna

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        track_mod.log_epoch(child, epoch, metrics)
        val = metrics.get("val_acc")
        if val is None or math.isnan(val):
            return
        trial.report(val, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"trial {trial.number} pruned at epoch {epoch} (val_acc {val:.4f})")

    return on_epoch


def _best_trial(config: PipelineConfig, study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, optuna.trial.FrozenTrial | None, int]:
    """``(best, default, completed)``: the best completed trial, kept only when it beats the default
    trial by ``tune.min_improvement``; InputError when no trial completed."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise InputError(f"tune of {config.data.name}: no trial completed (all {len(study.trials)} pruned or failed); "
                         "raise tune.trials or tune.timeout")
    best = max(complete, key=lambda t: (t.value, -t.number))  # ties: the earlier trial (the default first)
    default = next((t for t in complete if t.user_attrs.get("default")), None)
    margin = config.tune.min_improvement
    if default is not None and best is not default and best.value < default.value + margin:
        # a few hundred validation nodes: a smaller gain is as likely noise as a better config
        log.info("tune: best trial %d (val_acc %.4f) beats the default (%.4f) by less than tune.min_improvement=%g: "
                 "keeping the default", best.number, best.value, default.value, margin)
        best = default
    return best, default, len(complete)


def _finish(tune: _Tune, study: optuna.Study, study_name: str, seconds: float) -> TuneResult:
    """Choose the best trial and save it (config and scores) through :mod:`storage.tuned`."""
    config = tune.config
    best, default, completed = _best_trial(config, study)
    states = [t.state.name.lower() for t in study.trials]
    counts = {s: states.count(s) for s in sorted(set(states))}
    params = dict(best.params)
    test_acc = float(best.user_attrs.get("test_acc", float("nan")))
    sections: dict[str, dict[str, Any]] = {}
    for key, value in {**params, "train.epochs": tune.fixed["epochs"], "train.patience": tune.fixed["patience"]}.items():
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = value
    header = (f"# graphpipe tune: best of {completed} completed trials of study {study_name} on graph "
              f"{config.data.name}\n# trial {best.number}: val_acc {best.value:.4f}, test_acc "
              f"{test_acc:.4f}. Use with --config, or --set tune.use_tuned=true.\n")
    result = TuneResult(
        best_params=params,
        best_val_acc=float(best.value),
        best_test_acc=test_acc,
        best_trial=best.number,
        default_val_acc=float(default.value) if default else None,
        default_test_acc=float(default.user_attrs["test_acc"]) if default and "test_acc" in default.user_attrs else None,
        trials=counts,
        seconds=seconds,
        best_yaml=str(tune.files.config),
        study_storage=tune.files.study_url,
        study_name=study_name,
    )
    write_tuned(Store(config.store), config.data.name, sections, header=header, scores={
        "graph": config.data.name, "study": study_name, "storage": tune.files.study_url, "trial": best.number,
        "params": params, "val_acc": result.best_val_acc, "test_acc": result.best_test_acc,
        "default_val_acc": result.default_val_acc, "default_test_acc": result.default_test_acc,
        "trials": counts, "mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
    })
    return result


def _log_parent(parent: track_mod.RunRef, result: TuneResult, files: TunedFiles) -> None:
    """The parent run's metrics (best and default accuracies, trial counts), tags and the saved files."""
    metrics = {"best_val_acc": result.best_val_acc, "best_test_acc": result.best_test_acc,
               "tune_seconds": result.seconds, **{f"trials_{k}": float(v) for k, v in result.trials.items()}}
    if result.default_val_acc is not None:
        metrics["default_val_acc"] = result.default_val_acc
    if result.default_test_acc is not None:
        metrics["default_test_acc"] = result.default_test_acc
    track_mod.log_epoch(parent, 0, metrics)
    track_mod.log_tags(parent, {"graphpipe.tune_best_trial": result.best_trial,
                                "graphpipe.tuned_config": result.best_yaml,
                                **{f"graphpipe.tune_best.{k}": v for k, v in result.best_params.items()}})
    client = track_mod._client(parent.tracking_uri)
    client.log_artifact(parent.run_id, str(files.config), "tuned")
    client.log_artifact(parent.run_id, str(files.scores), "tuned")


def read_best(config: PipelineConfig) -> dict[str, Any] | None:
    """The scores saved with the graph's best config (trial, params, val/test accuracy, default's), or
    ``None`` when it was never tuned."""
    return read_tuned_scores(Store(config.store), config.data.name)
