"""What changed since the previous scoring: prediction drift between two nights.

Pure functions over two prediction tables (``node_id``, ``prediction``), as the scoring stage
writes them, and the two snapshots' edge counts. Nodes are matched by the user's node id, so a
node keeps its identity when internal ids change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Drift:
    """Drift between the previous scoring and this one.

    Attributes:
        nodes: nodes scored now.
        common_nodes: nodes scored both times.
        new_nodes / removed_nodes: nodes only in this / only in the previous scoring.
        changed: common nodes whose predicted class changed.
        changed_share: ``changed / common_nodes`` (0 when there is no common node).
        js_divergence: Jensen-Shannon divergence (base 2, in [0, 1]) between the predicted class
            distributions of the two scorings (all their nodes).
        edges_added: this snapshot's undirected edges minus the previous one's (negative when the
            graph lost edges).
        class_share: predicted class -> share of nodes now.
        previous_class_share: the same for the previous scoring.
    """

    nodes: int
    common_nodes: int
    new_nodes: int
    removed_nodes: int
    changed: int
    changed_share: float
    js_divergence: float
    edges_added: int
    class_share: dict[int, float]
    previous_class_share: dict[int, float]

    def metrics(self) -> dict[str, float]:
        """The scalar figures, as MLflow metrics (``drift_*``)."""
        d = asdict(self)
        return {f"drift_{k}": float(v) for k, v in d.items() if not isinstance(v, dict)}


def class_distribution(predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of nodes per predicted class (length ``num_classes``; zeros for no nodes)."""
    counts = np.bincount(np.asarray(predictions, dtype=np.int64), minlength=num_classes).astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence of two distributions, base 2 (0 = equal, 1 = disjoint)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / b[nz])))

    return max(0.0, min(1.0, (kl(p, m) + kl(q, m)) / 2))


def compute_drift(current: pa.Table, previous: pa.Table, *, edges_now: int, edges_before: int) -> Drift:
    """Drift between two prediction tables (columns ``node_id`` and ``prediction``).

    Args:
        current: tonight's predictions.
        previous: the previous scoring's predictions.
        edges_now: undirected edges of tonight's snapshot.
        edges_before: undirected edges of the previous scoring's snapshot.

    Caveat: node ids must be of the same type in both tables (both integers or both strings);
    a table with a different id type is reported as a ``ValueError``.
    """
    if current.schema.field("node_id").type != previous.schema.field("node_id").type:
        raise ValueError(
            f"node ids changed type ({previous.schema.field('node_id').type} -> {current.schema.field('node_id').type}): "
            "the two scorings cannot be compared")
    cur = current.select(["node_id", "prediction"])
    prev = previous.select(["node_id", "prediction"]).rename_columns(["node_id", "previous"])
    joined = cur.join(prev, "node_id", join_type="inner")
    common = joined.num_rows
    changed = int(pc.sum(pc.not_equal(joined["prediction"], joined["previous"])).as_py() or 0) if common else 0
    pred_now = current["prediction"].to_numpy()
    pred_before = previous["prediction"].to_numpy()
    k = int(max(pred_now.max(initial=-1), pred_before.max(initial=-1)) + 1)
    share_now, share_before = class_distribution(pred_now, k), class_distribution(pred_before, k)
    return Drift(
        nodes=current.num_rows,
        common_nodes=common,
        new_nodes=current.num_rows - common,
        removed_nodes=previous.num_rows - common,
        changed=changed,
        changed_share=changed / common if common else 0.0,
        js_divergence=js_divergence(share_now, share_before) if len(pred_now) and len(pred_before) else 0.0,
        edges_added=int(edges_now) - int(edges_before),
        class_share={c: float(s) for c, s in enumerate(share_now) if s > 0},
        previous_class_share={c: float(s) for c, s in enumerate(share_before) if s > 0},
    )


def drift_markdown(drift: Drift, threshold: float | None, label_names: list[str] | None = None) -> str:
    """A Prefect markdown artifact: the figures, a small text chart of the class shares, and
    whether ``threshold`` (on ``changed_share``) was exceeded."""
    alert = threshold is not None and drift.changed_share > threshold
    lines = [
        "## Prediction drift since the previous scoring",
        "",
        f"**{'ALERT: ' if alert else ''}{100 * drift.changed_share:.2f}% of the {drift.common_nodes:,} nodes scored both "
        f"times changed class**" + (f" (threshold {100 * threshold:.2f}%)" if threshold is not None else ""),
        "",
        "| figure | value |",
        "|---|---|",
        f"| nodes scored | {drift.nodes:,} |",
        f"| new nodes | {drift.new_nodes:,} |",
        f"| removed nodes | {drift.removed_nodes:,} |",
        f"| edges added | {drift.edges_added:,} |",
        f"| class distribution divergence (JS, base 2) | {drift.js_divergence:.4f} |",
        "",
        "| class | share before | share now | |",
        "|---|---|---|---|",
    ]
    classes = sorted(set(drift.class_share) | set(drift.previous_class_share))
    for c in classes:
        now, before = drift.class_share.get(c, 0.0), drift.previous_class_share.get(c, 0.0)
        name = label_names[c] if label_names and c < len(label_names) else str(c)
        lines.append(f"| {name} | {100 * before:.1f}% | {100 * now:.1f}% | `{'#' * round(40 * now)}` |")
    return "\n".join(lines) + "\n"
