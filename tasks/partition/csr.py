"""Compressed sparse row (CSR) adjacency of an undirected graph: built from an edge list, and
renumbered by a permutation (the partition's cluster order).

Both work in place on one int64 key per directed entry (``row * N + col``), sorted: the peak is
8 bytes per entry plus the output, and the renumbering runs on slices of rows so its temporaries
stay bounded (:data:`PERMUTE_CHUNK` entries).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

# Entries of the permuted CSR built per slice of rows (bounds the temporaries to ~100 MB).
PERMUTE_CHUNK = 1 << 21
# Largest node count whose (row, col) pairs fit an int64 key row * N + col.
_MAX_KEY_NODES = 3_037_000_499


def node_index_dtype(num_nodes: int) -> np.dtype:
    """int32 for node ids below 2**31, else int64."""
    return np.dtype(np.int32) if num_nodes < 2**31 else np.dtype(np.int64)


def _check_ids(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> None:
    """Raise ValueError unless every endpoint is in ``[0, num_nodes)``."""
    if len(src) != len(dst):
        raise ValueError(f"src and dst differ in length ({len(src)} != {len(dst)})")
    if len(src) == 0:
        return
    lo = min(int(src.min()), int(dst.min()))
    hi = max(int(src.max()), int(dst.max()))
    if lo < 0 or hi >= num_nodes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"edge endpoint {bad} is outside the graph's {num_nodes} node ids")


def build_csr(
    src: np.ndarray, dst: np.ndarray, num_nodes: int, *, index_dtype: npt.DTypeLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric CSR ``(indptr int64, indices)`` of undirected edges; sorted rows, no loops or repeats.

    Each edge is stored in both directions; self-loops and repeated edges (in either direction) are
    dropped. ``indices`` is int32 below 2**31 nodes, else int64, unless ``index_dtype`` says
    otherwise (int64 lets pymetis use the arrays without a copy). One int64 key ``row * N + col``
    per directed entry is sorted in place and reduced to the column in place: the peak is 8 bytes
    per entry for the keys plus the int32 copy (none for int64 output), beside the caller's edges.
    """
    if num_nodes > _MAX_KEY_NODES:
        raise ValueError(f"{num_nodes} nodes exceed the {_MAX_KEY_NODES} that int64 keys can address")
    src, dst = np.asarray(src), np.asarray(dst)
    _check_ids(src, dst, num_nodes)
    out_dtype = np.dtype(index_dtype) if index_dtype is not None else node_index_dtype(num_nodes)
    loops = src == dst
    if loops.any():
        src, dst = src[~loops], dst[~loops]
    del loops
    key = _directed_keys(src, dst, num_nodes)
    key.sort()
    key = _drop_repeats(key)
    row_starts = np.arange(num_nodes + 1, dtype=np.int64)
    row_starts *= num_nodes
    indptr = np.searchsorted(key, row_starts).astype(np.int64, copy=False)
    del row_starts
    if num_nodes:
        np.remainder(key, num_nodes, out=key)
    indices = key.astype(out_dtype, copy=False)
    return indptr, indices


def _directed_keys(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> np.ndarray:
    """``row * N + col`` for both directions of every edge, built in one int64 array."""
    m = len(src)
    key = np.empty(2 * m, dtype=np.int64)
    for half, (row, col) in enumerate(((src, dst), (dst, src))):
        part = key[half * m : (half + 1) * m]
        part[:] = row
        np.multiply(part, num_nodes, out=part)
        np.add(part, col, out=part)
    return key


def _drop_repeats(sorted_key: np.ndarray) -> np.ndarray:
    """Sorted keys without repeats (returns the input itself when it has none)."""
    if len(sorted_key) < 2:
        return sorted_key
    keep = np.empty(len(sorted_key), dtype=bool)
    keep[0] = True
    np.not_equal(sorted_key[1:], sorted_key[:-1], out=keep[1:])
    if keep.all():
        return sorted_key
    return sorted_key[keep]


def _row_chunks(indptr: np.ndarray, max_entries: int) -> Iterator[tuple[int, int]]:
    """Row ranges ``[a, b)`` of about ``max_entries`` entries each (one long row may exceed it)."""
    n = len(indptr) - 1
    nnz = int(indptr[-1])
    cuts = np.searchsorted(indptr, np.arange(max_entries, nnz, max_entries), side="right") - 1
    bounds = np.unique(np.concatenate([[0], cuts, [n]]).astype(np.int64))
    return zip(bounds[:-1].tolist(), bounds[1:].tolist())


def permute_csr(
    indptr: np.ndarray,
    indices: np.ndarray,
    perm: np.ndarray,
    node_cluster: np.ndarray,
    out_dtype: np.dtype,
) -> tuple[np.ndarray, np.ndarray, int]:
    """CSR of ``P A P^T`` (row ``r`` = old row ``perm[r]``, columns renumbered, sorted) and the cut.

    Works on slices of new rows: gathers each row's old segment (repeat + arange), maps the
    columns through the inverse permutation, counts entries between clusters, and sorts each row
    by a key ``local_row * N + col``. Returns ``(indptr, indices, cut_edges)``.
    """
    n = len(perm)
    inv = np.empty(n, dtype=node_index_dtype(n))
    inv[perm] = np.arange(n, dtype=inv.dtype)
    new_deg = np.diff(indptr)[perm]
    new_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(new_deg, out=new_indptr[1:])
    new_indices = np.empty(int(new_indptr[-1]), dtype=out_dtype)
    cut_entries = 0
    for a, b in _row_chunks(new_indptr, PERMUTE_CHUNK):
        lo, hi = int(new_indptr[a]), int(new_indptr[b])
        counts = new_deg[a:b]
        pos = np.repeat(indptr[perm[a:b]] - (new_indptr[a:b] - lo), counts)
        pos += np.arange(hi - lo, dtype=np.int64)
        cols = inv[indices[pos]]
        del pos
        key = np.repeat(np.arange(a, b, dtype=np.int64), counts)
        cut_entries += int(np.count_nonzero(node_cluster[key] != node_cluster[cols]))
        key -= a
        key *= n
        key += cols
        del cols
        key.sort()
        np.remainder(key, n, out=key)
        new_indices[lo:hi] = key
        del key
    return new_indptr, new_indices, cut_entries // 2
