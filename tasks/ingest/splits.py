"""Labels and the train/val/test split of the node table, given or generated.

Labels are integers (``-1`` or null = unlabeled) or strings (null or empty = unlabeled; the sorted
class names become ``0..C-1``). The split is a string column (``train``/``val``/``test``, empty or
null = none) or the boolean columns ``train_mask``/``val_mask``/``test_mask``. A generated split
is reproducible: it depends only on the labels and :class:`~tasks.config.SplitConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.snapshot import SPLIT_NAMES, SPLIT_NONE, SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL
from tasks.config import SplitConfig
from tasks.errors import InputError
from tasks.ingest.files import first_true
from tasks.ingest.nodes import MASK_COLUMNS

SPLIT_VALUES = ("train", "val", "test")  # codes SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST


@dataclass
class Labels:
    """Integer labels (``-1`` = unlabeled), the class count and the class names of string labels."""

    values: np.ndarray
    num_classes: int
    names: list[str] | None = None
    column: str | None = None

    @property
    def labeled(self) -> int:
        return int((self.values >= 0).sum())

    def counts(self) -> list[int]:
        """Labeled nodes per class, ``num_classes`` long."""
        return np.bincount(self.values[self.values >= 0], minlength=self.num_classes).tolist()


def no_labels(num_nodes: int) -> Labels:
    """Every node unlabeled, no classes."""
    return Labels(np.full(num_nodes, -1, dtype=np.int64), 0)


def label_column_of(table: pa.Table, path: str, configured: str | None) -> str | None:
    """``data.label_column`` (must exist), else ``label`` if present, else None."""
    if configured is None:
        return "label" if "label" in table.column_names else None
    if configured not in table.column_names:
        raise InputError(
            f"{path}: label column {configured!r} (data.label_column) not found; columns found: {table.column_names}"
        )
    return configured


def parse_labels(table: pa.Table, path: str, column: str | None, num_classes: int | None) -> Labels:
    """Labels of the node table's rows, checked against ``data.num_classes`` when it is set."""
    if column is None:
        if num_classes is not None:
            raise InputError(f"{path}: data.num_classes is {num_classes} but the node table has no label column")
        return no_labels(table.num_rows)
    col = table.column(column)
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        labels = _string_labels(col, path, column)
    elif pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type):
        labels = _integer_labels(col, path, column)
    else:
        raise InputError(f"{path}: label column {column!r} has type {col.type}; labels must be integers or strings")
    labels.column = column
    if num_classes is not None:
        _check_num_classes(labels, path, num_classes)
        labels.num_classes = num_classes
    return labels


def _integer_labels(col: pa.ChunkedArray, path: str, column: str) -> Labels:
    if pa.types.is_null(col.type):
        return no_labels(len(col))
    if pa.types.is_floating(col.type):
        col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
        fraction = pc.or_(pc.not_equal(pc.floor(col), col), pc.is_inf(col))
        if pc.any(fraction).as_py():
            row = first_true(fraction)
            raise InputError(f"{path}: row {row + 1}: label {col[row].as_py()} in column {column!r} is not an integer")
    values = pc.fill_null(col, -1).to_numpy().astype(np.int64)
    if (values < -1).any():
        row = int(np.argmax(values < -1))
        raise InputError(
            f"{path}: row {row + 1}: label {values[row]} in column {column!r} is negative (-1 or null = unlabeled)"
        )
    return Labels(values, int(values.max()) + 1 if len(values) else 0)


def _string_labels(col: pa.ChunkedArray, path: str, column: str) -> Labels:
    col = pc.cast(col, pa.large_string())
    _check_one_label_kind(col, path, column)
    present = pc.drop_null(pc.unique(col))
    present = present.filter(pc.not_equal(pc.binary_length(present), 0))
    names = pc.take(present, pc.sort_indices(present))
    codes = pc.fill_null(pc.index_in(col, value_set=names), -1).to_numpy().astype(np.int64)
    return Labels(codes, len(names), names.to_pylist())


def _check_one_label_kind(col: pa.ChunkedArray, path: str, column: str) -> None:
    """String labels that are partly numbers (``0, 1, cat``) are a mistake: all numbers or all names."""
    trimmed = pc.utf8_trim_whitespace(col)
    present = pc.fill_null(pc.greater(pc.binary_length(trimmed), 0), False)
    number = pc.fill_null(pc.match_substring_regex(trimmed, r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"), False)
    n_present = pc.sum(present).as_py() or 0
    n_number = pc.sum(pc.and_(present, number)).as_py() or 0
    if 0 < n_number < n_present:
        odd = pc.and_(present, pc.invert(number)) if 2 * n_number >= n_present else pc.and_(present, number)
        row = first_true(odd)
        kind = "a name" if 2 * n_number >= n_present else "a number"
        raise InputError(
            f"{path}: row {row + 1}: label {col[row].as_py()!r} in column {column!r} is {kind}, but "
            f"{n_number:,} of {n_present:,} labels are numbers; labels must be all integers or all class "
            "names (empty = unlabeled)"
        )


def _check_num_classes(labels: Labels, path: str, num_classes: int) -> None:
    values = labels.values
    distinct = int((np.bincount(values[values >= 0], minlength=1) > 0).sum()) if (values >= 0).any() else 0
    if labels.names is None and (values >= num_classes).any():
        row = int(np.argmax(values >= num_classes))
        raise InputError(
            f"{path}: row {row + 1}: label {values[row]} in column {labels.column!r} is not below "
            f"data.num_classes = {num_classes}"
        )
    if distinct != num_classes:
        raise InputError(
            f"{path}: label column {labels.column!r} has {distinct} classes, config data.num_classes says {num_classes}"
        )


# -- a given split ------------------------------------------------------------------------------


def split_columns_of(table: pa.Table, path: str, configured: str | None) -> list[str]:
    """``[split column]``, or the mask columns present, or ``[]`` when the table gives no split."""
    names = table.column_names
    if configured is not None:
        if configured not in names:
            raise InputError(
                f"{path}: split column {configured!r} (data.split_column) not found; columns found: {names}"
            )
        return [configured]
    if "split" in names:
        return ["split"]
    return [c for c in MASK_COLUMNS if c in names]


def given_split(table: pa.Table, path: str, columns: list[str], labels: Labels) -> np.ndarray:
    """Split codes (int8) from the split column or the mask columns; every split node needs a label."""
    if not columns:
        split = np.zeros(table.num_rows, dtype=np.int8)
    elif columns[0] in MASK_COLUMNS:
        split = _mask_split(table, path, columns)
    else:
        split = _string_split(table.column(columns[0]), path, columns[0])
    unlabeled = (split != SPLIT_NONE) & (labels.values < 0)
    if unlabeled.any():
        row = int(np.argmax(unlabeled))
        where = f"column {labels.column!r}" if labels.column else "the node table has no label column"
        raise InputError(
            f"{path}: row {row + 1}: node is in the {SPLIT_NAMES[int(split[row])]} split but has no label ({where})"
        )
    return split


def _string_split(col: pa.ChunkedArray, path: str, column: str) -> np.ndarray:
    if pa.types.is_null(col.type):
        return np.zeros(len(col), dtype=np.int8)
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise InputError(f"{path}: split column {column!r} has type {col.type}; expected strings train/val/test")
    col = pc.cast(col, pa.large_string())
    index = pc.index_in(col, value_set=pa.array(SPLIT_VALUES, pa.large_string()))
    empty = pc.or_kleene(pc.is_null(col), pc.equal(pc.binary_length(col), 0))
    unknown = pc.and_(pc.is_null(index), pc.invert(empty))
    if pc.any(unknown).as_py():
        row = first_true(unknown)
        raise InputError(
            f"{path}: row {row + 1}: split value {col[row].as_py()!r} in column {column!r} is not one of "
            "train, val, test (or empty for none)"
        )
    return (pc.fill_null(index, -1).to_numpy() + 1).astype(np.int8)


def _mask_split(table: pa.Table, path: str, columns: list[str]) -> np.ndarray:
    split = np.zeros(table.num_rows, dtype=np.int8)
    taken = np.zeros(table.num_rows, dtype=np.int64)
    for name in columns:
        mask = _mask(table.column(name), path, name)
        overlap = mask & (taken > 0)
        if overlap.any():
            row = int(np.argmax(overlap))
            other = MASK_COLUMNS[int(split[row]) - 1]
            raise InputError(f"{path}: row {row + 1}: node is in both {other!r} and {name!r} (masks must not overlap)")
        split[mask] = MASK_COLUMNS.index(name) + 1
        taken += mask
    return split


def _mask(col: pa.ChunkedArray, path: str, name: str) -> np.ndarray:
    if pa.types.is_boolean(col.type):
        return pc.fill_null(col, False).to_numpy().astype(bool)
    if pa.types.is_integer(col.type):
        values = pc.fill_null(col, 0).to_numpy()
        bad = (values != 0) & (values != 1)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(
                f"{path}: row {row + 1}: mask column {name!r} holds {values[row]}, expected 0/1 or booleans"
            )
        return values.astype(bool)
    raise InputError(f"{path}: mask column {name!r} has type {col.type}; expected booleans")


# -- a generated split --------------------------------------------------------------------------


def generate_split(labels: np.ndarray, config: SplitConfig) -> np.ndarray:
    """Split codes for the labeled nodes, drawn with ``np.random.default_rng(config.seed)``.

    ``per_class``: per class, ``train_per_class`` nodes to train, the next ``val_per_class`` to val,
    the rest (at most ``test_per_class`` when set) to test; a small class fills train first.
    ``fraction``: the shuffled labeled nodes, ``round(train_fraction * L)`` to train,
    ``round(val_fraction * L)`` to val, the rest to test.
    """
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(np.flatnonzero(labels >= 0))
    split = np.zeros(len(labels), dtype=np.int8)
    if config.method == "fraction":
        n = len(order)
        n_train = int(round(config.train_fraction * n))
        n_val = min(int(round(config.val_fraction * n)), n - n_train)
        rank = np.arange(n)
        train_end, val_end, test_end = n_train, n_train + n_val, n
    else:
        order = order[np.argsort(labels[order], kind="stable")]
        classes = labels[order]
        rank = np.arange(len(order)) - np.searchsorted(classes, classes, side="left")
        train_end = config.train_per_class
        val_end = train_end + config.val_per_class
        test_end = val_end + config.test_per_class if config.test_per_class is not None else len(order)
    codes = np.select(
        [rank < train_end, rank < val_end, rank < test_end], [SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST], SPLIT_NONE
    )
    split[order] = codes.astype(np.int8)
    return split


def split_sizes(split: np.ndarray) -> dict[str, int]:
    """``{"train": n, "val": n, "test": n}``."""
    counts = np.bincount(split.astype(np.int64), minlength=4)
    return {name: int(counts[code]) for code, name in SPLIT_NAMES.items()}


def extend_split(split: np.ndarray, labels: np.ndarray, num_base: int, config: SplitConfig, salt: str) -> np.ndarray:
    """A generated split grown with the graph: rows ``< num_base`` keep ``split``'s codes, the
    labeled nodes after them are drawn with ``np.random.default_rng(SeedSequence([config.seed,
    salt]))`` (``salt``: the base snapshot's fingerprint, so the draw is reproducible).

    ``per_class``: per class, the new nodes (shuffled) fill what the existing ones leave of the
    ``train_per_class``, then ``val_per_class`` quota, the rest test (up to ``test_per_class``).
    ``fraction``: ``round(train_fraction * L)`` of the ``L`` new labeled nodes to train, the
    same for val, the rest test.

    Caveat: a full ingest of the grown graph draws every node afresh, so its split differs from
    this one in which nodes are train/val/test (the class quotas and fractions are the same).
    """
    out = np.zeros(len(labels), dtype=np.int8)
    out[:num_base] = split[:num_base]
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, int(salt, 16)]))
    order = rng.permutation(num_base + np.flatnonzero(labels[num_base:] >= 0))
    if config.method == "fraction":
        n = len(order)
        n_train = int(round(config.train_fraction * n))
        n_val = min(int(round(config.val_fraction * n)), n - n_train)
        out[order[:n_train]] = SPLIT_TRAIN
        out[order[n_train:n_train + n_val]] = SPLIT_VAL
        out[order[n_train + n_val:]] = SPLIT_TEST
        return out
    for c in np.unique(labels[order]):
        new = order[labels[order] == c]
        old = out[:num_base][labels[:num_base] == c]
        quotas = [
            (SPLIT_TRAIN, config.train_per_class - int((old == SPLIT_TRAIN).sum())),
            (SPLIT_VAL, config.val_per_class - int((old == SPLIT_VAL).sum())),
            (SPLIT_TEST, (config.test_per_class - int((old == SPLIT_TEST).sum()))
             if config.test_per_class is not None else len(new)),
        ]
        start = 0
        for code, room in quotas:
            take = max(0, min(room, len(new) - start))
            out[new[start:start + take]] = code
            start += take
    return out
