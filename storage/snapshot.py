"""The graph snapshot's on-disk format (Parquet), written by ingest and read by later stages.

A snapshot directory holds:

- ``edges.parquet``: ``src``, ``dst`` contiguous node ids of each undirected edge once, with
  ``src < dst``, sorted, no self-loops or duplicates (int32 below 2**31 nodes, else int64).
  An incremental ingest adds fragments ``edges-00001.parquet``, ``edges-00002.parquet``...: each
  sorted and canonical in itself, together (the base file, then the fragments in order) holding
  each edge once; :func:`read_edges` merges them into the one sorted order.
- ``nodes.parquet``: one row per node in contiguous-id order: ``node_id`` (the user's id, integer
  or string), ``label`` (int32, -1 = unlabeled), ``split`` (int8: 0 none, 1 train, 2 val, 3 test).
- ``features.parquet`` (absent for a featureless graph): dense as one ``x`` column of
  ``fixed_size_list<float32>[d]``; sparse as ``indices`` (``list<int32>``) and ``values``
  (``list<float32>``) per row, whose list offsets are the CSR ``indptr``.
- ``manifest.json``.

Ingest writes it through :func:`write_snapshot` into a :class:`storage.outputs.Writer`; the
readers take the snapshot's :class:`storage.outputs.Output` (or, for older callers, its directory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

SPLIT_NONE, SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2, 3
SPLIT_NAMES = {SPLIT_TRAIN: "train", SPLIT_VAL: "val", SPLIT_TEST: "test"}

EDGES, NODES, FEATURES = "edges.parquet", "nodes.parquet", "features.parquet"
_FRAGMENT = "edges-{:05d}.parquet"  # edges appended by an incremental ingest
_FRAGMENT_PATTERN = "edges-[0-9][0-9][0-9][0-9][0-9].parquet"

if TYPE_CHECKING:
    from storage.outputs import Output, Writer

Features = np.ndarray | sp.csr_matrix
Where = Union["Output", str, os.PathLike]  # a snapshot: its Output, or its directory


def _dir(where: Where) -> Path:
    """The local directory holding the snapshot's files."""
    return where.local_dir() if hasattr(where, "local_dir") else Path(where)


@dataclass
class GraphTables:
    """A snapshot's content in memory."""

    src: np.ndarray  # canonical undirected edges, src < dst, sorted and unique
    dst: np.ndarray
    node_ids: pa.Array  # the user's ids; position = contiguous id
    labels: np.ndarray  # int, -1 = unlabeled
    split: np.ndarray  # int8 codes
    features: Features | None
    label_names: list[str] | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)


def id_dtype(num_nodes: int) -> np.dtype:
    return np.dtype(np.int32) if num_nodes < 2**31 - 1 else np.dtype(np.int64)


def edge_files(directory: Where) -> list[str]:
    """The snapshot's edge files in order: the base file, then the appended fragments."""
    d = _dir(directory)
    return [EDGES, *sorted(p.name for p in d.glob(_FRAGMENT_PATTERN))]


def write_snapshot(writer: Writer | str | os.PathLike, tables: GraphTables, base: Where | None = None) -> list[str]:
    """Write the tables into the output being published by ``writer`` (the files are recorded
    for its manifest) or into a plain directory (tests); returns the file names written.

    Args:
        writer: the output being published, or a directory.
        tables: the snapshot's content; with ``base``, ``tables.src``/``tables.dst`` are only the
            edges appended to the base snapshot's (none of them among the base's edges).
        base: the snapshot this one grows (an incremental ingest): its edge files are hard-linked
            (copied across file systems; on a remote store from this machine's verified cache)
            and ``tables``' edges become one new fragment after them (none when there are none).
            The nodes and features are written whole from ``tables``.
    """
    d = writer.dir if hasattr(writer, "add_files") else Path(writer)
    dtype = id_dtype(tables.num_nodes)
    files = _link_edge_files(base, d) if base is not None else []
    if base is None or len(tables.src):
        name = _FRAGMENT.format(len(files)) if files else EDGES
        pq.write_table(  # dictionary encoding only costs time on (nearly) unique integer ids
            pa.table({"src": tables.src.astype(dtype, copy=False), "dst": tables.dst.astype(dtype, copy=False)}),
            d / name,
            use_dictionary=False,
        )
        files.append(name)
    pq.write_table(
        pa.table(
            {
                "node_id": tables.node_ids,
                "label": pa.array(tables.labels.astype(np.int32, copy=False)),
                "split": pa.array(tables.split.astype(np.int8, copy=False)),
            }
        ),
        d / NODES,
    )
    files.append(NODES)
    if tables.features is not None:
        pq.write_table(features_table(tables.features), d / FEATURES)
        files.append(FEATURES)
    if hasattr(writer, "add_files"):
        writer.add_files(files)
    return files


def _link_edge_files(base: Where, target: Path) -> list[str]:
    """Hard-link (else copy) the base snapshot's edge files into ``target``; their names."""
    import shutil

    source = _dir(base)
    names = edge_files(source)
    for name in names:
        try:
            os.link(source / name, target / name)
        except OSError:  # another file system, or links not supported
            shutil.copyfile(source / name, target / name)
    return names


def features_table(x: Features) -> pa.Table:
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
        x.sort_indices()
        offsets = pa.array(x.indptr.astype(np.int32 if x.nnz < 2**31 else np.int64))
        list_type = pa.list_ if x.nnz < 2**31 else pa.large_list
        indices = _list_array(list_type, offsets, pa.array(x.indices.astype(np.int32)))
        values = _list_array(list_type, offsets, pa.array(x.data.astype(np.float32)))
        schema = pa.schema(
            [pa.field("indices", indices.type), pa.field("values", values.type)],
            metadata={b"num_features": str(x.shape[1]).encode()},
        )
        return pa.table([indices, values], schema=schema)
    x = np.ascontiguousarray(x, dtype=np.float32)
    flat = pa.array(x.reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    schema = pa.schema([pa.field("x", column.type)], metadata={b"num_features": str(x.shape[1]).encode()})
    return pa.table([column], schema=schema)


def _list_array(list_type, offsets: pa.Array, values: pa.Array) -> pa.Array:
    if list_type is pa.list_:
        return pa.ListArray.from_arrays(offsets, values)
    return pa.LargeListArray.from_arrays(offsets, values)


def read_edges(directory: Where) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` of the snapshot's canonical undirected edges: each edge once with
    ``src < dst``, sorted by ``(src, dst)``; a snapshot grown by incremental ingest has its edge
    files merged into that order (each file is sorted: a merge of sorted runs), so readers see
    the same arrays as from a full ingest of the same input."""
    parts = read_edge_parts(directory)
    if len(parts) == 1:
        return parts[0]
    src = np.concatenate([p[0] for p in parts])
    dst = np.concatenate([p[1] for p in parts])
    if not len(src):
        return src, dst
    n = int(dst.max()) + 1  # dst > src in every row
    key = src.astype(np.int64) * n
    key += dst
    key.sort(kind="stable")  # timsort: merges the files' sorted runs
    src, dst = np.divmod(key, n)
    dtype = parts[0][0].dtype if all(p[0].dtype == parts[0][0].dtype for p in parts) else np.dtype(np.int64)
    return src.astype(dtype), dst.astype(dtype)


def read_edge_parts(directory: Where) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(src, dst)`` of each of the snapshot's edge files (:func:`edge_files`), each sorted."""
    d = _dir(directory)
    parts = []
    for name in edge_files(d):
        t = pq.read_table(d / name)
        parts.append((t.column("src").combine_chunks().to_numpy(), t.column("dst").combine_chunks().to_numpy()))
    return parts


def read_nodes(directory: Where) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int64, split int8)`` in contiguous-id order."""
    t = pq.read_table(_dir(directory) / NODES, columns=["label", "split"])
    labels = t.column("label").combine_chunks().to_numpy().astype(np.int64)
    split = t.column("split").combine_chunks().to_numpy().astype(np.int8)
    return labels, split


def read_node_ids(directory: Where) -> pa.Array:
    """The user's node ids, position = contiguous id."""
    return pq.read_table(_dir(directory) / NODES, columns=["node_id"]).column("node_id").combine_chunks()


def has_features(directory: Where) -> bool:
    """Whether the snapshot has node features."""
    return (_dir(directory) / FEATURES).exists()


def read_features(directory: Where) -> Features | None:
    """Dense ``float32`` array or scipy CSR matrix, or ``None`` for a featureless graph."""
    path = _dir(directory) / FEATURES
    if not path.exists():
        return None
    return _features_from_table(pq.read_table(path))


def read_feature_rows(directory: Where, rows: np.ndarray) -> Features | None:
    """Rows ``rows`` of the features (in that order), streaming the file in record batches so that
    memory holds one batch, not the whole matrix; ``None`` for a featureless graph."""
    path = _dir(directory) / FEATURES
    if not path.exists():
        return None
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    wanted = rows[order]
    f = pq.ParquetFile(path)
    parts, start = [], 0
    for batch in f.iter_batches(batch_size=1 << 16):
        lo, hi = np.searchsorted(wanted, [start, start + batch.num_rows])
        if hi > lo:
            parts.append(pa.Table.from_batches([batch.take(pa.array(wanted[lo:hi] - start))]))
        start += batch.num_rows
    table = pa.concat_tables(parts) if parts else f.schema_arrow.empty_table()
    table = table.replace_schema_metadata(f.schema_arrow.metadata)
    x = _features_from_table(table)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return x[inverse]


def _features_from_table(t: pa.Table) -> Features:
    num_features = int(t.schema.metadata[b"num_features"])
    if "x" in t.column_names:
        col = t.column("x").combine_chunks()
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), num_features)
    indices = t.column("indices").combine_chunks()
    values = t.column("values").combine_chunks()
    indptr = indices.offsets.to_numpy().astype(np.int64)
    return sp.csr_matrix(
        (
            values.values.to_numpy().astype(np.float32, copy=False),
            indices.values.to_numpy().astype(np.int32, copy=False),
            indptr,
        ),
        shape=(len(indices), num_features),
    )
