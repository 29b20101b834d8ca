"""A graph's tuned output: the best config ``graphpipe tune`` found, its scores, and its Optuna study.

::

    <store>/graphs/<name>/tuned/       (Store.tuned_dir)
        best.yaml     the best config, as config sections (usable as ``--config`` or ``tune.use_tuned``)
        best.json     its scores, trial, parameters and the study it came from
        study.db      the Optuna study (SQLite), resumed by the next tune of the same graph

Unlike the stages' outputs this directory is not fingerprinted: it holds the graph's latest tune
and is updated in place, each file replaced atomically (:func:`storage.atomic.write_bytes`). Tasks
ask for it through these functions and never name its files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from storage.atomic import read_json, write_bytes, write_json
from storage.store import Store

_CONFIG = "best.yaml"
_SCORES = "best.json"
_STUDY = "study.db"


@dataclass(frozen=True)
class TunedFiles:
    """Where a graph's tuned output lives (the files need not exist yet).

    Attributes:
        config: the best config (YAML sections, e.g. ``train: {lr: 0.01}``).
        scores: its scores (JSON).
        study: the Optuna study database (SQLite).
    """

    config: Path
    scores: Path
    study: Path

    @property
    def study_url(self) -> str:
        """The study's SQLAlchemy URL, as Optuna's ``RDBStorage`` takes it."""
        return f"sqlite:///{self.study}"


def tuned_files(store: Store, name: str) -> TunedFiles:
    """The tuned files of graph ``name`` in ``store`` (paths only; nothing is created or read)."""
    directory = store.tuned_dir(name)
    return TunedFiles(config=directory / _CONFIG, scores=directory / _SCORES, study=directory / _STUDY)


def open_tuned(store: Store, name: str) -> TunedFiles:
    """:func:`tuned_files`, with the tuned directory created, ready for a study to be opened in it."""
    files = tuned_files(store, name)
    files.study.parent.mkdir(parents=True, exist_ok=True)
    return files


def write_tuned(store: Store, name: str, sections: dict[str, dict[str, Any]], scores: dict[str, Any],
                header: str = "") -> TunedFiles:
    """Save graph ``name``'s best config and its scores, each file replaced atomically.

    Args:
        store: the store.
        name: the graph.
        sections: the config as sections of dotted keys' values (``{"train": {"lr": 0.01}}``),
            written as YAML in this order.
        scores: JSON-serializable scores and provenance (trial, study, accuracies).
        header: comment lines (each starting with ``#``) written above the YAML.

    Caveat: the two files are replaced one after the other, config first; a reader between the
    two writes sees the new config with the previous scores.
    """
    files = open_tuned(store, name)
    write_bytes(files.config, (header + yaml.safe_dump(sections, sort_keys=False)).encode())
    write_json(files.scores, scores)
    return files


def read_tuned_config(store: Store, name: str) -> dict[str, Any] | None:
    """Graph ``name``'s best config as nested sections, or ``None`` when it has not been tuned."""
    path = tuned_files(store, name).config
    if not path.is_file():
        return None
    return yaml.safe_load(path.read_text()) or {}


def read_tuned_scores(store: Store, name: str) -> dict[str, Any] | None:
    """The scores saved with graph ``name``'s best config, or ``None`` when it has not been tuned."""
    path = tuned_files(store, name).scores
    return read_json(path) if path.is_file() else None
