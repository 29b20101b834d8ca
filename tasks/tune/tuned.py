"""The graph's tuned config (``graphpipe tune`` writes it, runs with ``tune.use_tuned`` read it).

Kept apart from :mod:`tasks.tune.study` (Optuna, torch, MLflow) so that resolving a run's config stays
cheap: ``graphpipe ingest`` imports this module, not those libraries.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from storage.store import Store
from storage.tuned import read_tuned_config, tuned_files
from tasks.config import PipelineConfig, load_config

log = logging.getLogger(__name__)


def tuned_config_path(config: PipelineConfig) -> Path:
    """Where ``graphpipe tune`` saves the graph's best config (see :mod:`storage.tuned`)."""
    return tuned_files(Store(config.store), config.data.name).config


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys: ``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


def apply_tuned(config: PipelineConfig) -> tuple[PipelineConfig, str | None]:
    """``config`` with the graph's tuned values (:func:`storage.tuned.read_tuned_config`) for every key the user did
    not set explicitly (in the config, the config file or an override): explicit settings win over
    tuned ones, tuned ones over defaults. Returns the config and the file used (``None`` when the
    graph has no tuned config yet: then the config is returned as is)."""
    path = tuned_config_path(config)
    sections = read_tuned_config(Store(config.store), config.data.name)
    if sections is None:
        log.warning("tune.use_tuned is set but %s has no tuned config yet (%s): using the configured values",
                    config.data.name, path)
        return config, None
    tuned = _flat(sections)
    explicit = config.model_dump(mode="json", exclude_unset=True)
    explicit_keys = set(_flat(explicit))
    updates = {k: v for k, v in tuned.items() if k not in explicit_keys}
    if updates:
        log.info("using the tuned config %s: %s", path, updates)
    return load_config(None, updates, base=explicit), str(path)
