"""Edge files: the two endpoint columns of each file the user gives with ``--edges``.

Edge files are Parquet, CSV, TSV, or whitespace-separated text with ``#`` comment lines (SNAP
style); a ``.gz`` suffix means gzip. A CSV/TSV/text file whose first line starts with two numbers
has no header and its columns are ``src``, ``dst`` (then ``column2``, ...); any other first line is
the header, so an edge file with string ids needs one. Endpoints come back as ``int64`` or
``large_string`` columns without nulls (:func:`tasks.ingest.ids.normalize_ids`). Everything is read
into Arrow columns without a Python loop over rows; every problem is an
:class:`~tasks.errors.InputError` naming the file, the data row and the column.

:func:`check_edge_file` runs the reader's first checks (the file opens, the format is readable,
the columns are there) from the first line or the schema only: the command line runs it before it
starts Prefect, so a malformed input is rejected in seconds, and ingest runs the same functions.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tasks.errors import InputError
from tasks.ingest import files
from tasks.ingest.files import (
    check_text,
    csv_error,
    first_data_line,
    open_input,
    parquet_file,
    read_problem,
    serial_error,
    split_line,
)
from tasks.ingest.ids import normalize_ids

log = logging.getLogger(__name__)

PARQUET_BATCH = 1 << 22  # rows per Parquet batch
EDGE_COLUMN_PAIRS = (("src", "dst"), ("source", "target"))

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
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
        """Edge rows read (duplicates and self-loops included)."""
        return len(self.src)

    @property
    def is_int(self) -> bool:
        """Whether the ids are integers (``int64``) rather than strings."""
        return pa.types.is_integer(self.src.type)


def _is_number(field: str) -> bool:
    return bool(_NUMBER.fullmatch(field.strip().strip('"').strip()))


def _has_header(fields: list[str]) -> bool:
    return not (len(fields) >= 2 and _is_number(fields[0]) and _is_number(fields[1]))


def _positional_names(count: int) -> list[str]:
    return ["src", "dst", *[f"column{i}" for i in range(2, count)]]


def _no_edge_rows(path: str) -> InputError:
    return InputError(f"{path}: no edge rows (an edge file needs at least one src,dst row)")


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
    """Read one edge file's endpoint columns.

    Args:
        path: the file (``.gz``: gzip).
        fmt: ``parquet``, ``csv``, ``tsv`` or ``whitespace`` (see :func:`edge_format`).
        src_column, dst_column: the endpoint columns (``data.src_column``/``data.dst_column``);
            ``None``: detected by :func:`choose_edge_columns`.
        as_string: keep text ids as strings (the node table's ids are strings).
        strict: integer ids with a stray non-integer are an InputError (there is no node table
            to check the ids against).
        progress: log the rows read after each block at INFO on this module's logger.

    Returns:
        both columns, ``int64`` or both ``large_string`` (an integer column beside a string one
        is cast to strings), every row of the file (duplicates and self-loops included).

    Raises:
        InputError: unreadable or damaged file, no edge rows, missing columns, a bad id (with
            its row and column).

    Caveat: the whole file is held in memory as Arrow columns (two ids per row); a CSV/TSV file
    whose ids turn out not to be integers is read a second time as strings.
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
        raise _no_edge_rows(path)
    options = {"text": fmt != "parquet", "strict": strict, "keep_strings": as_string}
    src = normalize_ids(edges.src, path, edges.src_name, **options)
    dst = normalize_ids(edges.dst, path, edges.dst_name, **options)
    if src.type != dst.type:  # e.g. integer src, string dst: compare as strings
        src, dst = pc.cast(src, pa.large_string()), pc.cast(dst, pa.large_string())
    return EdgeColumns(path, edges.src_name, edges.dst_name, src, dst)


def check_edge_file(path: str, fmt: str, src_column: str | None = None, dst_column: str | None = None) -> tuple[str, str]:
    """The (src, dst) columns of an edge file from its first line or schema; InputError as the reader gives."""
    try:
        if fmt == "parquet":
            return choose_edge_columns(path, parquet_file(path).schema_arrow.names, src_column, dst_column)
        if fmt in ("csv", "tsv"):
            return _delimited_edge_layout(path, "," if fmt == "csv" else "\t", src_column, dst_column)[3:]
        first = _first_text_fields(path)
        if first is None:
            raise _no_edge_rows(path)
        header = _has_header(first)
        names = first if header else _positional_names(len(first))
        return choose_edge_columns(path, names, src_column, dst_column, header)
    except OSError as e:  # unreadable, or not gzip despite the .gz suffix
        raise InputError(f"{path}: cannot read the edge file: {read_problem(path, e)}") from None


def _log_rows(progress: bool, path: str, rows: int) -> None:
    if progress:
        log.info("%s: %s edge rows read", path, f"{rows:,}")


def _read_parquet_edges(path: str, src_column: str | None, dst_column: str | None, progress: bool) -> EdgeColumns:
    pfile = parquet_file(path)
    src, dst = choose_edge_columns(path, pfile.schema_arrow.names, src_column, dst_column)
    batches, rows = [], 0
    for batch in pfile.iter_batches(batch_size=PARQUET_BATCH, columns=[src, dst]):
        batches.append(batch)
        rows += batch.num_rows
        _log_rows(progress, path, rows)
    schema = batches[0].schema if batches else pfile.schema_arrow.select([src, dst])
    table = pa.Table.from_batches(batches, schema=schema)
    return EdgeColumns(path, src, dst, table.column(src), table.column(dst))


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
        error = serial_error(lambda: read(pa.large_string(), False, False), e)
        raise csv_error(path, error, int(header)) from None


def _delimited_edge_layout(
    path: str, delimiter: str, src_column: str | None, dst_column: str | None
) -> tuple[list[str], list[str], bool, str, str]:
    """From the first line of a CSV/TSV edge file: raw field names, names, whether it is a header, src, dst."""
    first = first_data_line(path)
    if first is None:
        raise _no_edge_rows(path)
    raw = split_line(path, first, delimiter)
    names = [f.strip() for f in raw]
    header = _has_header(names)
    if not header:
        names = raw = _positional_names(len(names))
    src, dst = choose_edge_columns(path, names, src_column, dst_column, header)
    return raw, names, header, src, dst


def _stream_csv(
    path: str,
    delimiter: str,
    column_names: list[str] | None,
    columns: tuple[str, str],
    kind: pa.DataType,
    threads: bool,
    progress: bool,
) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    read = pacsv.ReadOptions(column_names=column_names, block_size=files.BLOCK_SIZE, use_threads=threads)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    convert = pacsv.ConvertOptions(
        include_columns=list(columns),
        column_types={c: kind for c in columns},
        null_values=[""],
        strings_can_be_null=True,
    )
    srcs, dsts, rows = [], [], 0
    with open_input(path) as stream:
        for batch in pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert):
            srcs.append(batch.column(columns[0]))
            dsts.append(batch.column(columns[1]))
            rows += batch.num_rows
            _log_rows(progress, path, rows)
    return pa.chunked_array(srcs, kind), pa.chunked_array(dsts, kind)


def _text_blocks(path: str) -> Iterator[bytes]:
    """The file's bytes in blocks of about ``files.BLOCK_SIZE``, each ending at a line end."""
    with open_input(path) as f:
        carry = b""
        while chunk := f.read(files.BLOCK_SIZE):
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


def _first_text_fields(path: str) -> list[str] | None:
    """The fields of the first data line of a whitespace edge file, cleaned as the reader cleans it."""
    with open_input(path) as f:
        head = f.read(1 << 16)
    check_text(path, head)
    if len(head) == 1 << 16 and b"\n" in head:
        head = head[: head.rfind(b"\n") + 1]  # whole lines only
    block = clean_text_block(head.removeprefix(b"\xef\xbb\xbf"))
    first = block.partition(b"\n")[0]
    return first.decode("utf-8", "replace").split(" ") if first else None


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
        raise _no_edge_rows(path)
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
        raise csv_error(path, serial_error(lambda: parse(kind, False), e), 0, rows_before) from None
