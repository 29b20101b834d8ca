"""Flat ``.npy`` arrays, read back as memory maps, and the partitioned graph training reads.

A partition directory (``partitions/<fp>/``) holds the graph's structure in cluster order:

- ``perm.npy`` (int64, N): ``perm[new_id] = snapshot_id``; ``assignment.npy`` (int32, N): cluster
  of each snapshot id; ``cluster_ptr.npy`` (int64, k+1): cluster ``c`` is new ids
  ``cluster_ptr[c]:cluster_ptr[c+1]``; ``node_cluster.npy`` (int32, N): cluster of each new id;
- ``indptr.npy`` (int64, N+1) and ``indices.npy`` (int32 or int64): the symmetric adjacency in
  new ids, CSR, no self-loops, each row's neighbours sorted;
- ``stats.json``: edge cut, cluster sizes, label distribution.

A node-data directory (``node_data/<fp>/``) holds the nodes' data in the same order:
``x.npy`` (float32, N x d, normalized), ``y.npy`` (int64, -1 = unlabeled), ``split.npy`` (int8).
Sparse features (bag-of-words, density below ``normalize.sparse_below``) are kept as CSR instead of
``x.npy``: ``x_indptr.npy`` (int64, N+1), ``x_indices.npy`` (int32), ``x_data.npy`` (float32), and
``x_shape.npy`` (int64, ``[N, d]``); with ``standard`` normalization also ``x_shift.npy`` (float32,
d): the normalized features are then ``x - x_shift`` (``x`` holds ``raw / std``, ``x_shift`` is
``mean / std``), which the model's first layer folds into a constant row (see :mod:`tasks.train.model`).

Memory: the arrays are memory-mapped, so a process reads only the pages it touches; but touched
pages stay mapped, and the kernel counts them in the process's RSS until it unmaps them. Training
and evaluation touch every page once per pass, so :meth:`ClusterGraph.release` (``madvise
(MADV_DONTNEED)``) drops them after each batch or block: the data stays in the page cache (cheap to
touch again, reclaimable by the kernel), and the process's resident memory stays the size of a
batch, not of the graph. :func:`scratch_array` gives the same kind of disk-backed buffer for data a
process writes (layer outputs of full-graph inference).
"""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

# "Output" and "Writer" below are storage.outputs' classes (not imported: that module imports this one)
Where = Union["Output", str, os.PathLike]  # an output, or (tests, scratch files) a directory

#: logical name of the shift of sparse standardized features (see the module docstring)
X_SHIFT = "x_shift"
SPARSE_X = ("x_indptr", "x_indices", "x_data")


def _dir(where: Where) -> Path:
    """The local directory holding an output's files."""
    return where.local_dir() if hasattr(where, "local_dir") else Path(where)


def array_path(directory: str | os.PathLike, name: str) -> Path:
    """The file of array ``name`` in a plain (scratch) directory."""
    return Path(directory) / f"{name}.npy"


def write_arrays(directory: str | os.PathLike, **arrays: np.ndarray) -> list[str]:
    """Save each array as ``<name>.npy`` in ``directory`` (C order, no pickles); returns the file names."""
    names = []
    for name, arr in arrays.items():
        np.save(array_path(directory, name), np.ascontiguousarray(arr), allow_pickle=False)
        names.append(array_path(directory, name).name)
    return names


def open_array(directory: Where, name: str, mmap: bool = True) -> np.ndarray:
    """Array ``name`` of an output (or directory): memory-mapped read-only, or loaded (``mmap=False``)."""
    path = array_path(_dir(directory), name)
    if mmap:
        return map_array(path)[0]
    return np.load(path, allow_pickle=False)


@dataclass
class Mapping:
    """The memory map under an array, and where the array's data starts in it."""

    mm: mmap.mmap
    offset: int

    def release(self, start: int = 0, stop: int | None = None) -> None:
        """Unmap this process's resident pages holding data bytes ``[start, stop)`` (rounded out to
        whole pages; ``MADV_DONTNEED``). The maps are shared file maps, so nothing is lost: the data
        stays in the page cache, written data included, and the next access faults it back in."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        size = len(self.mm)
        lo = self.offset + start
        lo -= lo % mmap.PAGESIZE
        hi = size if stop is None else min(size, self.offset + stop)
        if hi > lo:
            self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def map_array(path: str | os.PathLike) -> tuple[np.ndarray, Mapping | None]:
    """A ``.npy`` file as a read-only array over a memory map, and the map (``None`` for an empty
    array, which cannot be mapped)."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
        if dtype.hasobject:
            raise ValueError(f"{path}: object arrays cannot be memory-mapped")
        if int(np.prod(shape, dtype=np.int64)) == 0:
            empty = np.empty(shape, dtype=dtype)
            empty.flags.writeable = False
            return empty, None
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    arr = np.ndarray(shape, dtype=dtype, buffer=mm, offset=offset, order="F" if fortran_order else "C")
    return arr, Mapping(mm, offset)


def scratch_array(shape: tuple[int, ...], dtype: np.dtype | type, directory: str | os.PathLike | None
                  ) -> tuple[np.ndarray, Mapping | None]:
    """A writable array for intermediate results, and its map: backed by an unlinked temporary file
    in ``directory`` (it disappears with the last reference, even after a crash), or plain memory
    when ``directory`` is ``None``. Keep ``directory`` off tmpfs, whose pages are memory."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if directory is None or nbytes == 0:
        return np.empty(shape, dtype=dtype), None
    fd, path = tempfile.mkstemp(dir=directory, prefix=".scratch-", suffix=".bin")
    try:
        os.unlink(path)
        os.ftruncate(fd, nbytes)
        try:  # claim the space now: a full disk is an error here, not a SIGBUS when pages are written
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        mm = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    return np.ndarray(shape, dtype=dtype, buffer=mm), Mapping(mm, 0)


def release_pages(*maps: Mapping | None) -> None:
    """Release every resident page of ``maps`` (see :meth:`Mapping.release`)."""
    for m in maps:
        if m is not None:
            m.release()


class CSRRows:
    """A CSR matrix over memory-mapped ``indptr``/``indices``/``data`` arrays: row slices are read
    (copied) on demand, so only the touched rows' pages are resident."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, shape: tuple[int, int]):
        self.indptr, self.indices, self.data = indptr, indices, data
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1]) if len(self.indptr) else 0

    def __len__(self) -> int:
        return self.shape[0]

    def row_ranges(self, ranges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, indices, data)`` of the rows of the concatenated ranges ``[a, b)`` (copies;
        ``indptr`` starts at 0, ``indices`` int64)."""
        ptrs, cols, vals, base = [np.zeros(1, dtype=np.int64)], [], [], 0
        for a, b in ranges:
            ptr = np.asarray(self.indptr[a : b + 1], dtype=np.int64)
            lo, hi = int(ptr[0]), int(ptr[-1])
            ptrs.append(ptr[1:] - lo + base)
            cols.append(np.asarray(self.indices[lo:hi], dtype=np.int64))
            vals.append(np.asarray(self.data[lo:hi], dtype=np.float32))
            base += hi - lo
        empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return (np.concatenate(ptrs), np.concatenate(cols) if cols else empty_i,
                np.concatenate(vals) if vals else empty_f)

    def rows(self, a: int, b: int):
        """Rows ``[a, b)`` as a scipy CSR matrix (a copy)."""
        import scipy.sparse as sp

        ptr, col, val = self.row_ranges([(a, b)])
        return sp.csr_matrix((val, col, ptr), shape=(b - a, self.shape[1]))

    def toarray(self) -> np.ndarray:
        """The whole matrix, dense (small graphs and tests only)."""
        return self.rows(0, self.shape[0]).toarray()

    def __getitem__(self, key) -> np.ndarray:
        """Rows as a dense float32 array, like a dense ``x``: ``x[a:b]`` (step 1) or ``x[rows]`` for
        an integer array, so code that reads rows of dense features also works on sparse ones."""
        if isinstance(key, slice):
            a, b, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("CSRRows supports row slices with step 1 only")
            return self.rows(a, max(a, b)).toarray()
        rows = np.asarray(key, dtype=np.int64).reshape(-1)
        out = self.row_ranges([(int(r), int(r) + 1) for r in rows]) if len(rows) else None
        import scipy.sparse as sp

        if out is None:
            return np.zeros((0, self.shape[1]), dtype=np.float32)
        ptr, col, val = out
        dense = sp.csr_matrix((val, col, ptr), shape=(len(rows), self.shape[1])).toarray()
        return dense[0] if np.ndim(key) == 0 else dense


def write_csr(writer: Writer | str | os.PathLike, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray,
              shape: tuple[int, int]) -> list[str]:
    """Write sparse features as CSR (the ``x_*`` arrays, see the module docstring) into the output
    being published by ``writer`` (or a plain directory, for tests); returns the file names."""
    arrays = {"x_indptr": np.asarray(indptr, dtype=np.int64), "x_indices": np.asarray(indices, dtype=np.int32),
              "x_data": np.asarray(data, dtype=np.float32), "x_shape": np.asarray(shape, dtype=np.int64)}
    if not hasattr(writer, "add_files"):
        return write_arrays(writer, **arrays)
    for name, arr in arrays.items():
        writer.array(name, arr)
    return [array_path(writer.dir, n).name for n in arrays]


def new_csr(writer: Writer, indptr: np.ndarray, num_columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Start sparse features of row pointers ``indptr`` in the output being published by ``writer``:
    writes ``indptr`` and the shape, and returns writable memory-mapped ``(indices int32, data
    float32)`` of ``indptr[-1]`` entries to fill in place (``flush()`` and drop them when done)."""
    indptr = np.asarray(indptr, dtype=np.int64)
    nnz = int(indptr[-1]) if len(indptr) else 0
    writer.array("x_indptr", indptr)
    writer.array("x_shape", np.asarray([len(indptr) - 1, num_columns], dtype=np.int64))
    return writer.new_array("x_indices", (nnz,), np.int32), writer.new_array("x_data", (nnz,), np.float32)


def has_sparse_x(directory: Where) -> bool:
    """Whether an output holds features as CSR (``x_indptr``) rather than a dense ``x``."""
    return array_path(_dir(directory), "x_indptr").exists()


def has_array(directory: Where, name: str) -> bool:
    """Whether an output holds array ``name``."""
    return array_path(_dir(directory), name).exists()


def open_csr(directory: Where, maps: dict | None = None) -> CSRRows:
    """The sparse features (``x_*`` arrays) of an output, memory-mapped (their maps added to ``maps``)."""
    d = _dir(directory)
    arrays = {}
    for name in SPARSE_X:
        arrays[name], mapping = map_array(array_path(d, name))
        if mapping is not None and maps is not None:
            maps[name] = mapping
    shape = tuple(np.load(array_path(d, "x_shape")).tolist())
    return CSRRows(arrays["x_indptr"], arrays["x_indices"], arrays["x_data"], shape)


@dataclass
class ClusterGraph:
    """The partitioned graph, memory-mapped: training reads only the rows of its batches."""

    cluster_ptr: np.ndarray
    node_cluster: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    perm: np.ndarray
    x: np.ndarray
    y: np.ndarray
    split: np.ndarray
    maps: dict[str, Mapping] = field(default_factory=dict, repr=False)
    x_shift: np.ndarray | None = None  # sparse standardized features: normalized = x - x_shift

    @property
    def sparse_x(self) -> bool:
        """Whether ``x`` is a :class:`CSRRows` (features kept sparse) rather than a dense array."""
        return isinstance(self.x, CSRRows)

    def release(self) -> None:
        """Drop the pages of the mapped arrays from this process's resident memory (see the module
        docstring); safe at any time, since arrays read through the maps fault pages back in."""
        release_pages(*self.maps.values())

    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_parts(self) -> int:
        return len(self.cluster_ptr) - 1

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @classmethod
    def open(cls, partition_dir: Where, node_data_dir: Where) -> ClusterGraph:
        """The partition's structure and the node data laid out in its order (outputs or directories)."""
        partition_dir, node_data_dir = _dir(partition_dir), _dir(node_data_dir)
        arrays, maps = {}, {}
        sparse = has_sparse_x(node_data_dir)
        for directory, names in ((partition_dir, ("node_cluster", "indptr", "indices", "perm")),
                                 (node_data_dir, ("y", "split") if sparse else ("x", "y", "split"))):
            for name in names:
                arrays[name], mapping = map_array(array_path(directory, name))
                if mapping is not None:
                    maps[name] = mapping
        shift = None
        if sparse:
            arrays["x"] = open_csr(node_data_dir, maps)
            if has_array(node_data_dir, X_SHIFT):
                shift = np.load(array_path(node_data_dir, X_SHIFT))
        return cls(cluster_ptr=open_array(partition_dir, "cluster_ptr", mmap=False), maps=maps, x_shift=shift,
                   **arrays)
