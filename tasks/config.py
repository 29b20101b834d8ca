"""Typed settings for every stage, nested in one :class:`PipelineConfig`.

Each stage reads only its own section; the whole config goes into every manifest and into MLflow.
A config can come from a YAML or TOML file and be changed key by key with ``section.key=value``
overrides (``train.epochs=50``). Unknown keys are rejected, so a typo is an error, not a silent
default.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import InputError


MAX_NAME = 100  # characters of a graph name: a folder name, and part of the registered model's name


def plain_name_problem(name: str, max_length: int) -> str | None:
    """Why ``name`` cannot be used as one folder name inside the store, or None if it can."""
    if not name:
        return "it is empty"
    if len(name) > max_length:
        return f"it has {len(name)} characters, at most {max_length} are allowed"
    if any(c in name for c in "/\\"):
        return "it contains '/' or '\\'"
    if name.startswith("."):
        return "it starts with '.'"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains a control character (NUL, newline, ...)"
    return None


def redact_uri(text: str) -> str:
    """``text`` with the credentials of any URI in it replaced by ``***``.

    ``s3://KEY:SECRET@bucket`` -> ``s3://***@bucket``, ``https://user:pass@host`` -> ``https://***@host``,
    and the values of query parameters such as ``token=``, ``password=``, ``X-Amz-Signature=``.
    """
    text = _URI_USERINFO.sub(r"\1***@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m.group(1)}=***", text)


_URI_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s?#]+@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:[a-z0-9_.-]*(?:token|secret|password|passwd|pwd|credential|signature|apikey|api_key|access_key|sig)[a-z0-9_.-]*))=[^&;#\s]*"
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the graph comes from and how its files are laid out.

    Column names left as ``None`` are detected: ``node_id``/``id`` for ids, ``label`` for labels,
    ``split`` (strings train/val/test) or ``train_mask``/``val_mask``/``test_mask`` (booleans) for
    the split, and for features either the numeric columns that remain, one list column, or the
    separate ``features`` file (``.npy`` dense or scipy ``.npz`` sparse, row i = i-th row of the
    node table).
    """

    name: str = "graph"
    edges: list[str] = Field(default_factory=list)
    nodes: str | None = None
    features: str | None = None
    edge_format: Literal["auto", "csv", "tsv", "whitespace", "parquet"] = "auto"
    src_column: str | None = None
    dst_column: str | None = None
    id_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    feature_columns: list[str] | None = None
    unknown_nodes: Literal["error", "add"] = "error"
    num_classes: int | None = Field(default=None, ge=2)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        problem = plain_name_problem(v, MAX_NAME)
        if problem:
            raise ValueError(f"graph name must be a plain folder name: {problem}")
        return v

    @field_validator("edges", "nodes", "features")
    @classmethod
    def _paths(cls, v: Any) -> Any:
        for path in v if isinstance(v, list) else [v]:
            if path is not None and "\x00" in path:
                raise ValueError("a file path cannot contain a NUL character")
        return v


class SplitConfig(_Section):
    """The split used when the node table gives none.

    ``per_class``: ``train_per_class`` and ``val_per_class`` labeled nodes of each class (as in
    Planetoid and Shchur et al. 2018), the rest of the labeled nodes (or ``test_per_class``) for
    test. ``fraction``: ``train_fraction`` / ``val_fraction`` of the labeled nodes, the rest test.
    """

    method: Literal["per_class", "fraction"] = "per_class"
    train_per_class: int = Field(default=20, ge=1)
    val_per_class: int = Field(default=30, ge=0)
    test_per_class: int | None = Field(default=None, ge=1)
    train_fraction: float = Field(default=0.6, gt=0, lt=1)
    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    seed: int = 0
    force: bool = False  # generate a split even when the node table has one

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError("train_fraction + val_fraction must be below 1 (the rest is test)")
        return self


class NormalizeConfig(_Section):
    """Feature normalization.

    ``row``: ``x_i / sum_j |x_ij|`` (rows summing to zero stay zero); equal to PyG's
    ``NormalizeFeatures`` on non-negative features. ``l2``: ``x_i / ||x_i||_2``. ``standard``:
    ``(x - mean) / std`` per column with mean and std from the training nodes (std 0 -> 1).
    ``none``: unchanged. ``auto``: ``l2`` when every feature is non-negative (bag-of-words style),
    else ``standard`` (chosen on a table of graphs: docs/defaults.md).
    """

    method: Literal["auto", "row", "l2", "standard", "none"] = "auto"
    # features with fewer non-zeros than this fraction are kept sparse (CSR) through the first
    # layer; 0 keeps every feature matrix dense
    sparse_below: float = Field(default=0.1, ge=0, le=1)
    # input features of a graph without node features (tasks/normalize/structural.py): "auto" = "spectral"
    # for such a graph (nothing for one with features); "degree"; "none" = one constant feature
    structural: Literal["auto", "spectral", "degree", "none"] = "auto"
    structural_dim: int = Field(default=32, ge=1)  # eigenvectors in the "spectral" encoding


class PartitionConfig(_Section):
    """METIS k-way partition. ``num_parts="auto"``: ``ceil(num_nodes / target_cluster_size)``."""

    num_parts: int | Literal["auto"] = "auto"
    target_cluster_size: int = Field(default=200, ge=1)
    seed: int = 0
    # partition refresh (tasks/partition/refresh.py): when the snapshot extends the graph's last
    # partitioned snapshot, keep the old clusters and place the new nodes (cluster size cap:
    # refresh_cap x the previous largest cluster); full METIS after max_refreshes refreshes, or when
    # the edge-cut fraction grows by more than max_cut_increase (relative) over the last full
    # run's, or the size imbalance (largest / mean) passes max_imbalance; refresh=false: always METIS
    refresh: bool = True
    refresh_cap: float = Field(default=1.1, ge=1)
    max_refreshes: int = Field(default=7, ge=0)
    max_cut_increase: float = Field(default=0.05, ge=0)
    max_imbalance: float = Field(default=1.5, ge=1)


class TrainConfig(_Section):
    """Cluster-GCN training.

    ``clusters_per_batch="auto"``: enough clusters for ``target_batch_nodes`` nodes per batch, but
    at most half the clusters, so that every epoch has at least two batches.
    ``loader_workers``: 0 assembles batches in one background thread, ``prefetch`` ahead; ``n > 0``
    in ``n`` worker processes (PyTorch ``DataLoader``), ``prefetch`` ahead per worker.
    ``world_size``: data-parallel training processes (``torch.distributed``; gloo on CPU, NCCL on
    CUDA with one GPU per rank); each epoch's batches are dealt out to them.
    ``patience``: early stopping after that many epochs without a better validation accuracy (the
    best-validation weights are kept); ``0``, ``none`` or ``off`` trains exactly ``epochs`` epochs.
    ``min_edge_share``: the share of the graph's edges that an epoch's batches should keep
    (logged per epoch as ``batch_edge_share``; a warning below it); ``clusters_per_batch="auto"``
    also takes enough clusters per batch to keep that share by the partition's edge cut, when
    they fit in ``max_batch_nodes`` nodes per batch (else it keeps the batch-size choice).
    """

    # the model registry is tasks/train/model.py (MODELS); gat: PyG GATConv, `heads` heads of
    # hidden/heads channels in hidden layers, 1 at the output; diag_lambda (gcn only): the
    # Cluster-GCN paper's diagonal enhancement (D+I)^-1 (A+I) + lambda diag(.), for deep GCNs
    model: Literal["gcn", "sage", "gat"] = "gcn"
    heads: int = Field(default=8, ge=1)
    diag_lambda: float | None = Field(default=None, ge=0)
    num_layers: int = Field(default=2, ge=1)
    hidden: int = Field(default=128, ge=1)
    dropout: float = Field(default=0.5, ge=0, lt=1)
    lr: float = Field(default=0.01, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    epochs: int = Field(default=200, ge=1)  # at most; early stopping after `patience` (docs/defaults.md)
    clusters_per_batch: int | Literal["auto"] = "auto"
    target_batch_nodes: int = Field(default=5000, ge=1)
    eval_every: int = Field(default=1, ge=1)
    patience: int | None = Field(default=50, ge=1)  # 0 / "none" / "off": fixed epochs (see validator)
    min_edge_share: float = Field(default=0.3, ge=0, le=1)
    max_batch_nodes: int = Field(default=50000, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prefetch: int = Field(default=2, ge=0)
    # processes assembling batches; "auto": none on CPU (the background thread keeps up with CPU
    # training), several on CUDA, where one thread could not feed the GPU
    loader_workers: int | Literal["auto"] = Field(default="auto")
    resume: bool = True
    warm_start: bool = False  # start from the registered champion's weights when they fit
    # a warm start that happened (the champion's weights fit) is fine-tuning with its own budget:
    # the loaded weights are validated first (epoch 0, the best so far), then at most warm_epochs
    # epochs, stopping after warm_patience epochs without beating the best (0/none/off: exactly
    # warm_epochs); a cold run ignores both
    warm_epochs: int = Field(default=20, ge=1)
    warm_patience: int | None = Field(default=3, ge=1)
    world_size: int = Field(default=1, ge=1)

    @field_validator("patience", "warm_patience", mode="before")
    @classmethod
    def _patience_off(cls, v: Any) -> Any:
        """``0``, ``none``, ``off``, ``false`` (any case) or null: no early stopping."""
        if v is None or v is False or v == 0 or (isinstance(v, str) and v.strip().lower() in ("0", "none", "off", "false", "null")):
            return None
        return v

    @model_validator(mode="after")
    def _model_options(self) -> TrainConfig:
        if self.diag_lambda is not None and self.model != "gcn":
            raise ValueError(f"train.diag_lambda (diagonal enhancement) applies to model gcn only, not {self.model}")
        if self.model == "gat" and self.num_layers > 1 and self.hidden % self.heads:
            raise ValueError(f"train.model=gat: train.hidden ({self.hidden}) must be a multiple of train.heads ({self.heads})")
        return self


class TrackConfig(_Section):
    """MLflow tracking. ``tracking_uri=None``: ``$MLFLOW_TRACKING_URI``, else a SQLite store
    ``<store>/mlflow.db`` with artifacts under ``<store>/mlartifacts``."""

    tracking_uri: str | None = None
    experiment: str = "graphpipe"
    registered_model: str | None = None  # default: "graphpipe-<graph name>"
    log_model: bool = True
    embedding_plot_nodes: int = Field(default=5000, ge=10)

    @field_validator("registered_model")
    @classmethod
    def _safe_model_name(cls, v: str | None) -> str | None:
        problem = None if v is None else plain_name_problem(v, 200)
        if problem:
            raise ValueError(f"a registered model name must be a plain name: {problem}")
        return v

    @field_validator("tracking_uri", "experiment")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and "\x00" in v:
            raise ValueError("cannot contain a NUL character")
        return v


class BaselineConfig(_Section):
    """The features-only baseline trained beside every run (``baseline_val_acc``,
    ``baseline_test_acc``): a 2-layer MLP (``hidden`` > 0) or logistic regression (``hidden: 0``)
    on the same normalized features and split, with early stopping on validation accuracy."""

    enabled: bool = True
    hidden: int = Field(default=64, ge=0)
    dropout: float = Field(default=0.5, ge=0, lt=1)
    lr: float = Field(default=0.01, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    epochs: int = Field(default=300, ge=1)
    patience: int = Field(default=30, ge=1)
    batch_size: int = Field(default=4096, ge=1)
    seed: int = 0
    # reuse (tasks/evaluate/baseline.py): a run takes the graph's stored baseline result instead of
    # training when the settings above and the features' normalization are the same, its snapshot
    # grew from the one the baseline last ran on by incremental ingest (existing nodes' labels and
    # features unchanged), the labeled nodes grew by at most reuse_max_growth (relative) since the
    # baseline was trained, and it was reused fewer than max_reuses times in a row
    reuse: bool = True
    reuse_max_growth: float = Field(default=0.05, ge=0)
    max_reuses: int = Field(default=7, ge=0)


class TuneConfig(_Section):
    """``graphpipe tune``: an Optuna study (TPE, seeded; median pruning) over normalization, lr,
    weight decay, hidden, dropout, layers and clusters per batch. ``trials`` is the study's total
    (a rerun resumes it); ``patience``: early stopping of each trial. ``use_tuned``: runs take the
    graph's best tuned config from the store (``<store>/graphs/<name>/tuned/best.yaml``) under
    the explicit overrides. ``min_improvement``: the validation accuracy a trial must gain over the
    configured (default) trial to be saved as the best, so noise on a small validation set does not
    replace good defaults."""

    trials: int = Field(default=20, ge=1)
    timeout: float | None = Field(default=None, gt=0)  # seconds for the whole study
    seed: int = 0
    patience: int = Field(default=20, ge=1)
    prune_startup_trials: int = Field(default=4, ge=0)  # trials that run to the end before pruning starts
    prune_warmup_epochs: int = Field(default=10, ge=0)  # epochs of every trial before it can be pruned
    use_tuned: bool = False
    # the best trial replaces the configured (default) trial only if its validation accuracy is
    # higher by at least this much; otherwise the saved "best" config is the configured one
    min_improvement: float = Field(default=0.01, ge=0, le=1)


class ScoreConfig(_Section):
    """Scoring every node of the current snapshot with a model (``graphpipe score``, the
    ``graph-score`` flow, and the pipeline after promotion) and the drift since the previous
    scoring. ``model``: ``None`` = the graph's registered champion; a registered version number
    (``"3"``) of the graph's model; or a checkpoint file (a ``model.pt`` record) / checkpoint set
    directory. ``top_k``: classes and probabilities kept per node; ``embeddings``: also store the
    last hidden layer; ``drift_alert``: share of changed predictions above which the MLflow run
    is tagged ``graphpipe.drift_alert=true`` and the artifact says ALERT. ``enabled: false`` skips
    the scoring in the pipeline. ``workers``: local processes sharing the full-graph inference
    (CPU; the same scores as one process)."""

    enabled: bool = True
    model: str | None = None
    top_k: int = Field(default=3, ge=1)
    embeddings: bool = False
    drift_alert: float = Field(default=0.1, ge=0, le=1)
    workers: int = Field(default=1, ge=1)

    @field_validator("model", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        """``--set score.model=3`` arrives as a number: a registered version, kept as text."""
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class PipelineConfig(_Section):
    store: str = "graphpipe-store"
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    progress: bool = False  # show the stages' progress (the graphpipe.progress logger); --progress wins
    # how long a run waits for another run of the same graph to release the store's lock
    lock_timeout_seconds: float = Field(default=600.0, ge=0)
    # a remote store's local cache (storage.cache): None = $GRAPHPIPE_CACHE_DIR, else ~/.cache/graphpipe
    cache_dir: str | None = None
    # its size bound in GB (least recently used outputs evicted): None = $GRAPHPIPE_CACHE_MAX_GB, else 50
    cache_max_gb: float | None = Field(default=None, gt=0)

    @field_validator("store")
    @classmethod
    def _store_location(cls, v: str) -> str:
        """A local path, or a URI the store can serve (``s3://bucket/prefix``, ``gs://``, ...;
        :mod:`storage.fs`): anything else is an error here, never a local folder named ``s3:``."""
        if "\x00" in v:
            raise ValueError("the store path cannot contain a NUL character")
        if v.startswith("file://"):
            return urllib.parse.unquote(urllib.parse.urlparse(v).path)
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", v):
            from storage.fs import StoreLocationError, parse_store

            try:
                return parse_store(v).uri
            except StoreLocationError as e:
                raise ValueError(redact_uri(str(e))) from None
        return v

    def flat(self) -> dict[str, Any]:
        """The config as ``{"section.key": value}``: the form MLflow params take."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.model_dump(mode="json"))
        return out

    def fingerprint_of(self, *sections: str) -> dict[str, Any]:
        """The named sections as plain data, for cache keys."""
        return {s: getattr(self, s).model_dump(mode="json") for s in sections}


def _read_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's settings and the line of each dotted key (YAML and JSON; none for TOML)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p}: the config file is a directory; expected a YAML or TOML file")
    if not p.is_file():
        raise InputError(f"{p}: config file not found")
    if p.suffix.lower() not in (".toml", ".yaml", ".yml", ".json"):
        raise InputError(f"{p}: config must be a .yaml, .yml, .toml or .json file")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{p}: cannot read the config file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text (byte {e.start + 1}); expected a YAML or TOML file") from None
    lines: dict[str, int] = {}
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
            lines = _key_lines(yaml.compose(text))
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{p}: not valid TOML: {e}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{p}: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data, lines


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = " ".join(str(getattr(e, "problem", None) or e).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}not valid YAML: {problem}"


def _key_lines(node: Any, prefix: str = "") -> dict[str, int]:
    """``{"train.epochs": line}`` for every key of a composed YAML mapping (1-based lines)."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = f"{prefix}{key.value}"
            lines[dotted] = key.start_mark.line + 1
            lines.update(_key_lines(value, dotted + "."))
    return lines


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=50"`` -> ``("train.epochs", 50)``; the value is read as YAML."""
    if "=" not in text:
        raise InputError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _known_keys(loc: tuple) -> list[str]:
    """The keys allowed beside ``loc``'s last part (for "did you mean")."""
    model: Any = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _describe(err: ValidationError, sources: dict[str, str], origin: str) -> str:
    """One line for every problem: where it was set (file and line, or the override), key, what was expected."""
    parts = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not isinstance(x, int))
        key = ".".join(str(x) for x in loc)
        if e["type"] == "extra_forbidden":
            what = "unknown key (Extra inputs are not permitted)"
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1)
            if close:
                what += f"; did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?"
        else:
            shown = repr(e.get("input"))
            what = f"{e['msg']} (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
        children = [k for k in sources if k.startswith(key + ".")]
        where = next((sources[k] for k in (key, *_prefixes(key), *children) if k in sources), origin)
        where = where if len(where) <= 120 else where[:117] + "..."
        what = " ".join(what.split()).replace("Value error, ", "")
        parts.append(redact_uri(f"{where}: {key or 'config'}: {what}"))
    return "; ".join(parts)


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _flat_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in data.items():
        keys.append(f"{prefix}{k}")
        if isinstance(v, dict):
            keys.extend(_flat_keys(v, f"{prefix}{k}."))
    return keys


def load_config(
    path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    base: PipelineConfig | dict[str, Any] | None = None,
) -> PipelineConfig:
    """Build a config from ``base`` (or defaults), then a file, then dotted overrides."""
    if isinstance(base, PipelineConfig):
        data = base.model_dump(mode="json", exclude_unset=True)
    else:
        data = json.loads(json.dumps(base or {}))
    sources: dict[str, str] = {}  # dotted key -> where it was set, for error messages
    if path is not None:
        file_data, lines = _read_file(path)
        for key in _flat_keys(file_data):
            sources[key] = f"{path}: line {lines[key]}" if key in lines else str(path)
        for section, values in file_data.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section].update(values)
            else:
                data[section] = values
    if isinstance(overrides, dict):
        items = [(k, v, f"override {k}={v!r}") for k, v in overrides.items()]
    else:
        items = [(*parse_override(text), f"--set {text}") for text in overrides or []]
    for key, value, text in items:
        _set_dotted(data, key, value)
        for k in [key, *_flat_keys(value, key + ".")] if isinstance(value, dict) else [key]:
            sources[k] = text
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise InputError(_describe(e, sources, "invalid configuration")) from None
