"""Cluster-GCN batches: several clusters with every edge between their nodes.

Clusters are contiguous ranges of the partitioned node order (see :mod:`storage.arrays`), so a
batch's rows and their CSR segments are a handful of contiguous slices of memory-mapped arrays:
assembling a batch reads only those slices and is vectorized over nodes and edges (the only Python
loop is over the batch's clusters).

The adjacency's weights are the model's choice (:class:`AdjacencyNorm`, picked by the model
registry in :mod:`tasks.train.model`); this module only builds the structure and evaluates
:func:`edge_weights`, the one implementation of every normalization, also used by the exported
predictor on an ``edge_index``. Degrees are those of the (sub)graph the adjacency covers: the
batch's induced subgraph in training, the full graph in layer-wise inference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from storage.arrays import ClusterGraph, CSRRows
from storage.snapshot import SPLIT_TRAIN



@dataclass(frozen=True)
class AdjacencyNorm:
    """The weights of the adjacency a model's propagation multiplies by (``d_i``: node ``i``'s
    number of neighbours, self-loop excluded).

    - ``sym``: ``D^-1/2 (A + I) D^-1/2`` with ``D = diag(d + 1)``, as ``GCNConv`` computes it
      (Kipf & Welling 2017); symmetric.
    - ``mean``: ``D^-1 A`` (no self-loop): the mean over neighbours, ``SAGEConv``'s aggregation;
      a node without neighbours gets zeros.
    - ``row``: ``A' = (D + I)^-1 (A + I)``, then ``A' + diag_lambda * diag(A')``: the
      Cluster-GCN paper's diagonal enhancement for deep GCNs (Chiang et al. 2019, sec. 3.3);
      not symmetric.
    - ``ones``: ``A + I`` with unit weights: the structure only, for layers that weight their
      neighbours themselves (attention).
    """

    scheme: Literal["sym", "mean", "row", "ones"]
    diag_lambda: float = 0.0

    @property
    def self_loops(self) -> bool:
        """Whether the adjacency has a diagonal entry for every node."""
        return self.scheme != "mean"

    @property
    def symmetric(self) -> bool:
        """Whether a square adjacency of an undirected graph stays symmetric (its transpose is itself)."""
        return self.scheme in ("sym", "ones")


def edge_weights(norm: AdjacencyNorm, row, col, deg_row, deg_col, xp: Any = np):
    """The weight of each adjacency entry ``(row[e], col[e])`` under ``norm``.

    Args:
        norm: the normalization (see :class:`AdjacencyNorm`).
        row, col: the entries' target and source node ids (any common numbering; an entry with
            ``row == col`` is the self-loop).
        deg_row, deg_col: float32 number of neighbours (self-loop excluded) of each entry's
            target and source node, in the graph the adjacency covers.
        xp: the array module of the arguments: ``numpy`` (batches and row blocks) or ``torch``
            (the exported predictor); the same arithmetic either way.

    Plain element-wise operations without data-dependent shapes, so ``torch.export`` can trace
    the torch form. NumPy may return float64 for ``row``: cast with ``astype(float32)``.
    """
    if norm.scheme == "ones":
        return deg_row * 0 + 1
    if norm.scheme == "mean":
        return 1.0 / (deg_row + (deg_row == 0))  # no neighbours: weight unused, no division by zero
    if norm.scheme == "sym":
        return 1.0 / xp.sqrt((deg_row + 1) * (deg_col + 1))
    if norm.scheme == "row":
        return (1.0 + norm.diag_lambda * (row == col)) / (deg_row + 1)
    raise ValueError(f"unknown adjacency normalization {norm.scheme!r}")


def _weights_np(norm: AdjacencyNorm, row: np.ndarray, col: np.ndarray, deg: np.ndarray) -> np.ndarray:
    """:func:`edge_weights` of the entries ``(row, col)`` as float32, ``deg`` per node."""
    deg = deg.astype(np.float32, copy=False)
    return np.asarray(edge_weights(norm, row, col, deg[row], deg[col]), dtype=np.float32)


warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclass
class Batch:
    """One training mini-batch in local ids ``0..n-1`` (``nodes[i]`` is the global id of ``i``)."""

    nodes: np.ndarray
    x: torch.Tensor  # dense (n, d), or sparse CSR (n, d) when the graph keeps its features sparse
    y: torch.Tensor
    train_mask: torch.Tensor
    adj: torch.Tensor  # sparse CSR (n, n)
    num_edges: int  # directed adjacency entries between batch nodes, self-loops excluded

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.nodes,
            self.x.to(device, non_blocking=True),
            self.y.to(device, non_blocking=True),
            self.train_mask.to(device, non_blocking=True),
            self.adj.to(device),
            self.num_edges,
        )


def epoch_batches(num_parts: int, clusters_per_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle the clusters and cut them into batches of ``clusters_per_batch`` (last may be smaller)."""
    order = rng.permutation(num_parts)
    return [np.sort(order[i : i + clusters_per_batch]) for i in range(0, num_parts, clusters_per_batch)]


def ranges_concat(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, b) for a, b in zip(starts, stops)])``, vectorized."""
    sizes = stops - starts
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(sizes) - sizes
    return np.repeat(starts - offsets, sizes) + np.arange(total, dtype=np.int64)


def _gather_rows(graph: ClusterGraph, starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row degrees and concatenated neighbour lists of the node ranges ``[starts, stops)``."""
    degs, cols = [], []
    for a, b in zip(starts.tolist(), stops.tolist()):
        ptr = np.asarray(graph.indptr[a : b + 1])
        degs.append(np.diff(ptr))
        cols.append(np.asarray(graph.indices[ptr[0] : ptr[-1]]))
    return np.concatenate(degs), np.concatenate(cols).astype(np.int64, copy=False)


def batch_subgraph(graph: ClusterGraph, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The induced subgraph of ``clusters`` (sorted): ``(nodes, crow, col)`` in local ids.

    Keeps every edge whose two ends lie in the batch, inside a cluster and between the batch's
    clusters; ``col`` is sorted within each row.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    starts, stops = graph.cluster_ptr[clusters], graph.cluster_ptr[clusters + 1]
    nodes = ranges_concat(starts, stops)
    deg, cols = _gather_rows(graph, starts, stops)
    # the batch is the sorted, disjoint ranges [starts[j], stops[j]); a neighbour g is in the batch
    # iff the last range starting at or before g also contains it; its local id is then
    # offset[j] + g - starts[j]
    sizes = stops - starts
    offset = np.cumsum(sizes) - sizes
    j = np.searchsorted(starts, cols, side="right") - 1
    np.maximum(j, 0, out=j)
    keep = (cols >= starts[j]) & (cols < stops[j])
    col = (offset[j] + cols - starts[j])[keep]
    row = np.repeat(np.arange(len(nodes), dtype=np.int64), deg)[keep]
    crow = np.zeros(len(nodes) + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=len(nodes)), out=crow[1:])
    return nodes, crow, col


def add_self_loops_csr(crow: np.ndarray, col: np.ndarray, num_rows: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Insert the diagonal entry ``(r, r + offset)`` into each row, keeping columns sorted
    (``offset``: the global id of row 0 when columns are global ids).

    Requires sorted columns per row and no existing diagonal; vectorized by computing each entry's
    position in the output directly.
    """
    counts = np.diff(crow)
    row = np.repeat(np.arange(num_rows, dtype=np.int64), counts)
    after_diag = col > row + offset
    out = np.empty(len(col) + num_rows, dtype=np.int64)
    pos = np.arange(len(col), dtype=np.int64) + row + after_diag
    out[pos] = col
    less = np.bincount(row[~after_diag], minlength=num_rows)
    out[crow[:-1] + np.arange(num_rows) + less] = np.arange(num_rows) + offset
    return crow + np.arange(num_rows + 1), out


def sparse_csr(crow: np.ndarray, col: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """A sparse CSR tensor over the given numpy arrays (no copy, no invariant check)."""
    return torch.sparse_csr_tensor(
        torch.from_numpy(crow), torch.from_numpy(col), torch.from_numpy(values), size=shape, check_invariants=False
    )


def normalized_adjacency_arrays(crow: np.ndarray, col: np.ndarray, norm: AdjacencyNorm) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(crow, col, values)`` of the square batch adjacency under ``norm`` (self-loops added when
    ``norm`` has them; degrees are the batch subgraph's)."""
    n = len(crow) - 1
    deg = np.diff(crow)
    if norm.self_loops:
        crow, col = add_self_loops_csr(crow, col, n)
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(crow))
    return crow, col, _weights_np(norm, row, col, deg)


def normalized_adjacency(crow: np.ndarray, col: np.ndarray, norm: AdjacencyNorm) -> torch.Tensor:
    """The square batch adjacency under ``norm`` as a sparse CSR tensor."""
    n = len(crow) - 1
    return sparse_csr(*normalized_adjacency_arrays(crow, col, norm), (n, n))


def batch_arrays(graph: ClusterGraph, clusters: np.ndarray, norm: AdjacencyNorm) -> dict[str, np.ndarray | int]:
    """The batch of ``clusters`` as plain numpy arrays (what a worker process sends back):
    ``nodes``, ``x`` (dense features) or ``x_crow``/``x_col``/``x_val``/``x_dim`` (sparse
    features, CSR), ``y``, ``train_mask``, the normalized adjacency's ``crow``/``col``/``values``
    and ``num_edges``."""
    clusters = np.sort(np.asarray(clusters, dtype=np.int64))
    nodes, crow, col = batch_subgraph(graph, clusters)
    ranges = list(zip(graph.cluster_ptr[clusters].tolist(), graph.cluster_ptr[clusters + 1].tolist()))
    y, split = (np.concatenate([np.asarray(arr[a:b]) for a, b in ranges]) for arr in (graph.y, graph.split))
    if isinstance(graph.x, CSRRows):
        x_crow, x_col, x_val = graph.x.row_ranges(ranges)
        feats: dict[str, np.ndarray | int] = {"x_crow": x_crow, "x_col": x_col, "x_val": x_val, "x_dim": graph.x.shape[1]}
    else:
        x = np.concatenate([np.asarray(graph.x[a:b]) for a, b in ranges])
        feats = {"x": np.ascontiguousarray(x, dtype=np.float32)}
    acrow, acol, values = normalized_adjacency_arrays(crow, col, norm)
    return {"nodes": nodes, **feats, "y": y.astype(np.int64, copy=False),
            "train_mask": split == SPLIT_TRAIN, "crow": acrow, "col": acol, "values": values, "num_edges": len(col)}


def batch_from_arrays(a: dict[str, np.ndarray | int]) -> Batch:
    """The :class:`Batch` of the arrays :func:`batch_arrays` returned (tensors over them, no copy)."""
    n = len(a["nodes"])
    if "x_crow" in a:
        x = sparse_csr(a["x_crow"], a["x_col"], a["x_val"], (n, int(a["x_dim"])))
    else:
        x = torch.from_numpy(a["x"])
    return Batch(
        nodes=a["nodes"],
        x=x,
        y=torch.from_numpy(a["y"]),
        train_mask=torch.from_numpy(a["train_mask"]),
        adj=sparse_csr(a["crow"], a["col"], a["values"], (n, n)),
        num_edges=int(a["num_edges"]),
    )


def build_batch(graph: ClusterGraph, clusters: np.ndarray, norm: AdjacencyNorm) -> Batch:
    """Assemble the batch of ``clusters``: node data, train mask and the adjacency normalized by
    ``norm`` (the model's :attr:`~tasks.train.model.ModelSpec.adjacency`)."""
    return batch_from_arrays(batch_arrays(graph, clusters, norm))


@dataclass
class RowBlock:
    """Rows ``[start, stop)`` of the full graph's normalized adjacency (all neighbours, full-graph
    degrees), as CSR with global column ids, sorted within each row."""

    start: int
    stop: int
    crow: np.ndarray
    col: np.ndarray
    values: np.ndarray


def graph_degrees(graph: ClusterGraph) -> np.ndarray:
    """Every node's number of neighbours in the full graph (float32, self-loop excluded)."""
    return np.diff(np.asarray(graph.indptr)).astype(np.float32)


def row_block(graph: ClusterGraph, start: int, stop: int, norm: AdjacencyNorm, deg: np.ndarray | None = None) -> RowBlock:
    """The full-graph adjacency rows ``[start, stop)`` under ``norm``; ``deg``:
    :func:`graph_degrees` (computed once per pass by the caller; computed here when not given)."""
    ptr = np.asarray(graph.indptr[start : stop + 1]).astype(np.int64)
    cols = np.asarray(graph.indices[ptr[0] : ptr[-1]]).astype(np.int64)
    crow = ptr - ptr[0]
    n = stop - start
    if deg is None:
        deg = graph_degrees(graph)
    if norm.self_loops:
        crow, cols = add_self_loops_csr(crow, cols, n, offset=start)
    row = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(crow))
    return RowBlock(start, stop, crow, cols, _weights_np(norm, row, cols, deg))


def block_bounds(graph: ClusterGraph, target_nodes: int) -> list[tuple[int, int]]:
    """Cut the node order into blocks of whole consecutive clusters of at least ``target_nodes``
    (the last block may be smaller)."""
    ptr = graph.cluster_ptr.tolist()
    bounds, start = [], 0
    for c in range(1, len(ptr)):
        if (ptr[c] - start >= target_nodes or c == len(ptr) - 1) and ptr[c] > start:
            bounds.append((start, ptr[c]))
            start = ptr[c]
    return bounds
