"""Full-graph inference: layer-wise, over blocks of clusters with all their neighbours.

As in the Cluster-GCN paper and PyG's example, layer ``l`` is computed for every node before layer
``l+1`` starts, each block of consecutive clusters reading its rows' neighbours from the previous
layer's output wherever they are, so no edge is dropped. Every layer is the model's own code
(:class:`tasks.train.model.GNN`):

- models that propagate with a fixed linear operator (``gcn``, ``sage``): ``layer_transform`` for
  every node first (streamed in row chunks), then per block the product with the block's rows of
  the full adjacency (:func:`windowed_product`) and ``layer_finish``;
- other models (``gat``): ``GNN.layer`` per block, on the block's rows and all their neighbours'
  rows gathered from the previous layer's output.

Memory does not grow with the graph beyond a few numbers per node: each block's adjacency is built
when the block is computed, an intermediate layer's output (N x hidden) goes to a disk-backed
scratch buffer when a scratch directory is given, and the graph's and the buffer's pages are
released after every block (see :mod:`storage.arrays`). The last layer is handed out block by
block (:func:`iter_full_graph`), so callers keep only what they need (predictions, confidences).
Progress (blocks done, at most every 10 s) is reported on the ``graphpipe.progress`` logger
(:mod:`tasks.progress`).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from storage.arrays import ClusterGraph, CSRRows, Mapping, release_pages, scratch_array
from tasks.train.batching import AdjacencyNorm, RowBlock, block_bounds, graph_degrees, row_block, sparse_csr
from tasks.progress import Ticker
from tasks.train.model import GNN, EdgeAdjacency

BLOCK_NODES = 20_000


@dataclass
class OutputBlock:
    """Rows ``[start, stop)`` of the last layer: ``logits`` and ``hidden`` (the last layer's input,
    the learned node embedding). ``hidden`` may be a view of a scratch buffer: copy what you keep."""

    start: int
    stop: int
    logits: np.ndarray
    hidden: np.ndarray


# rows of a layer's source array read per window (one sparse product per window and row block):
# a constant, so memory still does not grow with the graph. Each window costs a pass over the
# block's output rows, so fewer, larger windows are faster: on the 2.47M-node Amazon2M-shaped graph
# (2-layer GCN, 128 hidden, 2 threads, quiet machine), one full-graph inference took 24-27 s with
# 32 MB windows (peak RSS 0.65 GB) and 17-19 s with 256 MB (0.85 GB; benchmarks/RESULTS.md)
WINDOW_BYTES = 256 << 20
CHUNK_BYTES = 32 << 20  # rows of a layer input transformed at a time (larger chunks gain nothing)


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 tensor over ``a`` without a copy when possible. Arrays over read-only maps make
    torch warn that writing would be undefined; nothing here writes to them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def windowed_product(block: RowBlock, src: np.ndarray, src_map: Mapping | None,
                     window_bytes: int | None = None) -> torch.Tensor:
    """``A_block @ src`` (rows ``[start, stop)`` of the adjacency times every row of ``src``).

    ``src`` (N x d, usually memory-mapped) is read one window of ``window_bytes`` of rows at a
    time: the block's entries are grouped by the window of their column (a stable radix sort),
    each group is one sparse product with that window's rows, and the window's pages are released
    after use. Only the rows the block refers to are read, and at most one window stays resident.
    """
    n = block.stop - block.start
    d = src.shape[1]
    out = torch.zeros((n, d), dtype=torch.float32)
    if len(block.col) == 0:
        return out
    rows_per_window = max(1, (window_bytes or WINDOW_BYTES) // max(src.strides[0], 1))
    window = block.col // rows_per_window
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(block.crow))
    first, last = int(window.min()), int(window.max())
    if first != last:
        order = np.argsort((window - first).astype(np.uint16 if last - first < 65536 else np.int64), kind="stable")
        window, row, col, values = window[order], row[order], block.col[order], block.values[order]
    else:
        col, values = block.col, block.values
    cuts = np.searchsorted(window, np.arange(first, last + 2))
    for w, lo, hi in zip(range(first, last + 1), cuts[:-1].tolist(), cuts[1:].tolist()):
        if hi == lo:
            continue
        base = w * rows_per_window
        rows_w = src[base : base + rows_per_window]
        crow = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(row[lo:hi], minlength=n), out=crow[1:])
        adj = sparse_csr(crow, col[lo:hi] - base, values[lo:hi], (n, len(rows_w)))
        out += torch.sparse.mm(adj, _tensor(rows_w))
        if src_map is not None:
            src_map.release(base * src.strides[0], (base + len(rows_w)) * src.strides[0])
    return out


def _sparse_rows(x: CSRRows, a: int, b: int) -> torch.Tensor:
    """Rows ``[a, b)`` of sparse features as a sparse CSR tensor."""
    crow, col, val = x.row_ranges([(a, b)])
    return sparse_csr(crow, col, val, (b - a, x.shape[1]))


def _rows(h: np.ndarray | CSRRows, a: int, b: int) -> torch.Tensor:
    """Rows ``[a, b)`` of a layer input (dense array or sparse features) as a tensor."""
    return _sparse_rows(h, a, b) if isinstance(h, CSRRows) else _tensor(h[a:b])


def _gather(h: np.ndarray | CSRRows, ids: np.ndarray) -> torch.Tensor:
    """Rows ``ids`` (in that order) of a layer input as a tensor; runs of consecutive ids are read
    as ranges."""
    if not isinstance(h, CSRRows):
        return _tensor(h[ids])
    cuts = np.flatnonzero(np.diff(ids) != 1) + 1
    ranges = [(int(s[0]), int(s[-1]) + 1) for s in np.split(ids, cuts) if len(s)]
    crow, col, val = h.row_ranges(ranges)
    return sparse_csr(crow, col, val, (len(ids), h.shape[1]))


def _chunk_rows(h: np.ndarray | CSRRows) -> int:
    """Rows per chunk so that a chunk of ``h`` is about ``CHUNK_BYTES``."""
    if isinstance(h, CSRRows):
        return max(1, (CHUNK_BYTES // 8) // max(1, h.nnz // max(h.shape[0], 1)))
    return max(1, CHUNK_BYTES // max(h.strides[0], 1))


def _transform_all(model: GNN, i: int, h: np.ndarray | CSRRows, h_maps: list[Mapping | None], device: torch.device,
                   scratch_dir: str | os.PathLike | None) -> tuple[np.ndarray, Mapping | None]:
    """``model.layer_transform(i, rows)`` for every row of ``h``, streamed in row chunks into a
    scratch array (``h_maps``: the mappings behind ``h``, released after each chunk)."""
    n = h.shape[0]
    z, z_map = None, None
    step = _chunk_rows(h)
    for a in range(0, n, step):
        b = min(a + step, n)
        y = model.layer_transform(i, _rows(h, a, b).to(device)).cpu().numpy()
        if z is None:
            z, z_map = scratch_array((n, y.shape[1]), np.float32, scratch_dir)
        z[a:b] = y
        release_pages(*h_maps, z_map)
    assert z is not None, "a graph without nodes"
    return z, z_map


def _linear_block(model: GNN, i: int, block: RowBlock, h: np.ndarray | CSRRows, src: np.ndarray,
                  src_map: Mapping | None, device: torch.device) -> torch.Tensor:
    """Layer ``i`` of a linear model for ``block``'s rows: the block's adjacency times the
    transformed sources, then ``layer_finish``."""
    agg = windowed_product(block, src, src_map).to(device)
    return model.layer_finish(i, agg, _rows(h, block.start, block.stop).to(device))


def _neighbourhood_block(model: GNN, i: int, block: RowBlock, h: np.ndarray | CSRRows,
                         device: torch.device) -> torch.Tensor:
    """Layer ``i`` (``GNN.layer``) for ``block``'s rows, on the block's rows followed by every
    other neighbour's row, with the block's adjacency as an edge list in those local ids."""
    a, b = block.start, block.stop
    n = b - a
    inside = (block.col >= a) & (block.col < b)
    others = np.unique(block.col[~inside])
    local = np.where(inside, block.col - a, n + np.searchsorted(others, block.col))
    x = _gather(h, np.concatenate([np.arange(a, b, dtype=np.int64), others]))
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(block.crow))
    adj = EdgeAdjacency(torch.from_numpy(np.stack([local, row])).to(device), torch.from_numpy(block.values).to(device), n)
    return model.layer(i, x.to(device), adj)


@torch.no_grad()
def iter_full_graph(
    model: GNN,
    graph: ClusterGraph,
    device: torch.device,
    block_nodes: int = BLOCK_NODES,
    scratch_dir: str | os.PathLike | None = None,
) -> Iterator[OutputBlock]:
    """Exact full-graph inference, layer by layer, yielding the last layer block by block in
    partition order.

    Args:
        model: the trained model (put in eval mode here).
        graph: the partitioned graph (dense features, or sparse :class:`CSRRows`).
        device: where the dense layers run; the sparse products run on the CPU (the data is
            memory-mapped).
        block_nodes: at least this many nodes per block (whole clusters).
        scratch_dir: where intermediate arrays (layer outputs, transformed sources) are kept on
            disk (``None``: in memory); the files are unlinked, nothing is left behind.
    """
    model.eval()
    norm: AdjacencyNorm = model.spec.adjacency
    bounds = block_bounds(graph, block_nodes)
    deg = graph_degrees(graph)
    graph.release()
    x_maps = [graph.maps.get(k) for k in ("x", "x_indptr", "x_indices", "x_data")]
    h, h_maps = graph.x, x_maps
    t0 = time.perf_counter()
    ticker = Ticker("full-graph inference blocks", model.num_layers * len(bounds))
    for i in range(model.num_layers):
        last = i == model.num_layers - 1
        src, src_map = _transform_all(model, i, h, h_maps, device, scratch_dir) if model.propagates_linearly else (None, None)
        out, out_map = None, None
        for n, (a, b) in enumerate(bounds):
            block = row_block(graph, a, b, norm, deg)
            if src is not None:
                y = _linear_block(model, i, block, h, src, src_map, device).cpu().numpy()
            else:
                y = _neighbourhood_block(model, i, block, h, device).cpu().numpy()
            if last:
                yield OutputBlock(a, b, y, h.rows(a, b).toarray() if isinstance(h, CSRRows) else h[a:b])
            else:
                if out is None:
                    out, out_map = scratch_array((graph.num_nodes, y.shape[1]), np.float32, scratch_dir)
                out[a:b] = y
            graph.release()
            release_pages(*h_maps, src_map, out_map)
            ticker.tick(i * len(bounds) + n + 1, "full-graph inference: layer %d/%d, block %d/%d, %.0f s",
                        i + 1, model.num_layers, n + 1, len(bounds), time.perf_counter() - t0)
        h, h_maps = out, [out_map]


def infer_full_graph(
    model: GNN,
    graph: ClusterGraph,
    device: torch.device,
    block_nodes: int = BLOCK_NODES,
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, hidden)`` for every node in partition order, in memory (for small graphs and
    tests; the pipeline consumes :func:`iter_full_graph` block by block). ``hidden`` is the last
    layer's input (the learned node embedding)."""
    logits: np.ndarray | None = None
    hidden: np.ndarray | None = None
    for blk in iter_full_graph(model, graph, device, block_nodes):
        if logits is None:
            logits = np.empty((graph.num_nodes, blk.logits.shape[1]), dtype=np.float32)
            hidden = np.empty((graph.num_nodes, blk.hidden.shape[1]), dtype=np.float32)
        logits[blk.start : blk.stop] = blk.logits
        hidden[blk.start : blk.stop] = blk.hidden
    assert logits is not None and hidden is not None
    return logits, hidden


def predict_full_graph(
    model: GNN,
    graph: ClusterGraph,
    device: torch.device,
    scratch_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """The predicted class of every node (partition order), by exact full-graph inference
    (``scratch_dir`` as in :func:`iter_full_graph`)."""
    pred = np.empty(graph.num_nodes, dtype=np.int32)
    for blk in iter_full_graph(model, graph, device, scratch_dir=scratch_dir):
        pred[blk.start : blk.stop] = blk.logits.argmax(axis=1)
    return pred
