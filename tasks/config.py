"""Typed settings for every stage, nested in one :class:`PipelineConfig`.

Each stage reads only its own section; the whole config goes into every manifest and into MLflow.
A config can come from a YAML or TOML file and be changed key by key with ``section.key=value``
overrides (``train.epochs=50``). Unknown keys are rejected, so a typo is an error, not a silent
default.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import InputError


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
        if not v or any(c in v for c in "/\\") or v.startswith("."):
            raise ValueError("graph name must be a plain folder name (no '/', not starting with '.')")
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
    ``NormalizeFeatures`` on non-negative features. ``standard``: ``(x - mean) / std`` per column
    with mean and std from the training nodes (std 0 -> 1). ``none``: unchanged. ``auto``: ``row``
    when every feature is non-negative (bag-of-words style), else ``standard``.
    """

    method: Literal["auto", "row", "standard", "none"] = "auto"


class PartitionConfig(_Section):
    """METIS k-way partition. ``num_parts="auto"``: ``ceil(num_nodes / target_cluster_size)``."""

    num_parts: int | Literal["auto"] = "auto"
    target_cluster_size: int = Field(default=200, ge=1)
    seed: int = 0


class TrainConfig(_Section):
    """Cluster-GCN training.

    ``clusters_per_batch="auto"``: enough clusters for ``target_batch_nodes`` nodes per batch, but
    at most half the clusters, so that every epoch has at least two batches.
    ``loader_workers``: 0 assembles batches in one background thread, ``prefetch`` ahead; ``n > 0``
    in ``n`` worker processes (PyTorch ``DataLoader``), ``prefetch`` ahead per worker.
    """

    model: Literal["gcn", "sage"] = "gcn"
    num_layers: int = Field(default=2, ge=1)
    hidden: int = Field(default=128, ge=1)
    dropout: float = Field(default=0.5, ge=0, lt=1)
    lr: float = Field(default=0.01, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    epochs: int = Field(default=100, ge=1)
    clusters_per_batch: int | Literal["auto"] = "auto"
    target_batch_nodes: int = Field(default=5000, ge=1)
    eval_every: int = Field(default=1, ge=1)
    patience: int | None = Field(default=None, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    prefetch: int = Field(default=2, ge=0)
    # processes assembling batches; "auto": none on CPU (the background thread keeps up with CPU
    # training), several on CUDA, where one thread could not feed the GPU
    loader_workers: int | Literal["auto"] = Field(default="auto")
    resume: bool = True
    warm_start: bool = False  # start from the registered champion's weights when they fit


class TrackConfig(_Section):
    """MLflow tracking. ``tracking_uri=None``: ``$MLFLOW_TRACKING_URI``, else a SQLite store
    ``<store>/mlflow.db`` with artifacts under ``<store>/mlartifacts``."""

    tracking_uri: str | None = None
    experiment: str = "graphpipe"
    registered_model: str | None = None  # default: "graphpipe-<graph name>"
    log_model: bool = True
    embedding_plot_nodes: int = Field(default=5000, ge=10)


class PipelineConfig(_Section):
    store: str = "graphpipe-store"
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    progress: bool = False
    # how long a run waits for another run of the same graph to release the store's lock
    lock_timeout_seconds: float = Field(default=600.0, ge=0)

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


def _read_file(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: config file not found")
    text = p.read_text()
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        elif p.suffix.lower() in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text) or {}
        else:
            raise InputError(f"{p}: config must be .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{p}: not valid {p.suffix[1:].upper()}: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a mapping of sections at the top level")
    return data


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


def _describe(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


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
    origin = "defaults"
    if path is not None:
        file_data = _read_file(path)
        for section, values in file_data.items():
            if isinstance(values, dict) and isinstance(data.get(section), dict):
                data[section].update(values)
            else:
                data[section] = values
        origin = str(path)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        _set_dotted(data, key, value)
        origin += " + overrides"
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise InputError(_describe(e, origin)) from None
