"""The node table: Parquet, CSV or TSV (optionally gzipped), its id column and its schema.

The table is read whole (it is node-sized); CSV id and split columns stay strings so that
:mod:`tasks.ingest.ids` and :mod:`tasks.ingest.splits` can check them. :func:`node_table_schema`
reads only the schema or the header line, for the checks before a run.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.errors import InputError
from tasks.ingest import files
from tasks.ingest.files import csv_error, first_data_line, open_input, parquet_file, read_problem, serial_error, split_line

ID_COLUMNS = ("node_id", "id")
MASK_COLUMNS = ("train_mask", "val_mask", "test_mask")


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


def node_table_schema(path: str) -> pa.Table:
    """The node table's columns as an empty table (Parquet schema or the CSV/TSV header line)."""
    fmt = _table_format(path)
    if fmt == "parquet":
        return parquet_file(path).schema_arrow.empty_table()
    try:
        first = first_data_line(path)
    except OSError as e:
        raise InputError(f"{path}: cannot read the node table: {read_problem(path, e)}") from None
    if first is None:
        raise InputError(f"{path}: the node table is empty")
    names = [f.strip() for f in split_line(path, first, "," if fmt == "csv" else "\t")]
    return pa.schema([(n, pa.large_string()) for n in names]).empty_table()


def _read_csv_table(path: str, delimiter: str, id_column: str | None, split_column: str | None) -> pa.Table:
    first = first_data_line(path)
    if first is None:
        raise InputError(f"{path}: the node table is empty")
    names = [f.strip() for f in split_line(path, first, delimiter)]
    id_name = id_column if id_column in names else next((c for c in ID_COLUMNS if c in names), None)
    strings = [c for c in (id_name, split_column or "split") if c and c in names]

    def parse(threads: bool) -> pa.Table:
        with open_input(path) as stream:
            return pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=threads, block_size=files.BLOCK_SIZE),
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(column_types={c: pa.large_string() for c in strings}),
            )

    try:
        table = parse(True)
    except pa.ArrowInvalid as e:
        raise csv_error(path, serial_error(lambda: parse(False), e), 1) from None
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
