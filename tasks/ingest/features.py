"""Node features: columns of the node table, or a separate ``.npy`` (dense) / ``.npz`` (sparse) file.

Features come back as float32, dense (``numpy``) or CSR (``scipy.sparse``); nothing is unpickled.
Every problem is an :class:`~tasks.errors.InputError` naming the file, the row and the column or
feature index. :func:`check_feature_file` reads only a ``.npy`` header, for the checks before a run.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from tasks.errors import InputError
from tasks.ingest.files import first_true


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def feature_columns_auto(table: pa.Table, path: str, excluded: set[str]) -> list[str]:
    """The one list column of numbers, else every remaining numeric column in table order.

    ``excluded`` (id, label, split, mask columns) and pandas index columns are never features.
    """
    rest = [f for f in table.schema if f.name not in excluded and not f.name.startswith("__index_level_")]
    lists = [f.name for f in rest if _is_list(f.type) and _is_numeric(f.type.value_type)]
    if len(lists) > 1:
        raise InputError(f"{path}: several list columns could be the features ({lists}); set data.feature_columns")
    if lists:
        return lists
    return [f.name for f in rest if _is_numeric(f.type)]


def column_features(table: pa.Table, path: str, columns: list[str]) -> np.ndarray:
    """Dense float32 features from one list column or from numeric columns, checked for nulls."""
    names = table.column_names
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputError(
            f"{path}: feature column(s) {missing} (data.feature_columns) not found; columns found: {names}"
        )
    kinds = {c: table.schema.field(c).type for c in columns}
    if len(columns) == 1 and _is_list(kinds[columns[0]]):
        return _list_features(table.column(columns[0]), path, columns[0])
    bad = [c for c in columns if not _is_numeric(kinds[c])]
    if bad:
        raise InputError(f"{path}: feature column {bad[0]!r} has type {kinds[bad[0]]}; features must be numbers")
    x = np.empty((table.num_rows, len(columns)), dtype=np.float32, order="F")
    for j, name in enumerate(columns):
        col = table.column(name)
        if col.null_count:
            raise InputError(
                f"{path}: row {first_true(pc.is_null(col)) + 1}: feature column {name!r} is empty or NaN "
                "(features must be finite numbers)"
            )
        x[:, j] = col.to_numpy()
    return np.ascontiguousarray(x)


def _list_features(col: pa.ChunkedArray, path: str, name: str) -> np.ndarray:
    col = col.combine_chunks()
    if not _is_numeric(col.type.value_type):
        raise InputError(f"{path}: feature column {name!r} has type {col.type}; features must be numbers")
    if col.null_count:
        raise InputError(f"{path}: row {first_true(col.is_null()) + 1}: feature column {name!r} is empty")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    width = int(lengths[0]) if len(lengths) else 0
    if len(lengths) and width == 0:
        raise InputError(f"{path}: row 1: feature column {name!r} holds an empty list; expected one number per feature")
    if len(lengths) and (lengths != width).any():
        row = int(np.argmax(lengths != width))
        raise InputError(
            f"{path}: row {row + 1}: feature column {name!r} has {lengths[row]} values, row 1 has {width}"
        )
    values = col.flatten()
    if values.null_count:
        row = first_true(values.is_null()) // max(width, 1)
        raise InputError(f"{path}: row {row + 1}: feature column {name!r} holds an empty value")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(len(col), width)


def _npy_problem(path: str) -> str | None:
    """Why a ``.npy`` file cannot be read as a numeric array (header checks), or None."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            return "not a .npy file (no NUMPY header)"
        try:
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:  # version 3 (UTF-8 field names) has no public reader
                shape, _, dtype = np.lib.format._read_array_header(f, version)  # noqa: SLF001
        except (ValueError, SyntaxError, EOFError) as e:
            return f"damaged .npy header: {e}"
        if dtype.hasobject:
            return "holds Python objects (dtype object), not numbers; object arrays are never unpickled"
        needed = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = Path(path).stat().st_size
    if size < needed:
        return f"truncated: shape {shape} of {dtype} needs {needed:,} bytes, the file has {size:,}"
    return None


def _mapped_npy(path: str) -> np.ndarray:
    """A ``.npy`` feature file memory-mapped, checked to be a 2-D numeric array (only its header is read)."""
    problem = _npy_problem(path)
    if problem:
        raise InputError(f"{path}: {problem}; expected a 2-D numeric .npy array (nodes x features)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: not a readable .npy array: {e}") from None
    if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{path}: expected a 2-D numeric array (nodes x features), got {arr.dtype} {arr.shape}")
    return arr


def load_feature_file(path: str) -> np.ndarray | sp.csr_matrix:
    """``.npy`` -> dense float32 array; ``.npz`` (``scipy.sparse.save_npz``) -> CSR float32.

    Nothing is unpickled: object arrays are refused."""
    name = str(path).lower()
    if name.endswith(".npy"):
        return np.array(_mapped_npy(path), dtype=np.float32)
    if name.endswith(".npz"):
        if not zipfile.is_zipfile(path):
            raise InputError(f"{path}: not an .npz (zip) archive; expected a scipy sparse matrix saved with scipy.sparse.save_npz")
        try:
            matrix = sp.load_npz(path)
        except (ValueError, OSError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise InputError(f"{path}: not a scipy sparse matrix saved with scipy.sparse.save_npz: {e}") from None
        if matrix.ndim != 2 or not (np.issubdtype(matrix.dtype, np.integer) or np.issubdtype(matrix.dtype, np.floating)):
            raise InputError(f"{path}: expected a 2-D numeric sparse matrix (nodes x features), got {matrix.dtype}")
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        matrix.sum_duplicates()
        matrix.sort_indices()
        return matrix
    raise InputError(f"{path}: a feature file must be .npy (dense) or .npz (scipy sparse)")


def check_feature_file(path: str) -> None:
    """A feature file's kind and, for ``.npy``, its header (2-D, numeric); the values are read at ingest."""
    name = str(path).lower()
    if name.endswith(".npy"):
        _mapped_npy(path)
        return
    if name.endswith(".npz"):
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise InputError(f"{path}: not a scipy sparse matrix saved with scipy.sparse.save_npz: {e}") from None
        return
    raise InputError(f"{path}: a feature file must be .npy (dense) or .npz (scipy sparse)")


def check_finite(x: np.ndarray | sp.csr_matrix, path: str, columns: list[str] | None = None) -> None:
    """InputError naming the first row with a NaN or infinite feature and its column or index."""
    if sp.issparse(x):
        bad = ~np.isfinite(x.data)
        if bad.any():
            k = int(np.argmax(bad))
            row = int(np.searchsorted(x.indptr, k, side="right")) - 1
            raise _not_finite(path, row, int(x.indices[k]), float(x.data[k]), columns)
        return
    step = max(1, (16 << 20) // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):
        bad = ~np.isfinite(x[start : start + step])
        if bad.any():
            row, col = (int(v) for v in np.argwhere(bad)[0])
            raise _not_finite(path, start + row, col, float(x[start + row, col]), columns)


def _not_finite(path: str, row: int, col: int, value: float, columns: list[str] | None) -> InputError:
    where = f"feature column {columns[col]!r}" if columns and len(columns) > 1 else f"feature index {col}"
    if columns and len(columns) == 1:
        where = f"feature column {columns[0]!r} (index {col})"
    return InputError(f"{path}: row {row + 1}: {where} is {value} (features must be finite)")
