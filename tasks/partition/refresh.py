"""Partition refresh: place the nodes a growing graph gained without running METIS again.

When tonight's snapshot extends the previous one (the same nodes with the same internal ids,
plus new nodes appended after them, plus new edges), the previous clusters are kept and only the
new nodes are placed:

1. each new node joins the cluster holding most of its already-placed neighbours, as long as the
   cluster stays within ``cap`` nodes (a full cluster is skipped for the next-best one); nodes
   whose neighbours are all new are placed in later rounds, once their neighbours are;
2. nodes left over (isolated, or only full clusters around them) go to the smallest clusters.

The result is then judged like a METIS partition (edge-cut fraction, size imbalance) and the
stage falls back to a full METIS run when it degrades past the configured limits (see
:func:`needs_full_metis`). No peer library refreshes a partition; this is the greedy
neighbour-majority placement used by streaming graph partitioners (LDG, Stanton & Kliot 2012),
with the existing METIS clusters as the starting point.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass(frozen=True)
class PartitionQuality:
    """Edge-cut fraction (share of undirected edges between clusters) and size imbalance (largest
    cluster over the mean cluster size)."""

    edge_cut_fraction: float
    imbalance: float


def quality(indptr: np.ndarray, indices: np.ndarray, assignment: np.ndarray, num_parts: int) -> PartitionQuality:
    """The quality of ``assignment`` on the symmetric CSR graph ``indptr``/``indices``."""
    n = len(indptr) - 1
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    a = np.asarray(assignment)
    nnz = len(indices)
    cut = int(np.count_nonzero(a[rows] != a[np.asarray(indices)]))
    sizes = np.bincount(a, minlength=num_parts)
    mean = n / num_parts if num_parts else 0
    return PartitionQuality(edge_cut_fraction=cut / nnz if nnz else 0.0, imbalance=float(sizes.max() / mean) if mean else 1.0)


def _votes(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray, assignment: np.ndarray,
           num_parts: int) -> sp.csr_matrix:
    """Rows: ``nodes``; columns: clusters; values: neighbours of the node placed in the cluster."""
    starts, stops = indptr[nodes], indptr[nodes + 1]
    sizes = (stops - starts).astype(np.int64)
    row = np.repeat(np.arange(len(nodes), dtype=np.int64), sizes)
    pos = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()), dtype=np.int64)
    cluster = assignment[np.asarray(indices)[pos]]
    placed = cluster >= 0
    return sp.csr_matrix((np.ones(int(placed.sum()), dtype=np.int64), (row[placed], cluster[placed])),
                         shape=(len(nodes), num_parts))


def _place_round(votes: sp.csr_matrix, nodes: np.ndarray, sizes: np.ndarray, cap: int,
                 assignment: np.ndarray) -> int:
    """Place each voting node in its best cluster with room; the strongest votes first."""
    votes = votes.tocoo()
    full = sizes[votes.col] >= cap
    order = np.lexsort((-votes.data[~full], votes.row[~full]))
    row, col, val = votes.row[~full][order], votes.col[~full][order], votes.data[~full][order]
    first = np.ones(len(row), dtype=bool)
    first[1:] = row[1:] != row[:-1]
    best_row, best_col, best_val = row[first], col[first], val[first]
    placed = 0
    for i in np.argsort(-best_val, kind="stable"):  # new nodes only: a small share of the graph
        c = best_col[i]
        if sizes[c] < cap:
            assignment[nodes[best_row[i]]] = c
            sizes[c] += 1
            placed += 1
    return placed


def refresh_assignment(indptr: np.ndarray, indices: np.ndarray, previous: np.ndarray, num_parts: int,
                       cap: int) -> np.ndarray:
    """The assignment of every node of the grown graph.

    Args:
        indptr, indices: the grown graph's symmetric CSR (nodes ``0..N-1``).
        previous: the cluster of each of the first ``len(previous)`` nodes (the previous
            snapshot's nodes, which keep their internal ids and their clusters).
        num_parts: the number of clusters (unchanged).
        cap: the largest cluster size a new node may join (e.g. 1.1 x the largest METIS cluster).

    Returns:
        int32 array of length ``N``; entries ``< len(previous)`` equal ``previous``.
    """
    n, n_old = len(indptr) - 1, len(previous)
    if n < n_old:
        raise ValueError(f"the grown graph has {n} nodes, fewer than the previous {n_old}")
    assignment = np.full(n, -1, dtype=np.int64)
    assignment[:n_old] = previous
    sizes = np.bincount(np.asarray(previous, dtype=np.int64), minlength=num_parts).astype(np.int64)
    pending = np.arange(n_old, n, dtype=np.int64)
    while len(pending):
        votes = _votes(indptr, indices, pending, assignment, num_parts)
        if votes.nnz == 0 or _place_round(votes, pending, sizes, cap, assignment) == 0:
            break
        pending = pending[assignment[pending] < 0]
    heap = [(int(s), c) for c, s in enumerate(sizes)]
    heapq.heapify(heap)
    for v in pending:  # isolated, or every neighbouring cluster full: the smallest cluster
        s, c = heapq.heappop(heap)
        assignment[v] = c
        heapq.heappush(heap, (s + 1, c))
    return assignment.astype(np.int32)


def needs_full_metis(refreshed: PartitionQuality, base: PartitionQuality, *, refreshes: int, max_refreshes: int,
                     max_cut_increase: float, max_imbalance: float) -> str | None:
    """Why a full METIS run is due instead of the refresh (``None`` when the refresh is kept).

    Args:
        refreshed: the refreshed partition's quality.
        base: the quality of the last full METIS run it descends from.
        refreshes: refreshes since that METIS run, this one included.
        max_refreshes: refreshes allowed between full runs.
        max_cut_increase: allowed relative growth of the edge-cut fraction (0.05 = 5%).
        max_imbalance: the largest allowed size imbalance (largest cluster / mean).
    """
    if refreshes > max_refreshes:
        return f"{refreshes} refreshes since the last full METIS run (partition.max_refreshes={max_refreshes})"
    limit = base.edge_cut_fraction * (1 + max_cut_increase)
    if refreshed.edge_cut_fraction > limit + 1e-12:
        return (f"edge cut {refreshed.edge_cut_fraction:.4f} exceeds {limit:.4f} (METIS {base.edge_cut_fraction:.4f} "
                f"+{100 * max_cut_increase:.0f}%, partition.max_cut_increase)")
    if refreshed.imbalance > max_imbalance:
        return f"size imbalance {refreshed.imbalance:.3f} exceeds partition.max_imbalance={max_imbalance}"
    return None
