"""Opening the user's input files and turning Arrow's parse errors into one-line input errors.

Shared by the edge, node-table and feature readers (:mod:`tasks.ingest.edges`,
:mod:`tasks.ingest.nodes`, :mod:`tasks.ingest.features`): gzip by suffix, the binary/UTF-8 check
of a text file's first bytes, its first line, the row numbers in Arrow's CSV errors (1-based data
rows: header, blank and ``#`` comment lines are not counted), and the input file checks every
reader starts with.
"""

from __future__ import annotations

import csv
import glob
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.errors import InputError

#: Bytes of text parsed at a time by the CSV/TSV/whitespace readers (read when a reader starts,
#: so a test can make it small).
BLOCK_SIZE = 64 << 20

_ROW_MESSAGE = re.compile(r"Row #(\d+): ")

#: The file name endings a directory named in ``data.edges`` is scanned for (``.gz`` of each too).
EDGE_SUFFIXES = (".csv", ".tsv", ".txt", ".edges", ".el", ".parquet", ".pq")
_GLOB_CHARS = re.compile(r"[*?\[]")


def is_edge_file_name(name: str) -> bool:
    """Whether a file name found in a ``data.edges`` directory is an edge file: a known suffix
    (:data:`EDGE_SUFFIXES`, optionally ``.gz``), not hidden (``.name``: a file being written)."""
    lower = name.lower().removesuffix(".gz")
    return not name.startswith(".") and lower.endswith(EDGE_SUFFIXES)


def expand_edge_entries(entries: list[str]) -> list[str]:
    """The edge files ``data.edges`` names, expanded at run time (a nightly run picks up new files).

    Each entry is a file (kept as it is, so a missing one is reported by the reader's checks), a
    directory (its edge files, :func:`is_edge_file_name`, not recursive) or a glob pattern
    (``*``, ``?``, ``[...]``, ``**`` recursive; a matched directory is expanded likewise). Each
    entry's files are sorted by path; a file named twice is kept once, at its first place.

    Raises:
        InputError: an entry (pattern or directory) that matches no edge file, naming it.
    """
    files: list[str] = []
    for entry in entries:
        found = _expand_entry(str(entry))
        if not found:
            if os.path.isdir(entry):
                raise InputError(
                    f"{entry}: the directory in data.edges holds no edge files "
                    f"(expected names ending in {', '.join(EDGE_SUFFIXES)}, optionally .gz)"
                )
            raise InputError(f"{entry}: the pattern in data.edges matches no file")
        files.extend(found)
    return list(dict.fromkeys(files))


def _expand_entry(entry: str) -> list[str]:
    if os.path.isdir(entry):
        return sorted(os.path.join(entry, n) for n in os.listdir(entry)
                      if is_edge_file_name(n) and os.path.isfile(os.path.join(entry, n)))
    if not _GLOB_CHARS.search(entry) or os.path.exists(entry):
        return [entry]  # a plain file name (a missing one is reported by the file checks)
    found: list[str] = []
    for match in sorted(glob.glob(entry, recursive=True)):
        found.extend(_expand_entry(match) if os.path.isdir(match) else [match])
    return sorted(found)


def is_gzip(path: str) -> bool:
    """Whether the file is read through gzip: its name ends in ``.gz``."""
    return str(path).lower().endswith(".gz")


def open_input(path: str) -> pa.NativeFile:
    """A binary input stream of ``path``, decompressed when :func:`is_gzip`; OSError if unreadable."""
    return pa.input_stream(str(path), compression="gzip" if is_gzip(path) else None)


def read_problem(path: str, exc: OSError) -> str:
    """What went wrong reading a file, for an error message (gzip damage said in words)."""
    text = exc.strerror or str(exc)
    if is_gzip(path) and ("compressed" in text.lower() or "gzip" in text.lower() or "zlib" in text.lower()):
        return f"{text} (expected a complete gzip file: it is truncated, damaged or not gzip)"
    return text


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


def parquet_file(path: str) -> pq.ParquetFile:
    """``path`` opened as Parquet (only the footer is read); InputError if it is not readable Parquet."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file: {e}") from None


def first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    """Position of the first true value of a boolean column (nulls count as false)."""
    mask = pc.fill_null(mask, False)
    values = mask.to_numpy() if isinstance(mask, pa.ChunkedArray) else mask.to_numpy(zero_copy_only=False)
    return int(np.argmax(values))


def value_at(col: pa.ChunkedArray | pa.Array, index: int) -> object:
    """The Python value at ``index`` of an Arrow column, for an error message."""
    return col[index].as_py()


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


def split_line(path: str, line: str, delimiter: str) -> list[str]:
    """The fields of a header (or first) line."""
    try:
        return next(csv.reader([line], delimiter=delimiter))
    except csv.Error as e:
        raise InputError(f"{path}: line 1: cannot parse the first line: {e}") from None


def first_data_line(path: str) -> str | None:
    """The first non-blank line of a (possibly gzipped) text file, or None if there is none.

    InputError if the file starts with binary data (see :func:`check_text`)."""
    with open_input(path) as f:
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
    """The line number in an Arrow CSV error message (``Row #N``), or None."""
    m = _ROW_MESSAGE.search(str(exc))
    return int(m.group(1)) if m else None


def csv_error(path: str, exc: Exception, header_lines: int, rows_before: int = 0) -> InputError:
    """An InputError for an Arrow CSV error, with the data row when Arrow reported a line.

    ``header_lines``: lines before the first data row (0 or 1); ``rows_before``: data rows of the
    same file parsed before this block (the whitespace reader parses block by block). Arrow reports
    lines only when it parses serially: see :func:`serial_error`.
    """
    message = str(exc).replace("CSV parse error: ", "").replace("In CSV column #", "in column #")
    line = _arrow_row(exc)
    if line is None:
        return InputError(f"{path}: cannot parse: {message}")
    message = _ROW_MESSAGE.sub("", message)
    return InputError(f"{path}: row {rows_before + line - header_lines}: cannot parse: {message}")


def serial_error(run: Callable[[], object], error: Exception) -> Exception:
    """The error of ``run()``, a serial re-read that reports the line, else ``error``.

    Arrow's multi-threaded CSV reader does not say which row failed; the readers parse with threads
    and, on an error, parse again serially through ``run`` to name the row.
    """
    try:
        run()
    except pa.ArrowInvalid as serial:
        return serial
    return error
