"""Prefect tasks: thin wrappers that add retries and logging around the stages in :mod:`tasks`.

Each returns a small frozen reference (paths and fingerprints), never arrays: Prefect pickles
results. Caching across runs is done by the store itself (content fingerprints + complete
manifests), so a stage whose output already exists returns at once and says so in its log.
A user's mistake (:class:`tasks.errors.InputError`) is never retried.
"""

from __future__ import annotations

import functools
import re
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeVar

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment
from prefect.runtime import flow_run
from prefect.states import Completed, State

from storage.store import EvaluationRef, FeaturesRef, NodeDataRef, PartitionRef, SnapshotRef, Store, output_at
from tasks.config import DataConfig, NormalizeConfig, PartitionConfig, PipelineConfig, ScoreConfig, SplitConfig
from tasks.errors import InputError
from tasks.ingest import snapshot as ingest_mod
from tasks.normalize import features as normalize_mod
from tasks.partition import layout as layout_mod
from tasks.partition import partition as partition_mod

if TYPE_CHECKING:  # torch, PyG, MLflow: imported by the tasks that need them (`graphpipe ingest` never does)
    from tasks.track import tracking as track_mod
    from tasks.train.result import TrainResult

LIBRARY_LOGGERS = ("tasks", "storage")
PROGRESS_LOGGER = "graphpipe.progress"  # tasks.progress.LOGGER_NAME


def forward_library_logs() -> None:
    """Send the library loggers' INFO records, and the progress logger's records when it is on
    (:func:`show_progress`), to Prefect's run logs (what ``PREFECT_LOGGING_EXTRA_LOGGERS`` does,
    but also when Prefect set up logging before us)."""
    extra = logging.getLogger("prefect.extra")
    for name in (*LIBRARY_LOGGERS, PROGRESS_LOGGER.split(".")[0]):
        logger = logging.getLogger(name)
        if name in LIBRARY_LOGGERS:
            logger.setLevel(logging.INFO)
        for handler in extra.handlers:
            if handler not in logger.handlers:
                logger.addHandler(handler)


def show_progress(enabled: bool) -> None:
    """The one switch for progress messages: the stages log them at INFO on ``graphpipe.progress``
    (rows ingested, METIS' elapsed time, batches within an epoch, inference blocks); this shows
    them (``enabled``) or hides them. The flows call it with the resolved config's ``progress``,
    which the command line's ``--progress`` sets last (flag > config > off). Whether shown or not,
    the records also feed Prefect progress artifacts and, in a terminal, a progress bar
    (:mod:`flows.progress`)."""
    from flows import progress as progress_display

    progress_display.install(show_lines=enabled)


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures (I/O, a tracking server restarting), never bad input."""
    try:
        state.result()
    except InputError:
        return False
    except Exception:
        return True
    return False


_retrying = {"retries": 2, "retry_delay_seconds": [5, 30], "retry_condition_fn": retry_unless_user_error}

T = TypeVar("T")


def reusable_stage(**task_options: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A Prefect task for a stage whose output may already be in the store.

    When the stage returns a reference marked ``reused``, the task run ends in a ``Cached``
    state (visible in the UI and the API) with a "cache hit" message; callers get the reference
    either way.
    """

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            ref = fn(*args, **kwargs)
            if getattr(ref, "reused", False):
                return Completed(data=ref, name="Cached", message=f"cache hit: {ref.path}")
            return ref

        prefect_task = task(**task_options)(body)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> T:
            out = prefect_task(*args, **kwargs)
            return out.result() if isinstance(out, State) else out

        call.task = prefect_task  # type: ignore[attr-defined]
        return call

    return decorate


@reusable_stage(name="ingest", **_retrying)
def ingest(data: DataConfig, split: SplitConfig, store: Store) -> SnapshotRef:
    """Edge lists + node table -> versioned Parquet snapshot."""
    return ingest_mod.ingest_graph(data, split, store)


@task(name="current-snapshot")
def current_snapshot(graph: str, store: Store) -> SnapshotRef:
    """The snapshot last ingested for graph ``graph`` in the store."""
    ref = store.current_snapshot(graph)
    if ref is None:
        raise InputError(f"no snapshot of graph {graph!r} in store {store.uri}: run `graphpipe ingest` first")
    return ref


@reusable_stage(name="normalize", **_retrying)
def normalize(snapshot: SnapshotRef, config: NormalizeConfig, store: Store) -> FeaturesRef:
    """Normalize features; statistics saved beside them."""
    return normalize_mod.normalize_features(snapshot, config, store)


@reusable_stage(name="partition", **_retrying)
def partition(snapshot: SnapshotRef, config: PartitionConfig, store: Store) -> PartitionRef:
    """METIS k-way partition (or a refresh of the previous one), nodes permuted so clusters are
    contiguous; a markdown artifact says which happened and why."""
    ref = partition_mod.partition_graph(snapshot, config, store)
    lineage = partition_mod.partition_lineage(ref)
    create_markdown_artifact(
        key=("graphpipe-partition-" + re.sub(r"[^a-z0-9-]+", "-", snapshot.name.lower()))[:100],
        markdown=partition_markdown(lineage, ref),
        description=f"partition of {snapshot.name}: {lineage['mode']}",
    )
    return ref


def partition_markdown(lineage: dict[str, Any], ref: PartitionRef) -> str:
    """One line saying whether the partition was refreshed or made by a full METIS run, why, and
    its edge cut against the METIS run it descends from."""
    cut, imbalance = lineage.get("edge_cut_fraction"), lineage.get("imbalance")
    figures = f"edge cut {100 * cut:.2f}%" if cut is not None else "edge cut unknown"
    figures += f", size imbalance {imbalance:.3f}" if imbalance is not None else ""
    cached = " (cached)" if ref.reused else ""
    why = f": {lineage['reason']}" if lineage.get("reason") else ""
    return f"**Partition** {ref.fingerprint}{cached}: **{lineage['mode']}**{why}; {ref.num_parts} parts, {figures}."


@reusable_stage(name="layout-node-data", **_retrying)
def layout(partition: PartitionRef, snapshot: SnapshotRef, features: FeaturesRef, store: Store) -> NodeDataRef:
    """Features, labels and split permuted into the partition's order."""
    return layout_mod.layout_node_data(partition, snapshot, features, store)


@task(name="start-tracking", **_retrying)
def start_tracking(config: PipelineConfig, lineage: dict[str, str]) -> track_mod.RunRef:
    """Open the MLflow run: config as params, lineage and the Prefect flow run as tags."""
    from tasks.track import tracking as track_mod

    tags = {**lineage, "prefect.flow_run_id": str(flow_run.get_id() or ""), "prefect.flow_run_name": str(flow_run.get_name() or "")}
    return track_mod.start_run(config, tags, run_name=flow_run.get_name())


@task(name="champion-weights", **_retrying)
def champion_weights(config: PipelineConfig) -> str | None:
    """The registered champion's weights for a warm start (``train.warm_start``), if any."""
    from tasks.track import tracking as track_mod

    found = track_mod.champion_weights(config)
    if found is None:
        get_run_logger().info("warm start requested but there is no champion yet: starting from random weights")
        return None
    return found[0]


METRICS_FLUSH_SECONDS = 300  # how long training waits, once done, for buffered metrics to reach MLflow


def check_tracking(config: PipelineConfig) -> None:
    """A clear one-line error, before any heavy work, when the MLflow tracking server is down
    (a few tries over about 10 s first: a server being restarted is waited for)."""
    from tasks.track import tracking as track_mod

    track_mod.check_reachable(track_mod.tracking_uri(config))


@task(name="train", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_unless_user_error)
def train(node_data: NodeDataRef, config: PipelineConfig, run: track_mod.RunRef, init_from: str | None = None,
          store: Store | None = None) -> TrainResult:
    """Cluster-GCN training, per-epoch metrics to MLflow; a retry resumes from the checkpoint.
    The result is also handed off through the store (:meth:`storage.checkpoints.Checkpoints.save_result`)
    for a parent flow run that started this one on a deployment. ``store``: the flow's one
    :class:`Store` (default ``Store(config.store)``)."""
    from storage.checkpoints import Checkpoints
    from tasks.track import tracking as track_mod
    from tasks.train.loop import train_cluster_gcn

    logger = get_run_logger()
    sender = track_mod.MetricSender(run)  # training goes on while the tracking server is away

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        sender.add(epoch, metrics)
        if "val_acc" in metrics and (epoch % 10 == 0 or epoch == config.train.epochs):
            logger.info("epoch %d: loss %.4f, train_acc %.4f, val_acc %.4f", epoch, metrics["loss"], metrics["train_acc"], metrics["val_acc"])

    store = store if store is not None else Store(config.store)
    try:
        result = train_cluster_gcn(node_data, config.train, store, num_classes=config.data.num_classes,
                                   lock_timeout=config.lock_timeout_seconds, on_epoch=on_epoch, init_from=init_from)
    finally:
        left = sender.close(timeout=METRICS_FLUSH_SECONDS)
    if left:
        raise RuntimeError(
            f"MLflow server {track_mod.redact(run.tracking_uri)} did not answer for {METRICS_FLUSH_SECONDS} s after training: "
            f"{left} per-epoch metrics not sent ({sender.last_error}; the trained weights are in the checkpoint directory)")
    track_mod.log_tags(run, {"graphpipe.warm_start_from": init_from if result.warm_started else "none",
                             "graphpipe.device": result.device, "graphpipe.resumed_from_epoch": result.resumed_from_epoch,
                             "graphpipe.clusters_per_batch": result.clusters_per_batch, "graphpipe.checkpoint": result.checkpoint_dir,
                             "graphpipe.train_flow_run_id": str(flow_run.get_id() or ""),
                             "graphpipe.world_size": result.world_size,
                             "graphpipe.rank_batches": ",".join(str(n) for n in result.rank_batches)})
    Checkpoints(store, result.graph, result.key).save_result(run.run_id, asdict(result))
    return result


def train_on_deployment(
    deployment: str, node_data: NodeDataRef, config: PipelineConfig, run: track_mod.RunRef, init_from: str | None = None,
    store: Store | None = None,
) -> TrainResult:
    """Run training as a flow run of ``deployment`` (e.g. on a GPU work pool) and wait for it.

    The two sides share only the store and the Prefect API: the training run reads the
    partitioned graph from the store and hands its result back through the store, found by the
    MLflow run's id (:func:`storage.checkpoints.find_result`).
    """
    from storage.checkpoints import find_result
    from tasks.train.result import TrainResult

    logger = get_run_logger()
    logger.info("training on deployment %s", deployment)
    child = run_deployment(
        name=deployment,
        parameters={"node_data": asdict(node_data), "config": config.model_dump(mode="json"), "run": asdict(run),
                    "init_from": init_from},
        timeout=0,  # created and scheduled; waited for below
    )
    logger.info("training flow run %s (%s) scheduled on %s", child.name, child.id, deployment)
    state = wait_for_flow_run(child.id)
    if state is None or not state.is_completed():
        name = state.name if state else "unknown"
        raise RuntimeError(f"training flow run {child.name} on {deployment} ended {name}: {state.message if state else ''}")
    store = store if store is not None else Store(config.store)
    found = find_result(store, config.data.name, run.run_id)
    if found is None:
        raise RuntimeError(f"training flow run {child.name} on {deployment} completed but left no result for MLflow run "
                           f"{run.run_id} in the store {store.uri}")
    return TrainResult(**found)


CHILD_POLL_SECONDS = 5
API_OUTAGE_SECONDS = 600


def wait_for_flow_run(flow_run_id: Any, poll: float = CHILD_POLL_SECONDS, outage: float = API_OUTAGE_SECONDS) -> State | None:
    """The final state of a flow run, polled every ``poll`` seconds.

    A child whose worker died ends ``Crashed`` when its heartbeats stop (the server's automation
    in ``deployments/automations.yaml``), and this returns that state within one poll. While the
    Prefect API does not answer (a restart), polling goes on; after ``outage`` seconds without an
    answer it raises.
    """
    import time

    from prefect.client.orchestration import get_client

    logger = get_run_logger()
    failing_since: float | None = None
    with get_client(sync_client=True) as client:
        while True:
            try:
                run = client.read_flow_run(flow_run_id)
            except Exception as e:  # the API restarting; Prefect's client has already retried
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > outage:
                    raise RuntimeError(
                        f"Prefect API did not answer for {outage:.0f} s while waiting for training flow run {flow_run_id}: {e}"
                    ) from e
                logger.warning("Prefect API not answering while waiting for flow run %s (%s); still waiting", flow_run_id, e)
                time.sleep(poll)
                continue
            failing_since = None
            if run.state is not None and run.state.is_final():
                return run.state
            time.sleep(poll)


@reusable_stage(name="evaluate", **_retrying)
def evaluate(trained: TrainResult, node_data: NodeDataRef, snapshot: SnapshotRef, store: Store, *,
             device: str, seed: int, embedding_nodes: int, workers: int = 1,
             scores: ScoreConfig | None = None) -> EvaluationRef:
    """Full-graph layer-wise inference with the best-validation weights; accuracy and macro-F1;
    with ``scores`` (the ``score`` section), also this model's ``scores`` output from the same pass."""
    from tasks.evaluate.evaluate import evaluate_model

    return evaluate_model(trained, node_data, snapshot, store, device=device, seed=seed,
                          embedding_nodes=embedding_nodes, workers=workers, scores=scores)


@task(name="log-to-mlflow", **_retrying)
def log_run(
    run: track_mod.RunRef,
    config: PipelineConfig,
    snapshot: SnapshotRef,
    features: FeaturesRef,
    node_data: NodeDataRef,
    trained: TrainResult,
    evaluation: EvaluationRef,
    notes: str = "",
) -> track_mod.TrackResult:
    """Final metrics, plots, statistics, the model, its registered version and the champion alias;
    ``notes``: more markdown for the run's artifact (the baseline and the health check)."""
    from tasks.track import tracking as track_mod

    history = read_history(trained, Store(config.store))
    tracked = track_mod.log_results(
        run,
        config,
        snapshot=snapshot,
        stats=normalize_mod.load_stats(features),
        node_data=node_data,
        trained_dir=trained.checkpoint_dir,
        history=history,
        evaluation=evaluation,
        extra_tags={"graphpipe.best_epoch": trained.best_epoch, "graphpipe.epochs_run": trained.epochs_run},
    )
    create_markdown_artifact(
        key=("graphpipe-" + re.sub(r"[^a-z0-9-]+", "-", config.data.name.lower()))[:100],
        markdown=track_mod.summary_markdown(tracked, evaluation.metrics, trained) + (f"\n{notes}" if notes else ""),
        description=f"graphpipe run on {config.data.name}",
    )
    return tracked


def read_history(trained: TrainResult, store: Store | None = None) -> list[dict[str, Any]]:
    """The per-epoch metrics of a finished training, from its checkpoint set (in ``store``, by
    default the store its ``checkpoint_dir`` is in)."""
    from storage.checkpoints import Checkpoints

    ckpt = Checkpoints.at(trained.checkpoint_dir) if store is None else Checkpoints(store, trained.graph, trained.key)
    return ckpt.history()


def lineage_tags(snapshot: SnapshotRef, features: FeaturesRef, partition: PartitionRef, node_data: NodeDataRef) -> dict[str, str]:
    """The MLflow run's lineage tags: every stage output's fingerprint, and the code version."""
    manifest = output_at(snapshot.path).manifest()
    return {
        "graphpipe.data_fingerprint": snapshot.fingerprint,
        "graphpipe.snapshot_path": snapshot.path,
        "graphpipe.features_fingerprint": features.fingerprint,
        "graphpipe.normalization": features.method,
        "graphpipe.partition_fingerprint": partition.fingerprint,
        "graphpipe.num_parts": str(partition.num_parts),
        **partition_tags(partition),
        "graphpipe.node_data_fingerprint": node_data.fingerprint,
        "graphpipe.code_version": str(manifest.get("code_version", "")),
    }


def partition_tags(partition: PartitionRef) -> dict[str, str]:
    """MLflow tags of how the partition was made: mode (``refreshed``|``full``), the reason, its
    edge-cut fraction and the last full METIS run's, the refreshes since that run."""
    lineage = partition_mod.partition_lineage(partition)
    return {
        "graphpipe.partition_mode": str(lineage["mode"]),
        "graphpipe.partition_reason": str(lineage.get("reason", ""))[:5000],
        "graphpipe.partition_edge_cut_fraction": f"{float(lineage.get('edge_cut_fraction') or 0.0):.6f}",
        "graphpipe.partition_base_edge_cut_fraction": f"{float(lineage.get('base_edge_cut_fraction') or 0.0):.6f}",
        "graphpipe.partition_refreshes": str(lineage.get("refreshes", 0)),
    }
