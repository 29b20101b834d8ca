"""Benchmark-only prototypes of the proposed ingest changes (``bench_ingest.py --proposed``).

Not used by graphpipe; see benchmarks/RESULTS.md for the proposals. Imports nothing heavy at module
level (no torch), so the side's peak RSS stays comparable.
"""

from __future__ import annotations

# -- ingest ----------------------------------------------------------------------------------------
# Prototypes of the proposed changes to tasks/ingest/snapshot.py, storage/snapshot.py and
# storage/fingerprint.py; ``install_ingest_proposals()`` patches them into the imported modules
# (benchmark process only).


def fingerprint_file_sha256(path) -> str:
    """Merged: storage.fingerprint.fingerprint_file uses SHA-256 now."""
    from storage.fingerprint import fingerprint_file

    return fingerprint_file(path)


def write_snapshot_no_dictionary(directory, tables) -> list[str]:
    """storage.snapshot.write_snapshot, writing edges.parquet without dictionary encoding (node ids
    barely repeat: Arrow builds a dictionary, overflows it and falls back, 3.5x slower than plain)."""
    from pathlib import Path

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.snapshot import EDGES, FEATURES, NODES, features_table, id_dtype

    d = Path(directory)
    dtype = id_dtype(tables.num_nodes)
    pq.write_table(
        pa.table({"src": tables.src.astype(dtype, copy=False), "dst": tables.dst.astype(dtype, copy=False)}),
        d / EDGES,
        use_dictionary=False,
    )
    pq.write_table(
        pa.table({"node_id": tables.node_ids, "label": pa.array(tables.labels.astype(np.int32, copy=False)),
                  "split": pa.array(tables.split.astype(np.int8, copy=False))}),
        d / NODES,
        use_dictionary=["label", "split"],
    )
    files = [EDGES, NODES]
    if tables.features is not None:
        pq.write_table(features_table(tables.features), d / FEATURES)
        files.append(FEATURES)
    return files


def install_ingest_proposals() -> None:
    import numpy as np

    import tasks.ingest.snapshot as ingest

    original_sorted_unique, original_lookup = ingest._sorted_unique, ingest._lookup

    def _sorted_unique(parts):
        """Presence-table path without the ``p - lo`` temporaries when ``lo == 0``."""
        if not isinstance(parts[0], np.ndarray):
            return original_sorted_unique(parts)
        values = [p for p in parts if len(p)]
        if not values:
            return np.empty(0, np.int64)
        lo = min(int(p.min()) for p in values)
        span = max(int(p.max()) for p in values) - lo + 1
        if lo != 0 or not ingest._small_range(span, sum(len(p) for p in values)):
            return original_sorted_unique(parts)
        present = np.zeros(span, dtype=bool)
        for p in values:
            present[p] = True
        return np.flatnonzero(present)

    def _lookup(keys, values):
        """Identity fast path: ``keys`` is exactly ``0..n-1`` in order (ids already contiguous)."""
        if (isinstance(keys, np.ndarray) and isinstance(values, np.ndarray) and len(keys) and len(values)
                and keys[0] == 0 and keys[-1] == len(keys) - 1
                and np.array_equal(keys, np.arange(len(keys), dtype=keys.dtype))):
            lo, hi = int(values.min()), int(values.max())
            if lo >= 0 and hi < len(keys):
                return values.astype(np.int64, copy=False)
        return original_lookup(keys, values)

    ingest._sorted_unique = _sorted_unique
    ingest._lookup = _lookup
    ingest.fingerprint_file = fingerprint_file_sha256
    ingest.write_snapshot = write_snapshot_no_dictionary
