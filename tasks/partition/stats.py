"""Partition statistics: cluster sizes and balance, edge cut, and per cluster the label
distribution and the split, as the partition stage records them (its ``stats`` entry and manifest
counts; logged to MLflow with each run). Pure functions of the assignment: no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from storage.snapshot import SPLIT_NAMES, SPLIT_TRAIN


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each row of a count matrix (0 for an empty row)."""
    counts = np.atleast_2d(counts).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    terms = np.zeros_like(p)
    np.log2(p, out=terms, where=p > 0)
    return -(p * terms).sum(axis=1)


def _label_stats(assignment: np.ndarray, labels: np.ndarray, num_parts: int) -> dict[str, Any] | None:
    """Per-cluster label counts (k x C) and their summary; ``None`` for an unlabeled graph."""
    labeled = labels >= 0
    if not labeled.any():
        return None
    num_classes = int(labels.max()) + 1
    flat = assignment[labeled].astype(np.int64) * num_classes + labels[labeled]
    counts = np.bincount(flat, minlength=num_parts * num_classes).reshape(num_parts, num_classes)
    per_cluster = counts.sum(axis=1)
    has = per_cluster > 0
    entropy = _entropy_bits(counts)
    majority = np.divide(counts.max(axis=1), per_cluster, out=np.zeros(num_parts), where=has)
    return {
        "num_classes": num_classes,
        "labeled_nodes": int(labeled.sum()),
        "counts": counts.tolist(),
        "global_entropy_bits": float(_entropy_bits(counts.sum(axis=0))[0]),
        "mean_cluster_entropy_bits": float(entropy[has].mean()) if has.any() else 0.0,
        "mean_majority_fraction": float(majority[has].mean()) if has.any() else 0.0,
        "clusters_without_labels": int((~has).sum()),
    }


def _split_stats(assignment: np.ndarray, split: np.ndarray, num_parts: int) -> dict[str, Any]:
    """Train / val / test nodes per cluster (compact lists) and clusters with no training node."""
    per = {name: np.bincount(assignment[split == code], minlength=num_parts) for code, name in SPLIT_NAMES.items()}
    return {
        **{name: c.tolist() for name, c in per.items()},
        "clusters_without_train": int((per[SPLIT_NAMES[SPLIT_TRAIN]] == 0).sum()),
    }


def size_stats(cluster_ptr: np.ndarray) -> dict[str, Any]:
    """Min / max / mean cluster size, balance (max / mean) and the number of empty clusters."""
    sizes = np.diff(cluster_ptr)
    mean = float(sizes.mean())
    return {
        "cluster_size_min": int(sizes.min()),
        "cluster_size_max": int(sizes.max()),
        "cluster_size_mean": mean,
        "balance": float(sizes.max() / mean) if mean else 0.0,
        "empty_clusters": int((sizes == 0).sum()),
    }


def summary(cluster_ptr: np.ndarray, nnz: int, cut: int, metis_cut: int) -> dict[str, Any]:
    """Sizes, edge cut (ours and METIS') and balance: the manifest's counts and stats.json's head."""
    num_edges = nnz // 2
    return {
        "num_nodes": int(cluster_ptr[-1]),
        "num_parts": len(cluster_ptr) - 1,
        "nnz": nnz,
        "num_edges": num_edges,
        "edge_cut": cut,
        "metis_edge_cut": metis_cut,
        "edge_cut_fraction": cut / num_edges if num_edges else 0.0,
        **size_stats(cluster_ptr),
    }


def node_stats(assignment: np.ndarray, labels: np.ndarray, split: np.ndarray, num_parts: int) -> dict[str, Any]:
    """Label distribution (``labels``, ``None`` for an unlabeled graph) and split counts (``split``)
    per cluster, for the partition's statistics; ``labels``/``split`` in snapshot order."""
    return {
        "labels": _label_stats(assignment, labels, num_parts),
        "split": _split_stats(assignment, split, num_parts),
    }
