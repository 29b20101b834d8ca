"""MLflow tracking: one run per pipeline run, addressed by its id from any process.

Every call takes the run id explicitly (``MlflowClient``), so the training stage can log its
per-epoch metrics from a GPU worker while the pipeline's other stages run elsewhere.

Tracking URI: ``track.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store
``<store>/mlflow.db`` whose experiments keep their artifacts under ``<store>/mlartifacts``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from storage.arrays import ClusterGraph
from storage.snapshot import read_feature_rows
from storage.evaluation import read_confusion, read_embedding
from storage.checkpoints import Checkpoints
from storage.store import EvaluationRef, NodeDataRef, SnapshotRef, Store, output_at
from tasks.train.batching import batch_subgraph
from tasks.config import PipelineConfig, redact_uri
from tasks.errors import InputError
from tasks.track.services import check_mlflow, redact, short_reason
from tasks.track.services import is_server as _is_server
from tasks.train.model import MODEL_FILE, EdgeIndexPredictor, load_trained
from tasks.normalize.features import NormalizationStats
from tasks.track.plots import confusion, embeddings, learning_curves

log = logging.getLogger(__name__)

CHAMPION = "champion"
WEIGHTS_DIR = "checkpoint"  # the run's best weights in graphpipe's own format, for warm starts


@dataclass(frozen=True)
class RunRef:
    tracking_uri: str
    experiment_id: str
    run_id: str

    def ui_path(self) -> str:
        return f"#/experiments/{self.experiment_id}/runs/{self.run_id}"


@dataclass(frozen=True)
class TrackResult:
    run: RunRef
    model_name: str | None
    model_version: str | None
    champion: bool
    champion_val_acc: float | None


def ui_command(run: RunRef) -> str:
    """How to look at the run: the UI command for a local store, or the server's page."""
    uri = redact_uri(run.tracking_uri)
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/{run.ui_path()}"
    return (
        f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, "
        f"then open http://127.0.0.1:5000/{run.ui_path()}"
    )


def run_link(run: RunRef) -> str:
    """A Markdown link to the run in the MLflow UI (a server), or how to open it (a local store)."""
    if run.tracking_uri.startswith(("http://", "https://")):
        url = f"{redact_uri(run.tracking_uri).rstrip('/')}/{run.ui_path()}"
        return f"[MLflow run {run.run_id}]({url})"
    return f"MLflow run `{run.run_id}`: `{ui_command(run)}`"


def summary_markdown(tracked: TrackResult, metrics: dict[str, float], trained: Any) -> str:
    """The Prefect artifact of a run: metrics, the champion decision with both scores, the link."""
    rows = "\n".join(
        f"| {split} | {metrics.get(f'{split}_acc', float('nan')):.4f} | {metrics.get(f'{split}_macro_f1', float('nan')):.4f} |"
        for split in ("train", "val", "test")
    )
    previous = "none" if tracked.champion_val_acc is None else f"{tracked.champion_val_acc:.4f}"
    if tracked.model_version is None:
        decision = "model not registered (track.log_model=false)"
    elif tracked.champion:
        decision = f"version {tracked.model_version} is now `{CHAMPION}` (val_acc {metrics['val_acc']:.4f} >= previous {previous})"
    else:
        decision = f"version {tracked.model_version} registered; `{CHAMPION}` unchanged (val_acc {metrics['val_acc']:.4f} < champion's {previous})"
    return (
        f"## graphpipe: {tracked.model_name or 'run'}\n\n"
        f"{run_link(tracked.run)}\n\n"
        f"| split | accuracy | macro-F1 |\n|---|---|---|\n{rows}\n\n"
        f"**Champion decision:** {decision}\n\n"
        f"Best epoch {trained.best_epoch} of {trained.epochs_run} on {trained.device}"
        f" ({trained.clusters_per_batch} clusters per batch; resumed from epoch {trained.resumed_from_epoch}).\n"
    )


def tracking_uri(config: PipelineConfig) -> str:
    if config.track.tracking_uri:
        return config.track.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Store(config.store).root / 'mlflow.db'}"


def model_name(config: PipelineConfig) -> str:
    return config.track.registered_model or f"graphpipe-{config.data.name}"


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: MlflowClient, config: PipelineConfig, uri: str) -> str:
    exp = client.get_experiment_by_name(config.track.experiment)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:///") and not config.track.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        artifact_location = (Store(config.store).root / "mlartifacts").as_uri()
    try:
        return client.create_experiment(config.track.experiment, artifact_location=artifact_location)
    except MlflowException:  # created concurrently
        return client.get_experiment_by_name(config.track.experiment).experiment_id


def start_run(config: PipelineConfig, tags: dict[str, str], run_name: str | None = None) -> RunRef:
    """Create the run (status RUNNING) and log the whole config as params."""
    uri = tracking_uri(config)
    Store(config.store).root.mkdir(parents=True, exist_ok=True)
    client = _client(uri)
    exp_id = _experiment_id(client, config, uri)
    tags = {k: redact_uri(str(v)) for k, v in {"graphpipe.graph": config.data.name, **tags}.items()}
    run = client.create_run(exp_id, tags=tags, run_name=run_name)
    params = config_params(config)
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return RunRef(uri, exp_id, run.info.run_id)


def config_params(config: PipelineConfig) -> list[Param]:
    """The whole config as MLflow params, credentials in URIs (``https://user:pass@host``) redacted."""
    return [
        Param(k, redact_uri(json.dumps(v) if isinstance(v, (list, dict)) else str(v))) for k, v in config.flat().items()
    ]


def safe_config_dump(config: PipelineConfig) -> dict[str, Any]:
    """The config as plain data for artifacts and logs, credentials in URIs redacted."""
    return json.loads(redact_uri(json.dumps(config.model_dump(mode="json"))))


def log_tags(run: RunRef, tags: dict[str, Any]) -> None:
    """Set tags on the run (values as strings, credentials in URIs redacted)."""
    _client(run.tracking_uri).log_batch(run.run_id, tags=[RunTag(k, redact_uri(str(v))) for k, v in tags.items()])


def log_epoch(run: RunRef, epoch: int, metrics: dict[str, float]) -> None:
    """Per-epoch metrics with ``step=epoch``."""
    ts = int(time.time() * 1000)
    _client(run.tracking_uri).log_batch(
        run.run_id, metrics=[Metric(k, float(v), ts, epoch) for k, v in metrics.items() if np.isfinite(v)]
    )


def check_reachable(uri: str, attempts: int = 4, delay: float = 3.0, timeout: float = 5.0) -> None:
    """A clear one-line error (:class:`tasks.errors.ServiceUnavailable`) when the tracking server
    ``uri`` does not answer; see :func:`tasks.track.services.check_mlflow`."""
    check_mlflow(uri, attempts, delay, timeout)


class MetricSender:
    """Per-epoch metrics sent to the run from a background thread, so that training never waits
    for the tracking server.

    While the server does not answer, metrics stay in a buffer and are sent, in order, when it
    answers again (tries after 2, 5, 10, then every 30 s). Each metric keeps the timestamp it was
    taken with, so a batch sent twice (the first answer lost) is the same rows again, which
    MLflow's store ignores: a step never gets two different values. Requests are bounded (no
    retries inside the MLflow client, ``request_timeout`` seconds each): the MLflow client's own
    defaults (7 retries with exponential backoff, 120 s timeout) would hold a batch for minutes.
    """

    BACKOFF = (2.0, 5.0, 10.0, 30.0)
    MAX_BATCH = 1000  # MLflow's limit of metrics per log-batch request

    def __init__(self, run: RunRef, request_timeout: float = 10.0) -> None:
        self.run = run
        self.request_timeout = request_timeout
        self._pending: list[Metric] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._failing_since: float | None = None
        self.sent = 0
        self.outages = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._loop, name="graphpipe-metrics", daemon=True)
        self._thread.start()

    def add(self, epoch: int, metrics: dict[str, float]) -> None:
        """Queue one epoch's metrics (``step=epoch``); returns at once."""
        ts = int(time.time() * 1000)
        with self._lock:
            self._pending.extend(Metric(k, float(v), ts, epoch) for k, v in metrics.items() if np.isfinite(v))
        self._wake.set()

    @property
    def pending(self) -> int:
        """Metrics waiting to be sent."""
        with self._lock:
            return len(self._pending)

    def _send(self, batch: list[Metric]) -> None:
        if not _is_server(self.run.tracking_uri):
            _client(self.run.tracking_uri).log_batch(self.run.run_id, metrics=batch)
            return
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/runs/log-batch"
        body = {"run_id": self.run.run_id,
                "metrics": [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in batch]}
        resp = http_request(get_default_host_creds(self.run.tracking_uri), endpoint, "POST", max_retries=0,
                            timeout=self.request_timeout, json=body)
        verify_rest_response(resp, endpoint)

    def _loop(self) -> None:
        failures, next_try = 0, 0.0
        while True:
            self._wake.wait(timeout=max(0.0, next_try - time.monotonic()) if failures else None)
            self._wake.clear()
            if failures and not self._stop and time.monotonic() < next_try:
                continue  # new metrics while the server is away: keep them, keep the backoff
            with self._lock:
                batch = self._pending[: self.MAX_BATCH]
            if not batch:
                if self._stop:
                    return
                continue
            try:
                self._send(batch)
            except Exception as e:
                failures += 1
                next_try = time.monotonic() + self.BACKOFF[min(failures, len(self.BACKOFF)) - 1]
                self.last_error = short_reason(e)
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    self.outages += 1
                    log.warning("MLflow server %s not answering (%s): per-epoch metrics are kept and sent when it answers",
                                redact(self.run.tracking_uri), short_reason(e))
                continue
            with self._lock:
                del self._pending[: len(batch)]
            self.sent += len(batch)
            if self._failing_since is not None:
                log.info("MLflow server %s answers again after %.0f s: buffered metrics sent",
                            redact(self.run.tracking_uri), time.monotonic() - self._failing_since)
                self._failing_since = None
            failures = 0
            self._wake.set()  # more to send, or a stop to notice

    def close(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the buffer to be sent; the number of metrics left."""
        self._stop = True
        self._wake.set()
        deadline = time.monotonic() + timeout
        self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        return self.pending


def end_run(run: RunRef, status: str = "FINISHED", reason: str | None = None) -> None:
    client = _client(run.tracking_uri)
    if reason:
        client.set_tag(run.run_id, "graphpipe.failure", redact_uri(reason)[:5000])
    client.set_terminated(run.run_id, status=status)


def _example_inputs(node_data: NodeDataRef, snapshot: SnapshotRef) -> tuple[torch.Tensor, torch.Tensor]:
    """A real subgraph (whole clusters, at least 2 edges) as raw features + edge_index, for the
    model's input example and signature."""
    graph = ClusterGraph.open(output_at(node_data.partition.path), output_at(node_data.path))
    clusters = np.arange(1)
    nodes, crow, col = batch_subgraph(graph, clusters)
    while len(col) < 2 and len(clusters) < graph.num_parts:
        clusters = np.arange(len(clusters) + 1)
        nodes, crow, col = batch_subgraph(graph, clusters)
    nodes, crow, col = nodes[:2000], crow, col
    rows = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
    keep = (rows < len(nodes)) & (col < len(nodes))
    snapshot_ids = np.asarray(graph.perm)[nodes]
    raw = read_feature_rows(output_at(snapshot.path), snapshot_ids)
    # no raw features: the model's input is the stored encoding (structural or constant)
    x = raw if raw is not None else np.asarray(graph.x[nodes])
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    edge_index = np.stack([col[keep], rows[keep]]).astype(np.int64)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(edge_index)


def _log_model(
    trained_dir: str, stats: NormalizationStats, node_data: NodeDataRef,
    snapshot: SnapshotRef, registered: str | None,
) -> tuple[str | None, str | None]:
    gnn, _ = load_trained(trained_dir)
    mean = torch.tensor(stats.mean, dtype=torch.float32) if stats.mean else None
    std = torch.tensor(stats.std, dtype=torch.float32) if stats.std else None
    predictor = EdgeIndexPredictor(gnn, stats.method, mean, std).eval()
    x, edge_index = _example_inputs(node_data, snapshot)
    return log_predictor(predictor, x, edge_index, registered)


def log_predictor(predictor: EdgeIndexPredictor, x: torch.Tensor, edge_index: torch.Tensor,
                  registered: str | None) -> tuple[str | None, str | None]:
    """Log ``predictor`` to the active MLflow run as the model ``model`` (``torch.export``, pt2),
    with ``(x, edge_index)`` as its input example and signature, and register it as
    ``registered`` (``None``: not registered). Returns ``(model uri, registered version)``.

    Load it back with ``mlflow.pytorch.load_model(uri)`` and call it as ``model(x, edge_index)``
    (a pt2 model has no pyfunc flavor).
    """
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, x.shape[1]), "x"),
                       TensorSpec(np.dtype(np.int64), (2, -1), "edge_index")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, predictor.gnn.spec.out_dim), "logits")]),
    )
    import torch_geometric

    info = mlflow.pytorch.log_model(
        predictor,
        name="model",
        signature=signature,
        input_example=(x.numpy(), edge_index.numpy()),
        serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"torch_geometric=={torch_geometric.__version__}"],
        registered_model_name=registered,
        await_registration_for=60,
    )
    version = str(info.registered_model_version) if registered and info.registered_model_version else None
    return info.model_uri, version


def download_weights(config: PipelineConfig, run_id: str, client: MlflowClient | None = None) -> str:
    """The local path of run ``run_id``'s logged weights, downloaded into the store once (beside
    the other warm-start copies of the graph).

    Raises:
        InputError: ``run_id`` is not a plain run id (it becomes a path part).
        MlflowException, OSError: the run has no weights, or the tracking server failed.
    """
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(run_id or "")):  # a path part: nothing else
        raise InputError(f"the registry of {model_name(config)!r} names run {run_id!r}; expected a run id")
    client = client or _client(tracking_uri(config))
    target = Store(config.store).graph_dir(config.data.name) / "warm_start" / run_id
    path = target / WEIGHTS_DIR / MODEL_FILE
    if not path.exists():
        target.mkdir(parents=True, exist_ok=True)
        local = Path(client.download_artifacts(run_id, f"{WEIGHTS_DIR}/{MODEL_FILE}", str(target)))
        if local != path:  # a local artifact store puts the file at target/model.pt, a server at target/checkpoint/
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(local, path)
    return str(path)


def champion_weights(config: PipelineConfig) -> tuple[str, str] | None:
    """``(path, run id)`` of the current champion's weights, downloaded into the store once;
    ``None`` when there is no champion yet (or its run has no weights: logged)."""
    client = _client(tracking_uri(config))
    try:
        version = client.get_model_version_by_alias(model_name(config), CHAMPION)
    except MlflowException:
        return None
    try:
        return download_weights(config, version.run_id, client), version.run_id
    except (MlflowException, OSError) as e:
        log.warning("champion run %s has no weights to warm-start from: %s", version.run_id, e)
        return None


def champion_val_acc(client: MlflowClient, version: Any) -> float | None:
    """The final evaluation's validation accuracy of a registered ``version``: its
    ``graphpipe.val_acc`` tag, else its run's ``val_acc`` at step 0 (the final evaluation; the
    per-epoch values share the name at ``step=epoch``, and the run's "latest" value is the last
    epoch's, not the kept weights'), else that latest value."""
    tag = (version.tags or {}).get("graphpipe.val_acc")
    if tag is not None:
        try:
            return float(tag)
        except ValueError:
            pass
    if not version.run_id:
        return None
    final = [m.value for m in client.get_metric_history(version.run_id, "val_acc") if m.step == 0]
    if final:
        return float(final[-1])
    return client.get_run(version.run_id).data.metrics.get("val_acc")


def _promote(client: MlflowClient, name: str, version: str, val_acc: float) -> tuple[bool, float | None]:
    """Move the ``champion`` alias to ``version`` if its validation accuracy is at least the
    current champion's."""
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    current_val = champion_val_acc(client, current) if current is not None else None
    promote = current is None or current_val is None or val_acc >= current_val
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    return promote, current_val


def log_results(
    run: RunRef,
    config: PipelineConfig,
    *,
    snapshot: SnapshotRef,
    stats: NormalizationStats,
    node_data: NodeDataRef,
    trained_dir: str,
    history: list[dict[str, float]],
    evaluation: EvaluationRef,
    extra_tags: dict[str, Any] | None = None,
) -> TrackResult:
    """Final metrics, plots, statistics, lineage, the model and its registered version."""
    with _fluent_uris(run.tracking_uri):
        return _log_results(run, config, snapshot=snapshot, stats=stats, node_data=node_data,
                            trained_dir=trained_dir, history=history, evaluation=evaluation, extra_tags=extra_tags)


@contextmanager
def _fluent_uris(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.start_run``, ``log_model``) at ``uri`` for a block, then
    restore what was there: ``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI``, which
    would otherwise send every later run of this process (another store, a tune) to this one."""
    before = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before["MLFLOW_TRACKING_URI"])  # None unsets it
        mlflow.set_registry_uri(before["MLFLOW_REGISTRY_URI"])
        if before["MLFLOW_REGISTRY_URI"] is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)


def _log_results(run: RunRef, config: PipelineConfig, *, snapshot: SnapshotRef, stats: Any, node_data: NodeDataRef,
                 trained_dir: str, history: list[dict[str, float]], evaluation: EvaluationRef,
                 extra_tags: dict[str, Any] | None) -> TrackResult:
    client = _client(run.tracking_uri)
    ts = int(time.time() * 1000)
    client.log_batch(run.run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in evaluation.metrics.items() if np.isfinite(v)])
    log_tags(run, {"graphpipe.input_encoding": stats.encoding(), **(extra_tags or {})})
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "plots").mkdir()
        (t / "stats").mkdir()
        ev = output_at(evaluation.path)
        learning_curves(history, t / "plots" / "learning_curves.png")
        confusion(read_confusion(ev), t / "plots" / "confusion_matrix.png")
        embeddings(*read_embedding(ev), t / "plots" / "embeddings.png")
        part = output_at(node_data.partition.path)
        (t / "stats" / "partition_stats.json").write_text(json.dumps(part.json("stats"), separators=(",", ":")))
        (t / "stats" / "normalization.json").write_text(json.dumps(stats.to_json(), indent=2))
        (t / "stats" / "snapshot_manifest.json").write_text(json.dumps(output_at(snapshot.path).manifest(), indent=2))
        (t / "stats" / "partition_manifest.json").write_text(json.dumps(part.manifest(), indent=2))
        (t / "stats" / "history.json").write_text(json.dumps(history, indent=2))
        (t / "config.yaml").write_text(yaml.safe_dump(safe_config_dump(config), sort_keys=False))
        for sub in ("plots", "stats"):
            client.log_artifacts(run.run_id, str(t / sub), sub)
        (t / "weights").mkdir()  # the store's model file (a local path or an object in a bucket)
        (t / "weights" / MODEL_FILE).write_bytes(Checkpoints.at(trained_dir).model_bytes())
        client.log_artifact(run.run_id, str(t / "weights" / MODEL_FILE), WEIGHTS_DIR)
        client.log_artifact(run.run_id, str(t / "config.yaml"))

    name = model_name(config) if config.track.log_model else None
    version, promoted, champion_val = None, False, None
    with mlflow.start_run(run_id=run.run_id):
        _log_input(snapshot)
        if config.track.log_model:
            _, version = _log_model(trained_dir, stats, node_data, snapshot, name)
    if name and version:
        promoted, champion_val = _promote(client, name, version, evaluation.metrics["val_acc"])
        log_tags(run, {
            "graphpipe.model_version": version,
            "graphpipe.champion_decision": "promoted" if promoted else "kept previous champion",
            "graphpipe.champion_previous_val_acc": "none" if champion_val is None else f"{champion_val:.4f}",
            "graphpipe.champion_candidate_val_acc": f"{evaluation.metrics['val_acc']:.4f}",
        })
        describe_version(client, name, version, version_facts(
            config, snapshot=snapshot, node_data=node_data, metrics=evaluation.metrics, promoted=promoted,
            champion_val=champion_val, extra_tags=extra_tags))
    return TrackResult(run, name, version, promoted, champion_val)


VERSION_METRICS = ("val_acc", "test_acc", "val_macro_f1", "test_macro_f1")


def partition_mode(node_data: NodeDataRef, extra_tags: dict[str, Any] | None = None) -> str | None:
    """How the partition was made (e.g. a fresh METIS run or a refresh of an earlier one), if
    known: a ``graphpipe.partition_mode`` tag, else the partition output's ``mode`` parameter."""
    for key, value in (extra_tags or {}).items():
        if key.endswith("partition_mode") and value:
            return str(value)
    try:
        params = output_at(node_data.partition.path).manifest().get("params", {})
    except (OSError, ValueError):
        return None
    mode = params.get("mode") if isinstance(params, dict) else None
    return str(mode) if mode else None


def version_facts(config: PipelineConfig, *, snapshot: SnapshotRef, node_data: NodeDataRef, metrics: dict[str, float],
                  promoted: bool, champion_val: float | None, extra_tags: dict[str, Any] | None = None) -> dict[str, str]:
    """What a registered model version is, as its tags: metrics (4 decimals), graph, snapshot
    fingerprint, partition (fingerprint, clusters, mode when known) and the champion decision."""
    facts = {f"graphpipe.{k}": f"{float(metrics[k]):.4f}" for k in VERSION_METRICS
             if k in metrics and np.isfinite(metrics[k])}
    facts.update({
        "graphpipe.graph": config.data.name,
        "graphpipe.snapshot_fingerprint": snapshot.fingerprint,
        "graphpipe.partition_fingerprint": node_data.partition.fingerprint,
        "graphpipe.num_parts": str(node_data.partition.num_parts),
        "graphpipe.champion_decision": "promoted" if promoted else "kept previous champion",
        "graphpipe.champion_previous_val_acc": "none" if champion_val is None else f"{champion_val:.4f}",
    })
    mode = partition_mode(node_data, extra_tags)
    if mode:
        facts["graphpipe.partition_mode"] = mode
    return facts


def version_description(facts: dict[str, str]) -> str:
    """The registry page's one-paragraph description of a version from :func:`version_facts`."""
    g = lambda k: facts.get(f"graphpipe.{k}", "n/a")  # noqa: E731
    decision = facts["graphpipe.champion_decision"]
    previous = facts["graphpipe.champion_previous_val_acc"]
    lines = [
        f"Cluster-GCN on graph {g('graph')} (snapshot {g('snapshot_fingerprint')[:16]}).",
        f"val_acc {g('val_acc')}, test_acc {g('test_acc')}, test macro-F1 {g('test_macro_f1')}.",
        f"Partition {g('partition_fingerprint')[:16]}: {g('num_parts')} clusters"
        + (f", {facts['graphpipe.partition_mode']}" if "graphpipe.partition_mode" in facts else "") + ".",
        f"Champion: {decision} (previous champion's val_acc {previous}).",
    ]
    return "\n".join(lines)


def describe_version(client: MlflowClient, name: str, version: str, facts: dict[str, str]) -> None:
    """Set ``facts`` as the version's tags and their summary as its description, so the registry
    page alone tells what the version is. A registry that refuses is logged, never fatal (the
    version and its run are registered already)."""
    try:
        for key, value in facts.items():
            client.set_model_version_tag(name, version, key, value)
        client.update_model_version(name, version, description=version_description(facts))
    except MlflowException as e:
        log.warning("could not describe model version %s of %s in the registry: %s", version, name, e)


def _log_input(snapshot: SnapshotRef) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    try:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(snapshot.path)
        mlflow.log_input(MetaDataset(source=source, name=snapshot.name, digest=snapshot.fingerprint), context="training")
    except MlflowException as e:  # lineage is also in the tags; never fail a run on it
        log.warning("could not log dataset lineage: %s", e)
