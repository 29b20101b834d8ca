"""Feature normalization, with statistics saved so scoring applies the same transform.

Methods (``normalize.method``):

- ``row``: ``x_i <- x_i / sum_j |x_ij|``; rows whose sum is zero stay zero. On non-negative
  features this equals PyG's ``NormalizeFeatures`` (which also subtracts the global minimum, zero
  for such features) and the Cluster-GCN tutorial's preprocessing.
- ``l2``: ``x_i <- x_i / ||x_i||_2``; rows whose norm is zero stay zero. Unlike ``row``, the first
  layer's pre-activations keep the same scale whatever the number of non-zeros in a row (a row of
  ``k`` equal words has entries ``1/sqrt(k)``, not ``1/k``).
- ``standard``: ``x_ij <- (x_ij - mean_j) / std_j`` with ``mean`` and ``std`` over the training
  nodes (all nodes when there are none); ``std_j = 0`` is replaced by 1.
- ``none``: unchanged.
- ``auto``: ``l2`` when every feature is non-negative (bag-of-words, counts, binary), else
  ``standard``. Chosen on a table of graphs (``docs/defaults.md``): ``row`` shrinks rows with
  hundreds of non-zeros so far that the model barely learns (Amazon Computers), ``standard``
  blows up rare words of sparse bag-of-words (CiteSeer), ``l2`` is within a point of the best on
  every graph.

A featureless graph (edges and labels only) gets a structural encoding instead
(``normalize.structural``, :mod:`tasks.normalize.structural`): by default (``auto``) log-degree,
log-component-size and the ``normalize.structural_dim`` leading eigenvectors of the normalized
adjacency (``spectral``); ``degree`` keeps the first two columns; ``none`` is one constant feature
(1.0 for every node). The encoding used is recorded in the statistics (``structural``) and the
manifest; it is written as the features ``x`` unchanged (method ``none``), so the exported predictor takes
those rows as its ``x``.

Sparse features (bag-of-words: fewer than ``normalize.sparse_below`` of the entries non-zero) are
written as CSR (:func:`storage.arrays.write_csr`) instead of a dense ``x`` and stay sparse through the model's first layer. ``row`` and ``none`` keep zeros zero.
``standard`` would not, so the CSR holds ``x / std`` and ``x_shift`` holds ``mean / std``: the
normalized features are ``x / std - mean / std``, and the first layer computes
``(x / std) W - (mean / std) W`` without ever building the dense matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from storage.arrays import X_SHIFT, write_csr
from storage.fingerprint import fingerprint_value
from storage.snapshot import SPLIT_TRAIN, Features, read_edges, read_features, read_nodes
from storage.store import FeaturesRef, SnapshotRef, Store, output_at
from tasks.config import NormalizeConfig
from tasks.errors import InputError
from tasks.normalize.structural import resolve_structural, structural_encoding
from tasks.partition.csr import build_csr

if TYPE_CHECKING:
    from storage.outputs import Output, Writer

log = logging.getLogger(__name__)
PROGRESS = logging.getLogger("graphpipe.progress")

FORMAT = "normalize-v2"
STATS = "stats"  # the statistics' entry in the output
_CHUNK_ROWS = 1 << 18


@dataclass
class NormalizationStats:
    """Everything needed to apply the transform to new rows."""

    method: str
    num_features: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    featureless: bool = False
    # a featureless graph's structural encoding (tasks.normalize.structural): method, k, eigenvalues, ...
    structural: dict | None = None
    sparse: bool = False  # written as CSR (see the module docstring)

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "num_features": self.num_features,
            "mean": self.mean,
            "std": self.std,
            "featureless": self.featureless,
            "structural": self.structural,
            "sparse": self.sparse,
        }

    def encoding(self) -> str:
        """What the model's input is, in words: ``features``, ``constant`` or ``spectral (k=32)``."""
        if not self.featureless:
            return "features"
        if not self.structural:
            return "constant"
        k = self.structural.get("k")
        return self.structural["method"] + (f" (k={k})" if k else "")

    @classmethod
    def from_json(cls, data: dict) -> NormalizationStats:
        return cls(**data)


def resolve_method(method: str, x: Features) -> str:
    """Turn ``auto`` into ``l2`` (all features >= 0) or ``standard`` (see the module docstring)."""
    if method != "auto":
        return method
    data = x.data if sp.issparse(x) else x
    return "l2" if data.size == 0 or float(np.min(data)) >= 0 else "standard"


def fit_stats(x: Features, method: str, train_rows: np.ndarray) -> NormalizationStats:
    """Compute the statistics of ``method`` (``standard`` uses ``train_rows`` only)."""
    stats = NormalizationStats(method=method, num_features=int(x.shape[1]))
    if method == "standard" and sp.issparse(x):
        rows = train_rows if len(train_rows) else np.arange(x.shape[0])
        sub = sp.csr_matrix(x)[rows].astype(np.float64)
        n = max(len(rows), 1)
        mean = np.asarray(sub.sum(axis=0)).ravel() / n
        var = np.maximum(np.asarray(sub.multiply(sub).sum(axis=0)).ravel() / n - np.square(mean), 0.0)
        std = np.sqrt(var)
        std[std <= 1e-12 * np.maximum(np.abs(mean), 1.0)] = 1.0
        stats.mean, stats.std = mean.tolist(), std.tolist()
    elif method == "standard":
        rows = train_rows if len(train_rows) else np.arange(x.shape[0])

        def chunks() -> Iterator[np.ndarray]:  # float64 rows, _CHUNK_ROWS at a time: no full-size copies
            for start in range(0, len(rows), _CHUNK_ROWS):
                sub = x[rows[start : start + _CHUNK_ROWS]]
                yield sub.toarray().astype(np.float64) if sp.issparse(sub) else np.asarray(sub, dtype=np.float64)

        n = max(len(rows), 1)
        mean = sum((c.sum(axis=0) for c in chunks()), np.zeros(x.shape[1])) / n
        var = sum((np.square(c - mean).sum(axis=0) for c in chunks()), np.zeros(x.shape[1])) / n
        std = np.sqrt(var)
        std[std == 0] = 1.0
        stats.mean, stats.std = mean.tolist(), std.tolist()
    return stats


def apply_stats(x: Features, stats: NormalizationStats) -> np.ndarray:
    """Apply saved statistics to rows of features; returns dense float32."""
    if stats.structural:
        raise ValueError("a structural encoding describes the graph it was computed on; use its stored rows (the features output)")
    if stats.featureless:  # the constant feature
        return np.ones((x.shape[0], 1), dtype=np.float32)
    if x.shape[1] != stats.num_features:
        raise ValueError(f"expected {stats.num_features} features, got {x.shape[1]}")
    if stats.method in ("row", "l2"):
        if sp.issparse(x):
            sums = np.asarray(abs(x).sum(axis=1) if stats.method == "row"
                              else np.sqrt(x.multiply(x).sum(axis=1))).ravel()
            scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
            return np.asarray(sp.diags(scale.astype(np.float32)) @ x.toarray(), dtype=np.float32)
        x = np.asarray(x, dtype=np.float32)
        if stats.method == "row":
            sums = np.abs(x).sum(axis=1, keepdims=True)
        else:
            sums = np.sqrt(np.square(x, dtype=np.float64).sum(axis=1, keepdims=True)).astype(np.float32)
        return np.divide(x, sums, out=np.zeros_like(x), where=sums > 0)
    dense = x.toarray() if sp.issparse(x) else np.asarray(x)
    if stats.method == "standard":
        mean = np.asarray(stats.mean, dtype=np.float32)
        std = np.asarray(stats.std, dtype=np.float32)
        return ((dense - mean) / std).astype(np.float32, copy=False)
    return dense.astype(np.float32, copy=False)


def density(x: Features) -> float:
    """Fraction of non-zero entries."""
    size = x.shape[0] * x.shape[1]
    if size == 0:
        return 1.0
    nnz = sp.csr_matrix(x).count_nonzero() if sp.issparse(x) else int(np.count_nonzero(x))
    return nnz / size


def sparse_normalized(x: Features, stats: NormalizationStats) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """``(csr, shift)``: the normalized features are ``csr - shift`` (``shift`` only for
    ``standard``: ``mean / std``; ``csr`` holds ``x / std`` then)."""
    csr = sp.csr_matrix(x, dtype=np.float32, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    shift = None
    if stats.method in ("row", "l2"):
        sq = csr.multiply(csr).sum(axis=1)
        sums = np.asarray(abs(csr).sum(axis=1) if stats.method == "row" else np.sqrt(sq), dtype=np.float64).ravel()
        scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
        csr.data = (csr.data * np.repeat(scale, np.diff(csr.indptr))).astype(np.float32)
    elif stats.method == "standard":
        mean, std = np.asarray(stats.mean), np.asarray(stats.std)
        csr.data = (csr.data / std[csr.indices]).astype(np.float32)
        shift = (mean / std).astype(np.float32)
    return csr, shift


def normalize_features(snapshot: SnapshotRef, config: NormalizeConfig, store: Store) -> FeaturesRef:
    """Normalize the snapshot's features (or compute a featureless graph's structural encoding)
    and publish them with their statistics as the ``features`` output (cached by fingerprint).

    Args:
        snapshot: the ingested snapshot.
        config: the ``normalize`` section (method, structural encoding, sparse threshold).
        store: the store receiving the features (the snapshot is read where its reference points).

    Returns the :class:`FeaturesRef` (``reused=True`` when a complete output already existed; a
    damaged one is logged and rebuilt). Raises InputError for settings that do not fit the graph
    (a structural encoding on a graph with features).
    """
    fp = fingerprint_value(FORMAT, snapshot.fingerprint, config.model_dump(mode="json"))
    out = store.output(snapshot.name, "features", fp)
    if out.reusable("normalized features"):
        method = out.json(STATS)["method"]
        log.info("normalize: cache hit %s (%s)", out.location, method)
        return FeaturesRef(path=out.location, fingerprint=fp, method=method, reused=True)
    source = output_at(snapshot.path)  # the input: wherever its reference says it is
    x = read_features(source)
    labels, split = read_nodes(source)
    stats, encoded = _fit(x, split, source, config)
    params = config.model_dump(mode="json") | {
        "resolved_method": stats.method, "resolved_structural": stats.encoding(), "sparse": stats.sparse}
    with store.publish(out, params=params, inputs={"snapshot": snapshot.fingerprint}) as w:
        if stats.sparse:
            counts = _write_sparse(w, x, stats, snapshot, len(labels))
        else:
            counts = _write_dense(w, x, encoded, stats, snapshot, len(labels))
        w.json(STATS, stats.to_json())
        w.counts.update(counts)
    what = stats.method if x is not None else stats.encoding()
    PROGRESS.info("normalize: %s features of %d nodes -> %s%s", what, len(labels), out.location,
                  f" (sparse: {counts['nnz']} non-zeros)" if stats.sparse else "")
    return FeaturesRef(path=out.location, fingerprint=fp, method=stats.method)


def _fit(x: Features | None, split: np.ndarray, source: Output, config: NormalizeConfig
         ) -> tuple[NormalizationStats, np.ndarray | None]:
    """The statistics of the configured transform, and a featureless graph's structural encoding
    (``None`` for a graph with features or the constant feature)."""
    structural = resolve_structural(config.structural, has_features=x is not None)
    if x is not None and structural != "none":
        raise InputError(
            f"{source.location}: normalize.structural={config.structural} is for graphs without node features, "
            f"and this graph has {x.shape[1]} (use normalize.structural=auto)"
        )
    if x is None and structural == "none":
        log.warning("normalize: %s has no features; using one constant feature", source.location)
        return NormalizationStats(method="none", num_features=0, featureless=True), None
    if x is None:
        num_nodes = len(split)
        src, dst = read_edges(source)
        indptr, indices = build_csr(src, dst, num_nodes)
        del src, dst
        encoded, info = structural_encoding(indptr, indices, num_nodes, structural, config.structural_dim, seed=0)
        log.info("normalize: %s has no features; %s structural encoding (%d columns, %.1f s)",
                 source.location, structural, encoded.shape[1], info["seconds"])
        return NormalizationStats(method="none", num_features=encoded.shape[1], featureless=True,
                                  structural=info), encoded
    stats = fit_stats(x, resolve_method(config.method, x), np.flatnonzero(split == SPLIT_TRAIN))
    stats.sparse = density(x) < config.sparse_below
    return stats, None


def _write_dense(w: Writer, x: Features | None, encoded: np.ndarray | None, stats: NormalizationStats,
                 snapshot: SnapshotRef, num_nodes: int) -> dict[str, int]:
    """Write the normalized features (or the encoding) as a dense array, a slice of rows at a time."""
    width = stats.num_features if stats.num_features else 1
    target = w.new_array("x", (num_nodes, width), np.float32)
    for start in range(0, num_nodes, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, num_nodes)
        if encoded is not None:
            target[start:stop] = encoded[start:stop]
            continue
        rows = np.empty((stop - start, 0)) if x is None else x[start:stop]
        target[start:stop] = apply_stats(rows, stats)
    if not np.isfinite(target).all():
        raise ValueError(f"normalization produced non-finite values from {snapshot.path}")
    target.flush()
    del target
    return {"num_nodes": num_nodes, "num_features": width}


def _write_sparse(w: Writer, x: Features, stats: NormalizationStats, snapshot: SnapshotRef,
                  num_nodes: int) -> dict[str, int]:
    """Write sparse normalized features as CSR (see the module docstring)."""
    csr, shift = sparse_normalized(x, stats)
    if not np.isfinite(csr.data).all():
        raise ValueError(f"normalization produced non-finite values from {snapshot.path}")
    write_csr(w, csr.indptr, csr.indices, csr.data, csr.shape)
    if shift is not None:
        w.array(X_SHIFT, shift)
    return {"num_nodes": num_nodes, "num_features": stats.num_features, "nnz": int(csr.nnz)}


def load_stats(features: FeaturesRef) -> NormalizationStats:
    """The normalization statistics (and structural encoding, if any) saved with ``features``."""
    return NormalizationStats.from_json(output_at(features.path).json(STATS))


__all__ = [
    "NormalizationStats",
    "apply_stats",
    "density",
    "sparse_normalized",
    "fit_stats",
    "load_stats",
    "normalize_features",
    "resolve_method",
]
