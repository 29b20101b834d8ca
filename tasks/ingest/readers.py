"""Readers for the user's input files: edge lists, the node table and the feature matrix.

Everything is read into Arrow or numpy columns without a Python loop over rows. Every problem is an
:class:`~tasks.errors.InputError` naming the file and, where there is one, the row (the 1-based
data row: header, blank and ``#`` comment lines are not counted) and the column.

Edge files are Parquet, CSV, TSV, or whitespace-separated text with ``#`` comment lines (SNAP
style); a ``.gz`` suffix means gzip. A CSV/TSV/text file whose first line starts with two numbers
has no header and its columns are ``src``, ``dst`` (then ``column2``, ...); any other first line is
the header, so an edge file with string ids needs one. Node ids come back as ``int64`` or
``large_string`` columns without nulls.
"""

from __future__ import annotations

import csv
import functools
import logging
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import scipy.sparse as sp

from tasks.errors import InputError

log = logging.getLogger(__name__)

BLOCK_SIZE = 64 << 20  # bytes of text parsed at a time
PARQUET_BATCH = 1 << 22  # rows per Parquet batch
EDGE_COLUMN_PAIRS = (("src", "dst"), ("source", "target"))
ID_COLUMNS = ("node_id", "id")
MASK_COLUMNS = ("train_mask", "val_mask", "test_mask")

_INT_PATTERN = r"^[+-]?[0-9]+$"
_DECIMAL_PATTERN = r"^[+-]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][+-]?[0-9]+)?$"
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_ROW = re.compile(r"Row #(\d+): ")
_WHITESPACE = bytes.maketrans(b"\t\r\v\f", b"    ")
_COMMENT_LINE = re.compile(rb"\n#[^\n]*")


@dataclass
class EdgeColumns:
    """The two endpoint columns of one edge file (``int64`` or ``large_string``, no nulls)."""

    path: str
    src_name: str
    dst_name: str
    src: pa.ChunkedArray
    dst: pa.ChunkedArray

    @property
    def rows(self) -> int:
        return len(self.src)

    @property
    def is_int(self) -> bool:
        return pa.types.is_integer(self.src.type)


# -- small helpers ------------------------------------------------------------------------------


def is_gzip(path: str) -> bool:
    """Whether the file is read through gzip: its name ends in ``.gz``."""
    return str(path).lower().endswith(".gz")


def _open(path: str) -> pa.NativeFile:
    return pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None)


def read_problem(path: str, exc: OSError) -> str:
    """What went wrong reading a file, for an error message (gzip damage said in words)."""
    text = exc.strerror or str(exc)
    if is_gzip(path) and ("compressed" in text.lower() or "gzip" in text.lower() or "zlib" in text.lower()):
        return f"{text} (expected a complete gzip file: it is truncated, damaged or not gzip)"
    return text


def first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    """Position of the first true value of a boolean column (nulls count as false)."""
    mask = pc.fill_null(mask, False)
    values = mask.to_numpy() if isinstance(mask, pa.ChunkedArray) else mask.to_numpy(zero_copy_only=False)
    return int(np.argmax(values))


def _value(col: pa.ChunkedArray | pa.Array, index: int) -> object:
    return col[index].as_py()


def _is_number(field: str) -> bool:
    return bool(_NUMBER.fullmatch(field.strip().strip('"').strip()))


def _has_header(fields: list[str]) -> bool:
    return not (len(fields) >= 2 and _is_number(fields[0]) and _is_number(fields[1]))


def _positional_names(count: int) -> list[str]:
    return ["src", "dst", *[f"column{i}" for i in range(2, count)]]


def check_text(path: str, head: bytes) -> None:
    """InputError if the first bytes of a text file are binary: a NUL byte or invalid UTF-8."""
    nul = head.find(b"\x00")
    if nul >= 0:
        raise InputError(
            f"{path}: not a text file: byte {nul + 1} is 0x00 (binary data); expected CSV, TSV or "
            "whitespace-separated text (or a .parquet file)"
        )
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the block
            line = head.count(b"\n", 0, e.start) + 1
            raise InputError(
                f"{path}: line {line}: not UTF-8 text (byte {e.start + 1} is 0x{head[e.start]:02x}); "
                "expected UTF-8 CSV, TSV or whitespace-separated text"
            ) from None


def _split_line(path: str, line: str, delimiter: str) -> list[str]:
    """The fields of a header (or first) line."""
    try:
        return next(csv.reader([line], delimiter=delimiter))
    except csv.Error as e:
        raise InputError(f"{path}: line 1: cannot parse the first line: {e}") from None


def _first_data_line(path: str) -> str | None:
    """The first non-blank line of a (possibly gzipped) text file, or None if there is none.

    InputError if the file starts with binary data (see :func:`check_text`)."""
    with _open(path) as f:
        pending = b""
        first = True
        while True:
            chunk = f.read(1 << 16)
            if first:
                check_text(path, chunk)
                first = False
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop() if chunk else b""
            for line in lines:
                text = line.decode("utf-8", "replace").lstrip("\ufeff").strip()
                if text:
                    return text
            if not chunk:
                return None


def _arrow_row(exc: Exception) -> int | None:
    m = _ROW.search(str(exc))
    return int(m.group(1)) if m else None


def _csv_error(path: str, exc: Exception, header_lines: int, rows_before: int = 0) -> InputError:
    """An InputError for an Arrow CSV error, with the data row when Arrow reported a line."""
    message = str(exc).replace("CSV parse error: ", "").replace("In CSV column #", "in column #")
    line = _arrow_row(exc)
    if line is None:
        return InputError(f"{path}: cannot parse: {message}")
    message = _ROW.sub("", message)
    return InputError(f"{path}: row {rows_before + line - header_lines}: cannot parse: {message}")


def _empty(path: str) -> InputError:
    return InputError(f"{path}: no edge rows (an edge file needs at least one src,dst row)")


# -- node ids -----------------------------------------------------------------------------------


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
                f"{path}: row {row + 1}: node id {_value(col, row)} in column {column!r} does not fit in int64 "
                "(integer node ids must be between 0 and 2^63-1)"
            )
        return _non_negative(pc.cast(col, pa.int64()), path, column)
    if pa.types.is_floating(kind):
        bad = pc.or_(pc.not_equal(pc.floor(col), col), pc.is_inf(col))
        if pc.any(bad).as_py():
            row = first_true(bad)
            raise InputError(
                f"{path}: row {row + 1}: node id {_value(col, row)} in column {column!r} is not an integer"
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
            f"{path}: row {row + 1}: node id {_value(col, row)} in column {column!r} is negative "
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
            f"{path}: row {row + 1}: node id {_value(col, row)!r} in column {column!r} is a decimal number; "
            "node ids must be integers or strings"
        )
    if strict and 2 * n_int > len(col):
        row = first_true(pc.invert(is_int))
        raise InputError(
            f"{path}: row {row + 1}: node id {_value(col, row)!r} in column {column!r} is not an "
            f"integer, but {n_int:,} of {len(col):,} ids in the column are; "
            "node ids must be all integers or all strings"
        )
    return col


def _beyond_int64(col: pa.ChunkedArray, path: str, column: str) -> InputError:
    """The error for integer ids of which one does not fit in int64 (the first such row)."""
    long = pc.greater(pc.utf8_length(pc.utf8_ltrim(col, "+-0")), 18)
    for row in np.flatnonzero(pc.fill_null(long, False).to_numpy(zero_copy_only=False)):
        value = _value(col, int(row))
        if not -(2**63) <= int(value) < 2**63:
            return InputError(
                f"{path}: row {row + 1}: node id {value} in column {column!r} does not fit in int64 "
                "(integer node ids must be between 0 and 2^63-1; ids that are names need a node table "
                "with a string id column, e.g. Parquet)"
            )
    return InputError(f"{path}: column {column!r}: node ids do not fit in int64")


# -- edge files ---------------------------------------------------------------------------------


def edge_format(path: str, configured: str) -> str:
    """``configured`` unless ``auto``: then by extension (``.gz`` ignored): parquet, csv, tsv, whitespace."""
    if configured != "auto":
        return configured
    name = str(path).lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    return "whitespace"


def choose_edge_columns(
    path: str, names: list[str], src_column: str | None, dst_column: str | None, header: bool = True
) -> tuple[str, str]:
    """The (src, dst) column names: configured, else src/dst, else source/target, else the first two."""
    if len(names) < 2:
        raise InputError(f"{path}: expected at least 2 columns (src, dst); columns found: {names}")
    auto = next(((a, b) for a, b in EDGE_COLUMN_PAIRS if a in names and b in names), None)
    if auto is None:
        auto = (names[0], names[1])
        if header and not (src_column and dst_column):
            log.warning("%s: first line %s taken as the header; using columns %r, %r", path, names, *auto)
    chosen = (src_column or auto[0], dst_column or auto[1])
    for role, name in zip(("src", "dst"), chosen):
        if name not in names:
            note = "" if header else " (the file has no header: its first line starts with two numbers)"
            raise InputError(
                f"{path}: edge column {name!r} (data.{role}_column) not found; columns found: {names}{note}"
            )
    if chosen[0] == chosen[1]:
        raise InputError(f"{path}: src and dst are the same column {chosen[0]!r}")
    return chosen


def read_edge_file(
    path: str,
    fmt: str,
    src_column: str | None = None,
    dst_column: str | None = None,
    *,
    as_string: bool = False,
    strict: bool = False,
    progress: bool = False,
) -> EdgeColumns:
    """Read one edge file's endpoint columns; ``as_string`` keeps text ids as strings (string node ids).

    ``strict``: integer ids with a stray non-integer are an InputError (no node table to check against).
    """
    try:
        if fmt == "parquet":
            edges = _read_parquet_edges(path, src_column, dst_column, progress)
        elif fmt in ("csv", "tsv"):
            delimiter = "," if fmt == "csv" else "\t"
            edges = _read_delimited_edges(path, delimiter, src_column, dst_column, as_string, progress)
        else:
            edges = _read_whitespace_edges(path, src_column, dst_column, as_string, progress)
    except OSError as e:  # unreadable, or not gzip despite the .gz suffix
        raise InputError(f"{path}: cannot read the edge file: {read_problem(path, e)}") from None
    if edges.rows == 0:
        raise _empty(path)
    options = {"text": fmt != "parquet", "strict": strict, "keep_strings": as_string}
    src = normalize_ids(edges.src, path, edges.src_name, **options)
    dst = normalize_ids(edges.dst, path, edges.dst_name, **options)
    if src.type != dst.type:  # e.g. integer src, string dst: compare as strings
        src, dst = pc.cast(src, pa.large_string()), pc.cast(dst, pa.large_string())
    return EdgeColumns(path, edges.src_name, edges.dst_name, src, dst)


def _log_rows(progress: bool, path: str, rows: int) -> None:
    if progress:
        log.info("%s: %s edge rows read", path, f"{rows:,}")


def _read_parquet_edges(path: str, src_column: str | None, dst_column: str | None, progress: bool) -> EdgeColumns:
    pfile = _parquet_file(path)
    src, dst = choose_edge_columns(path, pfile.schema_arrow.names, src_column, dst_column)
    batches, rows = [], 0
    for batch in pfile.iter_batches(batch_size=PARQUET_BATCH, columns=[src, dst]):
        batches.append(batch)
        rows += batch.num_rows
        _log_rows(progress, path, rows)
    schema = batches[0].schema if batches else pfile.schema_arrow.select([src, dst])
    table = pa.Table.from_batches(batches, schema=schema)
    return EdgeColumns(path, src, dst, table.column(src), table.column(dst))


def _parquet_file(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file: {e}") from None


def _read_delimited_edges(
    path: str, delimiter: str, src_column: str | None, dst_column: str | None, as_string: bool, progress: bool
) -> EdgeColumns:
    raw, names, header, src, dst = _delimited_edge_layout(path, delimiter, src_column, dst_column)
    columns = (raw[names.index(src)], raw[names.index(dst)])
    read = functools.partial(_stream_csv, path, delimiter, None if header else raw, columns)
    try:
        if not as_string:
            try:
                return EdgeColumns(path, src, dst, *read(pa.int64(), True, progress))
            except pa.ArrowInvalid as e:
                if "conversion error" not in str(e):
                    raise
                # an id that is not an integer: read the file again with string ids
        return EdgeColumns(path, src, dst, *read(pa.large_string(), True, progress))
    except pa.ArrowInvalid as e:
        error = _serial_error(lambda: read(pa.large_string(), False, False), e)
        raise _csv_error(path, error, int(header)) from None


def _delimited_edge_layout(
    path: str, delimiter: str, src_column: str | None, dst_column: str | None
) -> tuple[list[str], list[str], bool, str, str]:
    """From the first line of a CSV/TSV edge file: raw field names, names, whether it is a header, src, dst."""
    first = _first_data_line(path)
    if first is None:
        raise _empty(path)
    raw = _split_line(path, first, delimiter)
    names = [f.strip() for f in raw]
    header = _has_header(names)
    if not header:
        names = raw = _positional_names(len(names))
    src, dst = choose_edge_columns(path, names, src_column, dst_column, header)
    return raw, names, header, src, dst


def _serial_error(run: Callable[[], object], error: Exception) -> Exception:
    """The error of ``run()``, a serial re-read that reports the line, else ``error``."""
    try:
        run()
    except pa.ArrowInvalid as serial:
        return serial
    return error


def _stream_csv(
    path: str,
    delimiter: str,
    column_names: list[str] | None,
    columns: tuple[str, str],
    kind: pa.DataType,
    threads: bool,
    progress: bool,
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    read = pacsv.ReadOptions(column_names=column_names, block_size=BLOCK_SIZE, use_threads=threads)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    convert = pacsv.ConvertOptions(
        include_columns=list(columns),
        column_types={c: kind for c in columns},
        null_values=[""],
        strings_can_be_null=True,
    )
    srcs, dsts, rows = [], [], 0
    with _open(path) as stream:
        for batch in pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert):
            srcs.append(batch.column(columns[0]))
            dsts.append(batch.column(columns[1]))
            rows += batch.num_rows
            _log_rows(progress, path, rows)
    return pa.chunked_array(srcs, kind), pa.chunked_array(dsts, kind)


def _text_blocks(path: str) -> Iterator[bytes]:
    """The file's bytes in blocks of about BLOCK_SIZE, each ending at a line end."""
    with _open(path) as f:
        carry = b""
        while chunk := f.read(BLOCK_SIZE):
            buf = carry + chunk
            cut = buf.rfind(b"\n") + 1
            if cut:
                yield buf[:cut]
            carry = buf[cut:]
        if carry:
            yield carry + b"\n"


def clean_text_block(block: bytes) -> bytes:
    """Whitespace runs -> one space, no blank, ``#`` comment or leading/trailing-space lines."""
    x = block.translate(_WHITESPACE)
    while b"  " in x:
        x = x.replace(b"  ", b" ")
    x = x.replace(b"\n ", b"\n").replace(b" \n", b"\n").removeprefix(b" ")
    if b"#" in x:
        x = _COMMENT_LINE.sub(b"", b"\n" + x)[1:]
    while b"\n\n" in x:
        x = x.replace(b"\n\n", b"\n")
    return x.lstrip(b"\n")


def _read_whitespace_edges(
    path: str, src_column: str | None, dst_column: str | None, as_string: bool, progress: bool
) -> EdgeColumns:
    names: list[str] | None = None
    src = dst = ""
    kind = pa.large_string() if as_string else pa.int64()
    srcs: list[pa.Array] = []
    dsts: list[pa.Array] = []
    rows = 0
    for index, block in enumerate(_text_blocks(path)):
        if index == 0:
            check_text(path, block[: 1 << 16])
        block = clean_text_block(block.removeprefix(b"\xef\xbb\xbf") if index == 0 else block)
        if names is None and block:
            first, _, rest = block.partition(b"\n")
            fields = first.decode("utf-8", "replace").split(" ")
            header = _has_header(fields)
            names = fields if header else _positional_names(len(fields))
            src, dst = choose_edge_columns(path, names, src_column, dst_column, header)
            block = rest if header else block
        if not block:
            continue
        table, new_kind = _parse_text_block(path, block, names, (src, dst), kind, rows)
        if new_kind != kind:  # an id that is not an integer: earlier blocks become strings too
            srcs = [pc.cast(c, new_kind) for c in srcs]
            dsts = [pc.cast(c, new_kind) for c in dsts]
            kind = new_kind
        srcs.extend(table.column(src).chunks)
        dsts.extend(table.column(dst).chunks)
        rows += table.num_rows
        _log_rows(progress, path, rows)
    if names is None:
        raise _empty(path)
    return EdgeColumns(path, src, dst, pa.chunked_array(srcs, kind), pa.chunked_array(dsts, kind))


def _parse_text_block(
    path: str, block: bytes, names: list[str], columns: tuple[str, str], kind: pa.DataType, rows_before: int
) -> tuple[pa.Table, pa.DataType]:
    def parse(k: pa.DataType, threads: bool) -> pa.Table:
        return pacsv.read_csv(
            pa.BufferReader(block),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=threads),
            parse_options=pacsv.ParseOptions(delimiter=" ", quote_char=False),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(columns),
                column_types={c: k for c in columns},
                null_values=[""],
                strings_can_be_null=True,
            ),
        )

    try:
        return parse(kind, True), kind
    except pa.ArrowInvalid as e:
        if "conversion error" in str(e) and kind == pa.int64():
            return _parse_text_block(path, block, names, columns, pa.large_string(), rows_before)
        raise _csv_error(path, _serial_error(lambda: parse(kind, False), e), 0, rows_before) from None


# -- the node table -----------------------------------------------------------------------------


def _table_format(path: str) -> str:
    name = str(path).lower().removesuffix(".gz")
    for ext, fmt in ((".parquet", "parquet"), (".pq", "parquet"), (".csv", "csv"), (".tsv", "tsv")):
        if name.endswith(ext):
            return fmt
    raise InputError(f"{path}: a node table must be .parquet, .csv or .tsv (optionally .csv.gz/.tsv.gz)")


def read_node_table(path: str, id_column: str | None, split_column: str | None) -> tuple[pa.Table, bool]:
    """The node table as Arrow and whether it came from text; CSV id and split columns stay strings."""
    fmt = _table_format(path)
    if fmt == "parquet":
        try:
            return pq.ParquetFile(path).read(), False  # ParquetFile: no pyarrow.dataset (pandas) import
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file: {e}") from None
    try:
        return _read_csv_table(path, "," if fmt == "csv" else "\t", id_column, split_column), True
    except OSError as e:  # unreadable, or not gzip despite the .gz suffix
        raise InputError(f"{path}: cannot read the node table: {read_problem(path, e)}") from None


def _read_csv_table(path: str, delimiter: str, id_column: str | None, split_column: str | None) -> pa.Table:
    first = _first_data_line(path)
    if first is None:
        raise InputError(f"{path}: the node table is empty")
    names = [f.strip() for f in _split_line(path, first, delimiter)]
    id_name = id_column if id_column in names else next((c for c in ID_COLUMNS if c in names), None)
    strings = [c for c in (id_name, split_column or "split") if c and c in names]

    def parse(threads: bool) -> pa.Table:
        with _open(path) as stream:
            return pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=threads, block_size=BLOCK_SIZE),
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.large_string() for c in strings}),
            )

    try:
        table = parse(True)
    except pa.ArrowInvalid as e:
        raise _csv_error(path, _serial_error(lambda: parse(False), e), 1) from None
    for name, col in zip(table.column_names, table.columns):
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):  # Arrow: not valid UTF-8
            raise InputError(f"{path}: row {_first_invalid_utf8(col) + 1}: column {name!r} is not valid UTF-8 text")
    return table


def _first_invalid_utf8(col: pa.ChunkedArray) -> int:
    """Row of the first value of a binary column that is not valid UTF-8 (bisection over casts)."""
    col = col.combine_chunks()

    def valid(end: int) -> bool:
        try:
            pc.cast(col.slice(0, end), pa.large_string())
            return True
        except pa.ArrowInvalid:
            return False

    lo, hi = 0, len(col)  # the first `lo` rows are valid, the first `hi` are not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if valid(mid) else (lo, mid)
    return lo


def id_column_of(table: pa.Table, path: str, configured: str | None) -> str:
    """The node id column: ``data.id_column``, else ``node_id``, else ``id``."""
    names = table.column_names
    if configured:
        if configured not in names:
            raise InputError(f"{path}: id column {configured!r} (data.id_column) not found; columns found: {names}")
        return configured
    for name in ID_COLUMNS:
        if name in names:
            return name
    raise InputError(f"{path}: no node id column (looked for node_id, id; set data.id_column); columns found: {names}")


# -- features -----------------------------------------------------------------------------------


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


def file_exists(path: str, what: str) -> str:
    """``path`` if it is a file, else an InputError saying which setting names it."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{path}: {what} is a directory; expected a file")
    if not p.is_file():
        if p.exists():
            raise InputError(f"{path}: {what} is not a regular file (a device, socket or pipe); expected a file")
        raise InputError(f"{path}: {what} not found")
    return str(path)


# -- checks before a run: the first line or the schema only ------------------------------------
# What the readers above check first (the file can be opened, the format is readable, the columns
# are there), without reading the rows: the command line runs these before it starts Prefect, so a
# malformed input is rejected in seconds, and ingest runs them again through the same functions.


def check_edge_file(path: str, fmt: str, src_column: str | None = None, dst_column: str | None = None) -> tuple[str, str]:
    """The (src, dst) columns of an edge file from its first line or schema; InputError as the reader gives."""
    try:
        if fmt == "parquet":
            return choose_edge_columns(path, _parquet_file(path).schema_arrow.names, src_column, dst_column)
        if fmt in ("csv", "tsv"):
            return _delimited_edge_layout(path, "," if fmt == "csv" else "\t", src_column, dst_column)[3:]
        first = _first_text_fields(path)
        if first is None:
            raise _empty(path)
        header = _has_header(first)
        names = first if header else _positional_names(len(first))
        return choose_edge_columns(path, names, src_column, dst_column, header)
    except OSError as e:  # unreadable, or not gzip despite the .gz suffix
        raise InputError(f"{path}: cannot read the edge file: {read_problem(path, e)}") from None


def _first_text_fields(path: str) -> list[str] | None:
    """The fields of the first data line of a whitespace edge file, cleaned as the reader cleans it."""
    with _open(path) as f:
        head = f.read(1 << 16)
    check_text(path, head)
    if len(head) == 1 << 16 and b"\n" in head:
        head = head[: head.rfind(b"\n") + 1]  # whole lines only
    block = clean_text_block(head.removeprefix(b"\xef\xbb\xbf"))
    first = block.partition(b"\n")[0]
    return first.decode("utf-8", "replace").split(" ") if first else None


def node_table_schema(path: str) -> pa.Table:
    """The node table's columns as an empty table (Parquet schema or the CSV/TSV header line)."""
    fmt = _table_format(path)
    if fmt == "parquet":
        return _parquet_file(path).schema_arrow.empty_table()
    try:
        first = _first_data_line(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read the node table: {read_problem(path, e)}") from None
    if first is None:
        raise InputError(f"{path}: the node table is empty")
    names = [f.strip() for f in _split_line(path, first, "," if fmt == "csv" else "\t")]
    return pa.schema([(n, pa.large_string()) for n in names]).empty_table()


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
