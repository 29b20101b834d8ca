"""Ingest: the user's edge files, node table and feature file -> one canonical graph snapshot.

Nodes get contiguous ids (the node table's row order, or the sorted unique ids of the edge files
when there is no node table); edges become undirected, each once as ``src < dst``, sorted, without
self-loops or duplicates. Labels, the split (given, or generated from the ``split`` settings) and the
features are validated before anything is written, so bad input never publishes a snapshot and
never moves ``CURRENT.json``. The snapshot directory is keyed by a fingerprint of the input files'
content and the ``data`` and ``split`` settings: ingesting the same input twice is a cache hit.
See :mod:`tasks.ingest.edges`, :mod:`tasks.ingest.nodes` and :mod:`tasks.ingest.features` for the accepted file formats and :mod:`storage.snapshot` for the output.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from storage.fingerprint import fingerprint_file, fingerprint_value
from storage.snapshot import Features, GraphTables, id_dtype, write_snapshot
from storage.store import FORMAT_VERSION, SnapshotRef, Store, output_at
from tasks.config import DataConfig, SplitConfig
from tasks.errors import InputError
from tasks.ingest.edges import check_edge_file, edge_format, read_edge_file
from tasks.ingest.features import check_feature_file, check_finite, column_features, feature_columns_auto, load_feature_file
from tasks.ingest import incremental
from tasks.ingest.files import expand_edge_entries, file_exists, first_true
from tasks.ingest.ids import normalize_ids
from tasks.ingest.nodes import MASK_COLUMNS, id_column_of, node_table_schema, read_node_table
from tasks.ingest.splits import (
    Labels,
    extend_split,
    generate_split,
    given_split,
    label_column_of,
    no_labels,
    parse_labels,
    split_columns_of,
    split_sizes,
)

log = logging.getLogger(__name__)
PROGRESS = logging.getLogger("graphpipe.progress")

INGEST_VERSION = 1  # bump when the snapshot made from the same input changes
LOOKUP_TABLE_SLACK = 4  # int ids spanning up to 4x (ids + lookups) + 64M values: mapped by a lookup table

Ids = np.ndarray | pa.ChunkedArray  # int64 ids as numpy, string ids as Arrow


@dataclass(frozen=True)
class EdgeSource:
    """One edge file's place in the concatenated edge rows: for counts and error messages."""

    path: str
    src_name: str
    dst_name: str
    rows: int


@dataclass
class NodeTable:
    """What the node table contributes, row i = contiguous node id i."""

    path: str
    ids: pa.Array
    labels: Labels
    split: np.ndarray
    features: Features | None
    feature_source: str


# -- the public API -----------------------------------------------------------------------------


def ingest_graph(data: DataConfig, split: SplitConfig, store: Store) -> SnapshotRef:
    """Build (or reuse, on a fingerprint match) the snapshot of the input ``data`` describes,
    publish it as the ``snapshot`` output, make it the graph's current one, and return it.

    Args:
        data: the ``data`` section: the input files, their columns and the graph's name.
        split: the ``split`` section: how a split is generated when the input has none.
        store: the store receiving the snapshot.

    Raises InputError, naming the file, row and column, for any problem with the input; nothing is
    published then and the current snapshot stays as it was. A damaged or incomplete snapshot of
    the same fingerprint is logged and rebuilt. The rows read per block are logged at INFO on
    ``graphpipe.progress``.
    """
    inputs = input_files(data)
    fingerprint = snapshot_fingerprint(data, split, inputs)
    out = store.output(data.name, "snapshot", fingerprint)
    ref = SnapshotRef(path=out.location, name=data.name, fingerprint=fingerprint)
    if out.reusable("snapshot"):
        log.info("cache hit: snapshot %s of graph %r", fingerprint, data.name)
        store.set_current(ref)
        return replace(ref, reused=True)
    start = time.perf_counter()
    settings = incremental.settings_of(data, split, INGEST_VERSION)
    base, tables, counts, info = _build(data, split, store, inputs, settings)
    params = {"data": data.model_dump(mode="json"), "split": split.model_dump(mode="json")}
    with store.publish(out, params=params, inputs=inputs) as w:
        if base is None:
            write_snapshot(w, tables)
        else:
            write_snapshot(w, tables, base=base.output)
        w.counts.update(counts)
        w.extra.update({"label_names": tables.label_names, "ingest_settings": settings, **info})
    store.set_current(ref)
    log.info(
        "ingested graph %r (%s): %s nodes, %s edges in %.1f s -> %s",
        data.name, info["ingest_mode"], f"{counts['num_nodes']:,}", f"{counts['undirected_edges']:,}",
        time.perf_counter() - start, out.location,
    )
    return ref


def _build(data: DataConfig, split: SplitConfig, store: Store, inputs: dict[str, Any], settings: dict[str, Any]
           ) -> tuple[incremental.Base | None, GraphTables, dict[str, Any], dict[str, Any]]:
    """``(base or None, tables, counts, manifest ingest fields)``: incremental when the current
    snapshot can be grown (:func:`tasks.ingest.incremental.plan`), else a full ingest, logging why."""
    base, reason = incremental.plan(data, split, store, inputs, settings)
    if base is not None:
        built = build_incremental(data, split, base)
        if not isinstance(built, str):
            tables, counts = built
            info = {"ingest_mode": "incremental", "ingest_reason": reason, "base_snapshot": base.ref.fingerprint,
                    "appended_nodes": counts["num_nodes"] - base.counts["num_nodes"],
                    "appended_edges": counts["undirected_edges"] - base.counts["undirected_edges"]}
            log.info("incremental ingest of graph %r on snapshot %s: %s; %d new nodes, %d new edges",
                     data.name, base.ref.fingerprint, reason, info["appended_nodes"], info["appended_edges"])
            return base, tables, counts, info
        reason = built
    if reason != "the graph has no current snapshot":
        log.warning("full ingest of graph %r: %s", data.name, reason)
    else:
        log.info("full ingest of graph %r: %s", data.name, reason)
    tables, counts, _ = build_graph(data, split)
    info = {"ingest_mode": "full", "ingest_reason": reason, "base_snapshot": None,
            "appended_nodes": 0, "appended_edges": 0}
    return None, tables, counts, info


def ingest_counts(ref: SnapshotRef) -> dict[str, Any]:
    """The ``counts`` section of a snapshot's manifest (rows read, edges and nodes kept, split sizes...)."""
    return output_at(ref.path).manifest()["counts"]


def input_files(data: DataConfig) -> dict[str, Any]:
    """Every input file with its content fingerprint; InputError for a missing file or a bad combination
    (:func:`check_inputs` first)."""
    check_inputs(data)

    def entry(path: str, what: str) -> dict[str, str]:
        try:
            return {"path": path, "fingerprint": fingerprint_file(file_exists(path, what))}
        except OSError as e:  # an I/O error
            raise _unreadable(path, what, e) from None

    return {
        "edges": [entry(p, "edge file (data.edges)") for p in edge_paths(data)],
        "nodes": entry(data.nodes, "node table (data.nodes)") if data.nodes else None,
        "features": entry(data.features, "feature file (data.features)") if data.features else None,
    }


def edge_paths(data: DataConfig) -> list[str]:
    """The edge files ``data.edges`` names now: its globs and directories expanded, sorted
    (:func:`tasks.ingest.files.expand_edge_entries`); InputError for an entry matching nothing."""
    return expand_edge_entries(data.edges)


def check_inputs(data: DataConfig) -> None:
    """What can be checked without reading the rows: settings that fit together, every file there and
    readable, each edge file's format and src/dst columns, the node table's id, label, split and
    feature columns, the feature file's kind and shape. Reads first lines and schemas only (about a
    millisecond a file): the command line runs it before starting Prefect, ingest runs it again.
    """
    if not data.edges:
        raise InputError("data.edges: at least one edge file is required")
    if data.nodes is None:
        needs_table = ["id_column", "label_column", "split_column", "feature_columns", "num_classes"]
        for key in needs_table:
            if getattr(data, key) is not None:
                raise InputError(f"data.{key} is set but there is no node table (data.nodes)")
    if data.feature_columns and data.features:
        raise InputError("set data.feature_columns or data.features, not both")
    for path in edge_paths(data):
        check_edge_file(readable_file(path, "edge file (data.edges)"), edge_format(path, data.edge_format),
                        data.src_column, data.dst_column)
    if data.nodes:
        table = node_table_schema(readable_file(data.nodes, "node table (data.nodes)"))
        id_column_of(table, data.nodes, data.id_column)
        label_column_of(table, data.nodes, data.label_column)
        split_columns_of(table, data.nodes, data.split_column)
        missing = [c for c in data.feature_columns or [] if c not in table.column_names]
        if missing:
            raise InputError(
                f"{data.nodes}: feature column(s) {missing} (data.feature_columns) not found; columns found: {table.column_names}"
            )
    if data.features:
        check_feature_file(readable_file(data.features, "feature file (data.features)"))


def readable_file(path: str, what: str) -> str:
    """``path`` if it is a file this process may read, else an InputError naming the setting."""
    try:
        with open(file_exists(path, what), "rb"):
            pass
    except OSError as e:  # no permission to read it
        raise _unreadable(path, what, e) from None
    return path


def _unreadable(path: str, what: str, e: OSError) -> InputError:
    return InputError(f"{path}: cannot read the {what}: {e.strerror or e}")


def snapshot_fingerprint(data: DataConfig, split: SplitConfig, inputs: dict[str, Any]) -> str:
    """Fingerprint of the input files' content, the ``data`` (less ``name``) and ``split`` settings and the format."""
    settings = data.model_dump(mode="json")
    settings.pop("name")
    contents = {
        "edges": [e["fingerprint"] for e in inputs["edges"]],
        "nodes": inputs["nodes"] and inputs["nodes"]["fingerprint"],
        "features": inputs["features"] and inputs["features"]["fingerprint"],
    }
    return fingerprint_value(
        "snapshot", INGEST_VERSION, FORMAT_VERSION, contents, settings, split.model_dump(mode="json")
    )


def build_graph(data: DataConfig, split_config: SplitConfig) -> tuple[GraphTables, dict[str, Any], list[str] | None]:
    """Read and validate the input: ``(tables, manifest counts, label names)``; writes nothing."""
    nodes = read_nodes(data) if data.nodes else None
    sources, src_ids, dst_ids, _ = _read_edge_files(data, edge_paths(data), nodes)
    node_ids, src, dst = map_edges(src_ids, dst_ids, sources, nodes, data.unknown_nodes)
    del src_ids, dst_ids
    part = _node_part(data, nodes, node_ids)
    split, split_source = _final_split(split_config, part.labels, part.split)
    rows = len(src)
    src, dst, self_loops, duplicates = canonical_edges(src, dst, part.num_nodes)
    if len(src) == 0:
        names = ", ".join(f.path for f in sources)
        raise InputError(
            f"{names}: all {rows:,} edge rows are self-loops (src = dst in every row); "
            "expected at least one edge between two different nodes"
        )
    counts = {
        "edge_rows_per_file": [{"file": f.path, "rows": f.rows} for f in sources],
        "edge_rows_total": rows,
        "self_loops_dropped": self_loops,
        "duplicates_dropped": duplicates,
        "undirected_edges": len(src),
        **_node_counts(part, split, split_source, isolated_nodes(src, dst, part.num_nodes)),
    }
    tables = GraphTables(src, dst, _output_ids(node_ids), part.labels.values, split, part.features, part.labels.names)
    return tables, counts, part.labels.names


@dataclass
class NodePart:
    """The node data of a graph being built: row i = contiguous node id i."""

    node_ids: pa.Array
    labels: Labels
    split: np.ndarray  # the node table's split (0 for nodes only the edges name)
    features: Features | None
    feature_source: str
    table_rows: int

    @property
    def num_nodes(self) -> int:
        return len(self.node_ids)


def _read_edge_files(data: DataConfig, paths: list[str], nodes: NodeTable | None
                     ) -> tuple[list[EdgeSource], Ids, Ids, bool]:
    """``(sources, src ids, dst ids, as_string)`` of the concatenated rows of edge files ``paths``."""
    progress = PROGRESS.isEnabledFor(logging.INFO)  # the readers log rows read per block
    string_ids = nodes is not None and not pa.types.is_integer(nodes.ids.type)
    files = [
        read_edge_file(
            path, edge_format(path, data.edge_format), data.src_column, data.dst_column,
            as_string=string_ids, strict=nodes is None, progress=progress,
        )
        for path in paths
    ]
    sources = [EdgeSource(f.path, f.src_name, f.dst_name, f.rows) for f in files]
    if nodes is None:
        _check_same_id_kind(files)
    as_string = string_ids or not all(f.is_int for f in files)
    src_ids, dst_ids = _concat([f.src for f in files], as_string), _concat([f.dst for f in files], as_string)
    return sources, src_ids, dst_ids, as_string


def _node_part(data: DataConfig, nodes: NodeTable | None, node_ids: pa.Array) -> NodePart:
    """Labels, the given split and features of ``node_ids`` (the table's rows, then edge-only nodes)."""
    num_nodes = len(node_ids)
    table_rows = len(nodes.ids) if nodes else 0
    added = num_nodes - table_rows if nodes else 0
    labels = _pad_labels(nodes.labels, added) if nodes else no_labels(num_nodes)
    split = np.concatenate([nodes.split, np.zeros(added, np.int8)]) if nodes else np.zeros(num_nodes, np.int8)
    features, feature_source = (nodes.features, nodes.feature_source) if nodes else _file_features(data, num_nodes)
    features = _pad_rows(features, added) if features is not None else None
    return NodePart(node_ids, labels, split, features, feature_source, table_rows)


def _node_counts(part: NodePart, split: np.ndarray, split_source: str, isolated: int) -> dict[str, Any]:
    """The node half of a snapshot's manifest counts."""
    features, labels, num_nodes = part.features, part.labels, part.num_nodes
    return {
        "num_nodes": num_nodes,
        "node_table_rows": part.table_rows,
        "nodes_added_from_edges": num_nodes - part.table_rows if part.table_rows else 0,
        "isolated_nodes": isolated,
        "id_type": "string" if pa.types.is_large_string(part.node_ids.type) else "int",
        "num_features": 0 if features is None else int(features.shape[1]),
        "feature_storage": "none" if features is None else ("sparse" if sp.issparse(features) else "dense"),
        "feature_source": part.feature_source,
        "num_classes": labels.num_classes,
        "labeled_nodes": labels.labeled,
        "label_counts": labels.counts(),
        "split_sizes": split_sizes(split),
        "split_source": split_source,
    }


# -- incremental ingest (tasks/ingest/incremental.py decides when) -------------------------------


def build_incremental(data: DataConfig, split_config: SplitConfig, base: incremental.Base
                      ) -> tuple[GraphTables, dict[str, Any]] | str:
    """Grow ``base`` by its new edge files: ``(tables, counts)`` with ``tables``' edges the appended
    ones only, or the reason a full ingest is needed instead (a string).

    Reads only the new edge files, the node table (or feature file) and the base snapshot. The node
    order is the one a full ingest gives (the table's rows, then edge-only nodes sorted; without a
    table the sorted ids), which must start with the base's: else the reason. Labels and features
    of existing nodes must be unchanged; a given split too, while a generated one is kept for them
    and drawn for the new nodes (:func:`tasks.ingest.splits.extend_split`).
    """
    nodes = read_nodes(data) if data.nodes else None
    sources, src_ids, dst_ids, as_string = _read_edge_files(data, base.new_files, nodes) if base.new_files \
        else ([], None, None, base.counts["id_type"] == "string")
    if as_string != (base.counts["id_type"] == "string"):
        return "the new edge files' node ids are of another kind (integer / string) than the snapshot's"
    base_ids = base.node_ids()
    mapped = _map_with_base(data, nodes, base, base_ids, sources, src_ids, dst_ids, as_string)
    del src_ids, dst_ids
    node_ids, src, dst = mapped
    if incremental.prefix_differs(base_ids, node_ids):
        return "the node table's existing rows changed or new nodes would reorder existing ones"
    part = _node_part(data, nodes, node_ids)
    problem = incremental.existing_rows_problem(base, part.labels.values, part.features)
    if problem:
        return problem
    split = _grown_split(split_config, part, base)
    if isinstance(split, str):
        return split
    return _append_edges(base, part, split, sources, src, dst)


def _map_with_base(data: DataConfig, nodes: NodeTable | None, base: incremental.Base, base_ids: pa.Array,
                   sources: list[EdgeSource], src_ids: Ids | None, dst_ids: Ids | None, as_string: bool
                   ) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """:func:`map_edges` of the new rows plus the base's edge-only nodes (as loops after them, so
    that the node order is the full ingest's); returns the new rows' mapping only."""
    known = base.counts["node_table_rows"] if nodes is not None else 0
    extra = base_ids.slice(known)
    extra = pa.chunked_array([extra.cast(pa.large_string())]) if as_string else extra.to_numpy(zero_copy_only=False)
    rows = sum(f.rows for f in sources)
    if src_ids is None:
        src_ids = dst_ids = extra
    else:
        src_ids, dst_ids = (_join(ids, extra) for ids in (src_ids, dst_ids))
    listed = [*sources, EdgeSource(f"{base.ref.path} (the current snapshot)", "node_id", "node_id", len(extra))]
    node_ids, src, dst = map_edges(src_ids, dst_ids, listed, nodes, data.unknown_nodes)
    return node_ids, src[:rows], dst[:rows]


def _join(ids: Ids, extra: Ids) -> Ids:
    if isinstance(ids, np.ndarray):
        return np.concatenate([ids, extra.astype(np.int64, copy=False)])
    return pa.chunked_array([*ids.chunks, *extra.chunks], pa.large_string())


def _grown_split(config: SplitConfig, part: NodePart, base: incremental.Base) -> np.ndarray | str:
    """The grown graph's split: the node table's (existing rows unchanged) or the generated one
    extended; a string: why a full ingest is needed."""
    n = base.counts["num_nodes"]
    _, old = base.nodes()
    source = base.counts["split_source"]
    given = bool((part.split != 0).any()) and not config.force
    if given:
        if source != "given":
            return "the node table now has a split and the current snapshot's was not given"
        if not np.array_equal(part.split[:n], old):
            return "the node table's split of existing nodes changed"
        return part.split
    if source == "given":
        return "the node table no longer has a split"
    if part.labels.labeled == 0:
        return np.zeros(part.num_nodes, np.int8)
    return extend_split(old, part.labels.values, n, config, base.ref.fingerprint)


def _append_edges(base: incremental.Base, part: NodePart, split: np.ndarray, sources: list[EdgeSource],
                  src: np.ndarray, dst: np.ndarray) -> tuple[GraphTables, dict[str, Any]]:
    """The tables (edges: those not in ``base``) and counts of the grown snapshot."""
    n = part.num_nodes
    rows = len(src)
    src, dst, self_loops, duplicates = canonical_edges(src, dst, n)
    parts = base.edge_parts()
    src, dst, known = incremental.appended_edges(parts, src, dst, n)
    isolated = isolated_nodes(*zip(*parts, (src, dst)), n)
    del parts
    old = base.counts
    per_file = old["edge_rows_per_file"] + [{"file": f.path, "rows": f.rows} for f in sources]
    split_source = old["split_source"] if old["split_source"] != "none" or not part.labels.labeled \
        else f"generated:{base.manifest['params']['split']['method']}"
    counts = {
        "edge_rows_per_file": per_file,
        "edge_rows_total": old["edge_rows_total"] + rows,
        "self_loops_dropped": old["self_loops_dropped"] + self_loops,
        "duplicates_dropped": old["duplicates_dropped"] + duplicates + known,
        "undirected_edges": old["undirected_edges"] + len(src),
        **_node_counts(part, split, split_source, isolated),
        "appended_duplicates_dropped": known,
    }
    tables = GraphTables(src, dst, _output_ids(part.node_ids), part.labels.values, split, part.features,
                         part.labels.names)
    return tables, counts


def _check_same_id_kind(files: list) -> None:
    """Without a node table, every edge file's ids must be integers, or every file's strings."""
    ints = [f for f in files if f.is_int]
    strings = [f for f in files if not f.is_int]
    if not (ints and strings):
        return
    f = strings[0]
    found = []  # (row, column, value) of the first non-integer id of each column
    for name, col in ((f.src_name, f.src), (f.dst_name, f.dst)):
        text = pc.invert(pc.match_substring_regex(col, r"^[+-]?[0-9]+$"))
        if pc.any(text).as_py():
            row = first_true(text)
            found.append((row, name, col[row].as_py()))
    row, column, value = min(found, key=lambda t: t[0]) if found else (0, f.src_name, f.src[0].as_py())
    raise InputError(
        f"{f.path}: row {row + 1}: node id {value!r} in column {column!r} is a string, but the ids in "
        f"{ints[0].path} are integers; node ids must be all integers or all strings (with a node table of "
        "string ids, integer-looking edge ids compare as strings)"
    )


# -- the node table -----------------------------------------------------------------------------


def read_nodes(data: DataConfig) -> NodeTable:
    """Read the node table: ids (no duplicates), labels, the given split and the features."""
    path = data.nodes
    table, from_text = read_node_table(path, data.id_column, data.split_column)
    if table.num_rows == 0:
        raise InputError(f"{path}: the node table has no rows")
    id_column = id_column_of(table, path, data.id_column)
    ids = normalize_ids(table.column(id_column), path, id_column, text=from_text, strict=True).combine_chunks()
    check_unique_ids(ids, path, id_column)
    label_column = label_column_of(table, path, data.label_column)
    labels = parse_labels(table, path, label_column, data.num_classes)
    split_columns = split_columns_of(table, path, data.split_column)
    split = given_split(table, path, split_columns, labels)
    excluded = {id_column, label_column, *split_columns, *MASK_COLUMNS, "label", "split"}
    features, source = _table_features(table, data, excluded)
    return NodeTable(path, ids, labels, split, features, source)


def check_unique_ids(ids: pa.Array, path: str, column: str) -> None:
    """InputError naming an id that occurs twice and both of its rows."""
    if len(ids) < 2 or _all_distinct(ids):
        return
    order = pc.array_sort_indices(ids)  # stable: rows of equal ids stay in file order
    ranked = pc.take(ids, order)
    same = pc.equal(ranked.slice(1), ranked.slice(0, len(ranked) - 1)).to_numpy(zero_copy_only=False)
    order = order.to_numpy()
    later = np.flatnonzero(same) + 1
    k = later[np.argmin(order[later])]  # the duplicate whose second row comes first
    first, second = int(order[k - 1]), int(order[k])
    raise InputError(
        f"{path}: node id {ids[second].as_py()!r} in column {column!r} occurs twice, in rows {first + 1} "
        f"and {second + 1} ({int(same.sum()):,} duplicate rows in all)"
    )


def _all_distinct(ids: pa.Array) -> bool:
    if pa.types.is_integer(ids.type):
        ordered = np.sort(ids.to_numpy())
        return not (ordered[1:] == ordered[:-1]).any()
    return pc.count_distinct(ids).as_py() == len(ids)


def _table_features(table: pa.Table, data: DataConfig, excluded: set[str]) -> tuple[Features | None, str]:
    path = data.nodes
    if data.feature_columns:
        columns = data.feature_columns
    elif data.features:  # an explicit feature file wins over detected feature columns
        return _feature_file(data.features, table.num_rows, f"the node table {path} has"), "file"
    elif data.feature_columns is not None:  # []: no features
        columns = []
    else:
        columns = feature_columns_auto(table, path, excluded)
    if not columns:
        return None, "none"
    x = column_features(table, path, columns)
    check_finite(x, path, columns)
    return x, "columns"


def _file_features(data: DataConfig, num_nodes: int) -> tuple[Features | None, str]:
    if not data.features:
        return None, "none"
    return _feature_file(data.features, num_nodes, "the graph (no node table: sorted unique edge ids) has"), "file"


def _feature_file(path: str, rows: int, expected: str) -> Features:
    x = load_feature_file(path)
    if x.shape[0] != rows:
        raise InputError(f"{path}: the feature file has {x.shape[0]:,} rows, but {expected} {rows:,} nodes")
    check_finite(x, path)
    return x


def _pad_rows(x: Features, added: int) -> Features:
    """``x`` with ``added`` zero rows appended (nodes that only the edge files name)."""
    if not added:
        return x
    if sp.issparse(x):
        indptr = np.concatenate([x.indptr, np.full(added, x.indptr[-1], dtype=x.indptr.dtype)])
        return sp.csr_matrix((x.data, x.indices, indptr), shape=(x.shape[0] + added, x.shape[1]))
    return np.concatenate([x, np.zeros((added, x.shape[1]), dtype=x.dtype)])


def _pad_labels(labels: Labels, added: int) -> Labels:
    values = np.concatenate([labels.values, np.full(added, -1, dtype=np.int64)])
    return Labels(values, labels.num_classes, labels.names, labels.column)


def _final_split(config: SplitConfig, labels: Labels, split: np.ndarray) -> tuple[np.ndarray, str]:
    given = bool((split != 0).any())
    if given and not config.force:
        return split, "given"
    if labels.labeled == 0:
        return np.zeros_like(split), "none"
    return generate_split(labels.values, config), f"generated:{config.method}"


# -- edges --------------------------------------------------------------------------------------


def map_edges(
    src_ids: Ids, dst_ids: Ids, files: list[EdgeSource], nodes: NodeTable | None, unknown: str
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """``(node ids, src, dst)``: every endpoint of the concatenated edge rows as a contiguous id (int64).

    ``src_ids``/``dst_ids`` are int64 numpy or string Arrow ids; string edge ids are compared with
    integer node ids as strings. Without a node table the nodes are the sorted distinct ids. An id
    missing from the node table is an InputError (``unknown="error"``, naming the first file, row
    and column) or a new node appended after the table's rows, in sorted order (``"add"``).
    """
    as_string = not isinstance(src_ids, np.ndarray)
    if nodes is None:
        keys = _sorted_unique([src_ids, dst_ids])
        return _as_arrow(keys), _lookup(keys, src_ids), _lookup(keys, dst_ids)
    keys = pc.cast(nodes.ids, pa.large_string()) if as_string else nodes.ids.to_numpy()
    src, dst = _lookup(keys, src_ids), _lookup(keys, dst_ids)
    bad_src, bad_dst = src < 0, dst < 0
    if not (bad_src.any() or bad_dst.any()):
        return nodes.ids, src, dst
    if unknown == "error":
        raise _unknown_id_error(files, nodes.path, src_ids, dst_ids, bad_src, bad_dst)
    if as_string and pa.types.is_integer(nodes.ids.type):
        raise InputError(
            f"{nodes.path}: the node ids are integers, but the edge files name ids that are not; "
            "data.unknown_nodes=add cannot add them"
        )
    new_ids = _sorted_unique([_take(src_ids, bad_src), _take(dst_ids, bad_dst)])
    src[bad_src] = len(keys) + _lookup(new_ids, _take(src_ids, bad_src))
    dst[bad_dst] = len(keys) + _lookup(new_ids, _take(dst_ids, bad_dst))
    node_ids = pa.concat_arrays([nodes.ids, _as_arrow(new_ids).cast(nodes.ids.type)])
    return node_ids, src, dst


def _concat(columns: list[pa.ChunkedArray], as_string: bool) -> Ids:
    if as_string:
        chunks = [chunk for col in columns for chunk in pc.cast(col, pa.large_string()).chunks]
        return pa.chunked_array(chunks, pa.large_string())
    return np.concatenate([chunk.to_numpy() for col in columns for chunk in col.chunks])


def _take(ids: Ids, mask: np.ndarray) -> Ids:
    return ids[mask] if isinstance(ids, np.ndarray) else ids.filter(pa.array(mask))


def _as_arrow(ids: Ids) -> pa.Array:
    return pa.array(ids, pa.int64()) if isinstance(ids, np.ndarray) else ids.combine_chunks()


def _sorted_unique(parts: list[Ids]) -> Ids:
    """The sorted distinct ids of all ``parts`` (sort + neighbour mask; a presence table for a small int range)."""
    if not isinstance(parts[0], np.ndarray):
        unique = pc.unique(pa.chunked_array([c for p in parts for c in p.chunks], pa.large_string()))
        return pa.chunked_array([pc.take(unique, pc.sort_indices(unique))])
    values = [p for p in parts if len(p)]
    if not values:
        return np.empty(0, np.int64)
    lo = min(int(p.min()) for p in values)
    span = max(int(p.max()) for p in values) - lo + 1
    total = sum(len(p) for p in values)
    if _small_range(span, total):
        present = np.zeros(span, dtype=bool)
        for p in values:
            present[p - lo if lo else p] = True  # no temporary when ids start at 0
        return np.flatnonzero(present) + lo
    ordered = np.sort(np.concatenate(values))
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _lookup(keys: Ids, values: Ids) -> np.ndarray:
    """Position of each value in ``keys`` (int64, -1 = absent): a lookup table or a hash join."""
    if not isinstance(keys, np.ndarray):
        value_set = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        found = pc.index_in(values, value_set=value_set)
        return pc.fill_null(found, -1).to_numpy().astype(np.int64)
    if len(keys) == 0 or len(values) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    lo, hi = int(keys.min()), int(keys.max())
    if lo == 0 and hi == len(keys) - 1 and np.array_equal(keys, np.arange(len(keys), dtype=keys.dtype)):
        # ids already 0..N-1 in table order (generated graphs, most exports): each id is its position
        found = values.astype(np.int64, copy=False)
        outside = (values < 0) | (values > hi)
        return np.where(outside, -1, found) if outside.any() else found
    if not _small_range(hi - lo + 1, len(keys) + len(values)):
        found = pc.index_in(pa.array(values), value_set=pa.array(keys))
        return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    table = np.full(hi - lo + 1, -1, dtype=id_dtype(len(keys)))
    table[keys - lo] = np.arange(len(keys), dtype=table.dtype)
    outside = (values < lo) | (values > hi)
    if outside.any():
        return np.where(outside, -1, table[np.where(outside, 0, values - lo)]).astype(np.int64)
    return table[values - lo].astype(np.int64)


def _small_range(span: int, count: int) -> bool:
    """Whether ids spanning ``span`` values are mapped with a table (O(1) per id) rather than a hash join."""
    return span <= LOOKUP_TABLE_SLACK * count + (1 << 26)


def _unknown_id_error(
    files: list[EdgeSource], nodes_path: str, src_ids: Ids, dst_ids: Ids, bad_src: np.ndarray, bad_dst: np.ndarray
) -> InputError:
    first = int(np.argmax(bad_src | bad_dst))
    offsets = np.cumsum([0] + [f.rows for f in files])
    k = int(np.searchsorted(offsets, first, side="right")) - 1
    column, ids = (files[k].src_name, src_ids) if bad_src[first] else (files[k].dst_name, dst_ids)
    value = ids[first] if isinstance(ids, np.ndarray) else ids[first].as_py()
    total = int(bad_src.sum() + bad_dst.sum())
    distinct = len(_sorted_unique([_take(src_ids, bad_src), _take(dst_ids, bad_dst)]))
    shown = repr(value) if isinstance(value, str) else str(value)
    return InputError(
        f"{files[k].path}: row {first - offsets[k] + 1}: node id {shown} in column {column} is not in the "
        f"node table {nodes_path} ({total:,} edge endpoints, {distinct:,} distinct ids, are unknown; "
        "data.unknown_nodes=add would add them as nodes)"
    )


def canonical_edges(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(src, dst, self_loops, duplicates)``: each undirected edge once as ``src < dst``, sorted.

    Duplicates include reverse duplicates (``b,a`` after ``a,b``). Sort-based: key ``min * N + max``.
    """
    loops = src == dst
    self_loops = int(loops.sum())
    key = np.minimum(src, dst, dtype=np.int64)
    key *= num_nodes
    key += np.maximum(src, dst, dtype=np.int64)
    if self_loops:
        key = key[~loops]
    key.sort()
    if len(key):
        keep = np.empty(len(key), dtype=bool)
        keep[0] = True
        np.not_equal(key[1:], key[:-1], out=keep[1:])
        key = key[keep]
    lo, hi = np.divmod(key, max(num_nodes, 1))
    dtype = id_dtype(num_nodes)
    return lo.astype(dtype), hi.astype(dtype), self_loops, len(loops) - self_loops - len(key)


def isolated_nodes(src: np.ndarray | tuple[np.ndarray, ...], dst: np.ndarray | tuple[np.ndarray, ...],
                   num_nodes: int) -> int:
    """Nodes that no edge touches; ``src``/``dst`` may be tuples of arrays (a snapshot's edge files)."""
    touched = np.zeros(num_nodes, dtype=bool)
    for s, d in zip(*((x,) if isinstance(x, np.ndarray) else x for x in (src, dst))):
        touched[s] = True
        touched[d] = True
    return int(num_nodes - touched.sum())


# -- output -------------------------------------------------------------------------------------


def _output_ids(ids: pa.Array) -> pa.Array:
    """String ids as ``string`` when they fit (``large_string`` otherwise), integer ids as ``int64``."""
    if pa.types.is_large_string(ids.type) and ids.nbytes < 2**31 - 1:
        return ids.cast(pa.string())
    return ids

