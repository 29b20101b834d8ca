"""Node id columns: every reader's ids become ``int64`` or ``large_string`` without nulls.

Integer ids must lie in ``0 .. 2^63-1``; ids read from text are trimmed and, when all of them are
integers, become ``int64``. Every problem is an :class:`~tasks.errors.InputError` naming the file,
the 1-based row and the column.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.errors import InputError
from tasks.ingest.files import first_true, value_at

_INT_PATTERN = r"^[+-]?[0-9]+$"
_DECIMAL_PATTERN = r"^[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?$"


def normalize_ids(
    col: pa.ChunkedArray, path: str, column: str, *, text: bool, strict: bool = False, keep_strings: bool = False
) -> pa.ChunkedArray:
    """Ids as ``int64`` or ``large_string``; InputError (file, row, column) for a missing or bad id.

    ``text``: the values came from a text file and are trimmed; unless ``keep_strings``, strings
    that are all integers become ``int64``. ``strict``: a text column whose values are mostly
    integers must be all integers.
    """
    if col.null_count:
        row = first_true(pc.is_null(col)) + 1
        raise InputError(f"{path}: row {row}: missing node id in column {column!r}")
    kind = col.type
    if pa.types.is_dictionary(kind):
        col = pc.cast(col, kind.value_type)
        kind = col.type
    if pa.types.is_integer(kind):
        if pa.types.is_uint64(kind) and len(col) and pc.max(col).as_py() >= 2**63:
            row = first_true(pc.greater_equal(col, pa.scalar(2**63, pa.uint64())))
            raise InputError(
                f"{path}: row {row + 1}: node id {value_at(col, row)} in column {column!r} does not fit in int64 "
                "(integer node ids must be between 0 and 2^63-1)"
            )
        return _non_negative(pc.cast(col, pa.int64()), path, column)
    if pa.types.is_floating(kind):
        bad = pc.or_(pc.not_equal(pc.floor(col), col), pc.is_inf(col))
        if pc.any(bad).as_py():
            row = first_true(bad)
            raise InputError(
                f"{path}: row {row + 1}: node id {value_at(col, row)} in column {column!r} is not an integer"
            )
        return _non_negative(pc.cast(col, pa.int64()), path, column)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        col = pc.cast(col, pa.large_string())
        return _text_ids(col, path, column, strict, keep_strings) if text else col
    raise InputError(f"{path}: column {column!r} has type {kind}; node ids must be integers or strings")


def _non_negative(col: pa.ChunkedArray, path: str, column: str) -> pa.ChunkedArray:
    """``col`` (int64) if no id is negative, else an InputError naming the first negative id's row."""
    if len(col) and pc.min(col).as_py() < 0:
        row = first_true(pc.less(col, 0))
        raise InputError(
            f"{path}: row {row + 1}: node id {value_at(col, row)} in column {column!r} is negative "
            "(integer node ids must be between 0 and 2^63-1)"
        )
    return col


def _text_ids(col: pa.ChunkedArray, path: str, column: str, strict: bool, keep_strings: bool) -> pa.ChunkedArray:
    col = pc.utf8_trim_whitespace(col)
    empty = pc.equal(pc.binary_length(col), 0)
    if pc.any(empty).as_py():
        raise InputError(f"{path}: row {first_true(empty) + 1}: missing node id in column {column!r}")
    if keep_strings:
        return col
    is_int = pc.match_substring_regex(col, _INT_PATTERN)
    n_int = pc.sum(is_int).as_py() or 0
    if n_int == len(col):
        try:
            return _non_negative(pc.cast(col, pa.int64()), path, column)
        except pa.ArrowInvalid:
            raise _beyond_int64(col, path, column) from None
    decimal = pc.and_(pc.match_substring_regex(col, _DECIMAL_PATTERN), pc.invert(is_int))
    if pc.any(decimal).as_py():
        row = first_true(decimal)
        raise InputError(
            f"{path}: row {row + 1}: node id {value_at(col, row)!r} in column {column!r} is a decimal number; "
            "node ids must be integers or strings"
        )
    if strict and 2 * n_int > len(col):
        row = first_true(pc.invert(is_int))
        raise InputError(
            f"{path}: row {row + 1}: node id {value_at(col, row)!r} in column {column!r} is not an "
            f"integer, but {n_int:,} of {len(col):,} ids in the column are; "
            "node ids must be all integers or all strings"
        )
    return col


def _beyond_int64(col: pa.ChunkedArray, path: str, column: str) -> InputError:
    """The error for integer ids of which one does not fit in int64 (the first such row)."""
    long = pc.greater(pc.utf8_length(pc.utf8_ltrim(col, "+-0")), 18)
    for row in np.flatnonzero(pc.fill_null(long, False).to_numpy(zero_copy_only=False)):
        value = value_at(col, int(row))
        if not -(2**63) <= int(value) < 2**63:
            return InputError(
                f"{path}: row {row + 1}: node id {value} in column {column!r} does not fit in int64 "
                "(integer node ids must be between 0 and 2^63-1; ids that are names need a node table "
                "with a string id column, e.g. Parquet)"
            )
    return InputError(f"{path}: column {column!r}: node ids do not fit in int64")
