"""The failing-run check: does a finished run look like it learned anything?

A run is flagged (``warning``) when

- its best full-graph training accuracy stays near chance: within ``chance_margin`` of the
  chance level, the larger of ``1 / classes`` and the majority class's share of the training
  labels (a model that predicts one class gets that much for nothing); or
- its validation accuracy is far below the features-only baseline's (by more than
  ``baseline_margin``): the graph model does worse than ignoring the graph, which on real graphs
  means it is under-trained or its features are badly scaled.

The reason and what to try go to the Prefect log (a WARNING), the MLflow tags
``graphpipe.health`` / ``graphpipe.health_reason`` and the run's Prefect artifact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storage.snapshot import SPLIT_TRAIN

CHANCE_MARGIN = 0.10  # best training accuracy at most this far above chance: "near chance"
BASELINE_MARGIN = 0.05  # GNN validation accuracy this far below the features-only baseline's


@dataclass(frozen=True)
class Health:
    """``status`` is ``ok`` or ``warning``; ``reasons`` say why, ``suggestions`` what to try."""

    status: str
    reasons: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "none"

    def tags(self) -> dict[str, str]:
        """The MLflow tags of the check."""
        return {"graphpipe.health": self.status, "graphpipe.health_reason": self.reason[:5000]}

    def message(self) -> str:
        """One line for the log: what is wrong and what to try."""
        if self.status == "ok":
            return "run health: ok"
        return f"run health: WARNING: {self.reason}. Try: {'; '.join(self.suggestions)}"

    def markdown(self) -> str:
        """A section of the run's Prefect artifact."""
        if self.status == "ok":
            return "**Run health:** ok\n"
        tries = "\n".join(f"- {s}" for s in self.suggestions)
        return f"**Run health: WARNING.** {self.reason}.\n\nWhat to try:\n{tries}\n"


def chance_level(y: np.ndarray, split: np.ndarray, num_classes: int) -> float:
    """What a constant prediction scores: the larger of ``1 / num_classes`` and the majority
    class's share of the labeled training nodes."""
    train = np.asarray(y)[(np.asarray(split) == SPLIT_TRAIN) & (np.asarray(y) >= 0)]
    majority = float(np.bincount(train).max() / len(train)) if len(train) else 0.0
    return max(1.0 / max(num_classes, 1), majority)


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def check_run_health(
    history: Sequence[dict[str, float]],
    *,
    chance: float,
    val_acc: float | None = None,
    baseline_val_acc: float | None = None,
    settings: dict[str, Any] | None = None,
    chance_margin: float = CHANCE_MARGIN,
    baseline_margin: float = BASELINE_MARGIN,
) -> Health:
    """Judge a finished run from its per-epoch ``history`` (dicts with ``train_acc``/``val_acc``
    where the full graph was evaluated), its final ``val_acc``, the chance level and the
    features-only baseline's validation accuracy. ``settings`` (flat config keys such as
    ``normalize.method``, ``train.weight_decay``, ``train.epochs``) make the suggestions specific.
    """
    settings = settings or {}
    train_accs = _finite(h.get("train_acc") for h in history)
    val_accs = _finite(h.get("val_acc") for h in history)
    if val_acc is None or math.isnan(val_acc):
        val_acc = max(val_accs) if val_accs else None
    reasons: list[str] = []
    if train_accs and max(train_accs) <= chance + chance_margin:
        reasons.append(
            f"training accuracy stayed near chance (best {max(train_accs):.3f}, chance {chance:.3f} over "
            f"{len(history)} epochs)"
        )
    if baseline_val_acc is not None and val_acc is not None and not math.isnan(baseline_val_acc) \
            and val_acc < baseline_val_acc - baseline_margin:
        reasons.append(
            f"validation accuracy {val_acc:.3f} is far below the features-only baseline's {baseline_val_acc:.3f}"
        )
    if not reasons:
        return Health("ok")
    return Health("warning", reasons, _suggestions(settings, history))


def _suggestions(settings: dict[str, Any], history: Sequence[dict[str, float]]) -> list[str]:
    out = []
    method = settings.get("normalize.method_used") or settings.get("normalize.method")
    if method != "standard":
        why = (": row normalization shrinks bag-of-words rows with many non-zeros to tiny values"
               if method in ("row", "auto", None) else "")
        out.append(f"`--set normalize.method=standard` (or `none`){why}")
    wd = settings.get("train.weight_decay")
    if wd is None or float(wd) > 0:
        out.append(f"lower weight decay (`--set train.weight_decay={_lower(wd)}`)")
    epochs = settings.get("train.epochs")
    if epochs is not None and history and len(history) >= int(epochs):
        out.append(f"more epochs (`--set train.epochs={int(epochs) * 2}`)")
    out.append("`graphpipe tune` to search normalization, lr, weight decay, hidden, dropout, layers and batch size")
    return out


def _lower(wd: Any) -> str:
    try:
        value = float(wd) / 10 if wd is not None and float(wd) > 0 else 0.0
    except (TypeError, ValueError):
        value = 0.0
    return f"{value:g}"
