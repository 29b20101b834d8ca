"""Full-graph evaluation: layer-wise inference over blocks of clusters with all neighbours.

As in the Cluster-GCN paper and PyG's example, layer ``l`` is computed for every node before layer
``l+1`` starts, each block of consecutive clusters reading its rows' neighbours from the previous
layer's output wherever they are, so no edge is dropped.

Memory does not grow with the graph beyond a few numbers per node: each block's adjacency is built
when the block is computed, an intermediate layer's output (N x hidden) goes to a disk-backed
scratch buffer when a scratch directory is given, and the graph's and the buffer's pages are
released after every block (see :mod:`storage.arrays`). The last layer is handed out block by
block (:func:`iter_full_graph`), so callers keep only what they need (predictions, confidences).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from storage.arrays import ClusterGraph, CSRRows, Mapping, release_pages, scratch_array
from storage.checkpoints import Checkpoints
from storage.evaluation import read_metrics, write_evaluation
from storage.fingerprint import fingerprint_value
from storage.snapshot import SPLIT_TEST, read_node_ids
from storage.store import EvaluationRef, NodeDataRef, SnapshotRef, Store, output_at
from tasks.train.batching import RowBlock, block_bounds, gcn_inverse_sqrt_degrees, row_block, sparse_csr, split_masks
from tasks.train.model import GNN, load_trained, resolve_device

if TYPE_CHECKING:
    from tasks.train.result import TrainResult

log = logging.getLogger(__name__)
PROGRESS = logging.getLogger("graphpipe.progress")

BLOCK_NODES = 20_000


@dataclass
class OutputBlock:
    """Rows ``[start, stop)`` of the last layer: ``logits`` and ``hidden`` (the last layer's input,
    the learned node embedding). ``hidden`` may be a view of a scratch buffer: copy what you keep."""

    start: int
    stop: int
    logits: np.ndarray
    hidden: np.ndarray


WINDOW_BYTES = 32 << 20


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 tensor over ``a`` without a copy when possible. Arrays over read-only maps make
    torch warn that writing would be undefined; nothing here writes to them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def windowed_product(block: RowBlock, src: np.ndarray, src_map: Mapping | None,
                     window_bytes: int | None = None) -> torch.Tensor:
    """``A_block @ src`` (rows ``[start, stop)`` of the adjacency times every row of ``src``).

    ``src`` (N x d, usually memory-mapped) is read one window of ``window_bytes`` of rows at a
    time: the block's entries are grouped by the window of their column (a stable radix sort),
    each group is one sparse product with that window's rows, and the window's pages are released
    after use. Only the rows the block refers to are read, and at most one window stays resident.
    """
    n = block.stop - block.start
    d = src.shape[1]
    out = torch.zeros((n, d), dtype=torch.float32)
    if len(block.col) == 0:
        return out
    rows_per_window = max(1, (window_bytes or WINDOW_BYTES) // max(src.strides[0], 1))
    window = block.col // rows_per_window
    row = np.repeat(np.arange(n, dtype=np.int64), np.diff(block.crow))
    first, last = int(window.min()), int(window.max())
    if first != last:
        order = np.argsort((window - first).astype(np.uint16 if last - first < 65536 else np.int64), kind="stable")
        window, row, col, values = window[order], row[order], block.col[order], block.values[order]
    else:
        col, values = block.col, block.values
    cuts = np.searchsorted(window, np.arange(first, last + 2))
    for w, lo, hi in zip(range(first, last + 1), cuts[:-1].tolist(), cuts[1:].tolist()):
        if hi == lo:
            continue
        base = w * rows_per_window
        rows_w = src[base : base + rows_per_window]
        crow = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(row[lo:hi], minlength=n), out=crow[1:])
        adj = sparse_csr(crow, col[lo:hi] - base, values[lo:hi], (n, len(rows_w)))
        out += torch.sparse.mm(adj, _tensor(rows_w))
        if src_map is not None:
            src_map.release(base * src.strides[0], (base + len(rows_w)) * src.strides[0])
    return out


def _linear_all(lin: torch.nn.Module, h: np.ndarray, h_map: Mapping | None, device: torch.device,
                scratch_dir: str | os.PathLike | None, out_dim: int) -> tuple[np.ndarray, Mapping | None]:
    """``lin(h)`` for every row, streamed in row chunks into a scratch array."""
    z, z_map = scratch_array((h.shape[0], out_dim), np.float32, scratch_dir)
    step = max(1, WINDOW_BYTES // max(h.strides[0], 1))
    for a in range(0, h.shape[0], step):
        x = _tensor(h[a : a + step]).to(device)
        z[a : a + step] = lin(x).cpu().numpy()
        release_pages(h_map, z_map)
    return z, z_map


def _project_all(model: GNN, lin: torch.nn.Module, x: CSRRows, device: torch.device,
                 scratch_dir: str | os.PathLike | None, out_dim: int, maps: dict) -> tuple[np.ndarray, Mapping | None]:
    """``model.project(lin, x)`` (the first layer's linear map on sparse features, a sparse-dense
    product per chunk of rows) for every row, into a scratch array."""
    z, z_map = scratch_array((x.shape[0], out_dim), np.float32, scratch_dir)
    step = max(1, (WINDOW_BYTES // 8) // max(1, x.nnz // max(x.shape[0], 1)))
    for a in range(0, x.shape[0], step):
        b = min(a + step, x.shape[0])
        z[a:b] = model.project(lin, _sparse_rows(x, a, b).to(device)).cpu().numpy()
        release_pages(*(maps.get(k) for k in ("x_indptr", "x_indices", "x_data")), z_map)
    return z, z_map


def _sparse_rows(x: CSRRows, a: int, b: int) -> torch.Tensor:
    """Rows ``[a, b)`` of sparse features as a sparse CSR tensor."""
    crow, col, val = x.row_ranges([(a, b)])
    return sparse_csr(crow, col, val, (b - a, x.shape[1]))


@torch.no_grad()
def iter_full_graph(
    model: GNN,
    graph: ClusterGraph,
    device: torch.device,
    block_nodes: int = BLOCK_NODES,
    scratch_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Iterator[OutputBlock]:
    """Exact full-graph inference, layer by layer, yielding the last layer block by block in
    partition order. ``scratch_dir``: where intermediate arrays (layer outputs, and for GCN each
    layer's ``X W``) are kept on disk (``None``: in memory).

    GCN: ``out = A (H W) + b``: ``H W`` for all nodes first, then the sparse product per block.
    SAGE: ``out = lin_l(mean of neighbours' H) + lin_r(H)``. The sparse products run on the CPU
    (the data is memory-mapped); the dense layers on ``device``. Sparse features (``graph.x`` a
    :class:`CSRRows`): the first layer projects them first (``model.project``, a sparse-dense
    product, for SAGE ``mean(x_j W_l^T) + b_l + x W_r^T``), then propagates as above.
    """
    model.eval()
    kind = model.spec.kind
    bounds = block_bounds(graph, block_nodes)
    dinv = gcn_inverse_sqrt_degrees(graph) if kind == "gcn" else None
    graph.release()
    h, h_map = graph.x, graph.maps.get("x")
    t0, last_report = time.perf_counter(), time.perf_counter()
    for i, conv in enumerate(model.convs):
        last = i == model.num_layers - 1
        sparse = isinstance(h, CSRRows)
        if sparse:  # the first layer on sparse features: project, then propagate
            src, src_map = _project_all(model, conv.lin if kind == "gcn" else conv.lin_l, h, device, scratch_dir,
                                        conv.out_channels, graph.maps)
        elif kind == "gcn":
            src, src_map = _linear_all(conv.lin, h, h_map, device, scratch_dir, conv.out_channels)
        else:
            src, src_map = h, h_map
        out, out_map = None, None
        for n, (a, b) in enumerate(bounds):
            agg = windowed_product(row_block(graph, a, b, kind, dinv), src, src_map).to(device)
            if kind == "gcn":
                y = agg + conv.bias if conv.bias is not None else agg
            elif sparse:
                y = agg + conv.lin_l.bias if conv.lin_l.bias is not None else agg
                if conv.root_weight:
                    y = y + model.project(conv.lin_r, _sparse_rows(h, a, b).to(device))
            else:
                own = _tensor(h[a:b]).to(device)
                y = conv.lin_l(agg) + conv.lin_r(own)
            y = (y if last else torch.relu(y)).cpu().numpy()
            if last:
                yield OutputBlock(a, b, y, h.rows(a, b).toarray() if sparse else h[a:b])
            else:
                if out is None:
                    out, out_map = scratch_array((graph.num_nodes, y.shape[1]), np.float32, scratch_dir)
                out[a:b] = y
            graph.release()
            release_pages(h_map, src_map, out_map)
            if progress and time.perf_counter() - last_report >= 10:
                last_report = time.perf_counter()
                log.info("full-graph inference: layer %d/%d, block %d/%d, %.0f s",
                         i + 1, model.num_layers, n + 1, len(bounds), last_report - t0)
        h, h_map = out, out_map


def infer_full_graph(
    model: GNN,
    graph: ClusterGraph,
    device: torch.device,
    block_nodes: int = BLOCK_NODES,
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits, hidden)`` for every node in partition order, in memory (for small graphs and
    tests; the pipeline consumes :func:`iter_full_graph` block by block)."""
    logits: np.ndarray | None = None
    hidden: np.ndarray | None = None
    for blk in iter_full_graph(model, graph, device, block_nodes):
        if logits is None:
            logits = np.empty((graph.num_nodes, blk.logits.shape[1]), dtype=np.float32)
            hidden = np.empty((graph.num_nodes, blk.hidden.shape[1]), dtype=np.float32)
        logits[blk.start : blk.stop] = blk.logits
        hidden[blk.start : blk.stop] = blk.hidden
    assert logits is not None and hidden is not None
    return logits, hidden


def predict_full_graph(
    model: GNN,
    graph: ClusterGraph,
    device: torch.device,
    scratch_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The predicted class of every node (partition order), by exact full-graph inference."""
    pred = np.empty(graph.num_nodes, dtype=np.int32)
    for blk in iter_full_graph(model, graph, device, scratch_dir=scratch_dir, progress=progress):
        pred[blk.start : blk.stop] = blk.logits.argmax(axis=1)
    return pred


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[t, p]`` = number of nodes of true class ``t`` predicted as ``p``."""
    idx = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``
    (scikit-learn's ``f1_score(average="macro")`` with ``labels`` = those classes)."""
    if len(y_true) == 0:
        return float("nan")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean())


@dataclass
class SplitMetrics:
    acc: dict[str, float]
    macro_f1: dict[str, float]

    def flat(self) -> dict[str, float]:
        out = {f"{s}_acc": v for s, v in self.acc.items()}
        out.update({f"{s}_macro_f1": v for s, v in self.macro_f1.items()})
        return out


def split_metrics(pred: np.ndarray, y: np.ndarray, split: np.ndarray, num_classes: int) -> SplitMetrics:
    """Accuracy and macro-F1 of the predicted classes ``pred`` on the train/val/test masks
    (unlabeled nodes never count)."""
    acc, f1 = {}, {}
    for name, mask in split_masks(np.asarray(split)).items():
        mask = mask & (y >= 0)
        acc[name] = accuracy(y[mask], pred[mask])
        f1[name] = macro_f1(y[mask], pred[mask], num_classes)
    return SplitMetrics(acc, f1)


def embedding_sample(hidden_rows: np.ndarray) -> np.ndarray:
    """2-D PCA coordinates of the given embedding rows."""
    h = np.asarray(hidden_rows, dtype=np.float64)
    h -= h.mean(axis=0)
    _, _, vt = np.linalg.svd(h, full_matrices=False)
    coords = h @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([h[:, 0], np.zeros(len(h))])
    return coords.astype(np.float32)


EVALUATION_VERSION = 1  # bump when the evaluation of the same model changes


def evaluation_key(train_result: TrainResult, node_data: NodeDataRef, seed: int, embedding_nodes: int) -> str:
    """Key of an evaluation output: the trained model (its checkpoint key and how its training
    ended), the node data it is scored on, and the evaluation's own settings."""
    trained = (train_result.key, train_result.best_epoch, train_result.best_val_acc, train_result.epochs_run)
    return fingerprint_value("evaluation", EVALUATION_VERSION, trained, node_data.fingerprint,
                             {"seed": seed, "embedding_nodes": embedding_nodes})


def evaluate_model(
    train_result: TrainResult,
    node_data: NodeDataRef,
    snapshot: SnapshotRef,
    store: Store,
    *,
    device: str = "auto",
    seed: int = 0,
    embedding_nodes: int = 5000,
) -> EvaluationRef:
    """Score every node with the best-validation model and publish the ``evaluation`` output:
    metrics, predictions (in the user's node ids), the test confusion matrix and a 2-D embedding
    of a node sample (:mod:`storage.evaluation`).

    Args:
        train_result: the finished training (its checkpoint).
        node_data: the node data it was trained on (scored in full).
        snapshot: the snapshot, for the user's node ids.
        store: the store receiving the output (inputs are read where their references point).
        device: ``train.device`` (``auto``, ``cpu``, ``cuda``).
        seed: seeds the node sample of the embedding plot (``train.seed``).
        embedding_nodes: the sample's size (``track.embedding_plot_nodes``).

    An evaluation of the same model on the same node data that is already published is reused
    (``reused=True``); a damaged one is logged and rebuilt.
    """
    key = evaluation_key(train_result, node_data, seed, embedding_nodes)
    out = store.output(snapshot.name, "evaluation", key)
    if out.reusable("evaluation"):
        log.info("evaluate: cache hit %s", out.location)
        return EvaluationRef(path=out.location, metrics=read_metrics(out), key=key, reused=True)
    graph = ClusterGraph.open(output_at(node_data.partition.path), output_at(node_data.path))
    model, saved = load_trained(train_result.checkpoint_dir)
    device = resolve_device(device)
    n = graph.num_nodes
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(embedding_nodes, n), replace=False))
    pred = np.empty(n, dtype=np.int32)
    confidence = np.empty(n, dtype=np.float32)
    sample_hidden: list[np.ndarray] = []
    blocks = iter_full_graph(model.to(device), graph, device, scratch_dir=Checkpoints.at(train_result.checkpoint_dir).local_dir(),
                             progress=PROGRESS.isEnabledFor(logging.INFO))
    for blk in blocks:
        a, b = blk.start, blk.stop
        probs = torch.softmax(torch.from_numpy(blk.logits), dim=1)
        confidence[a:b], pred[a:b] = (t.numpy() for t in probs.max(dim=1))
        sample_hidden.append(np.array(blk.hidden[sample[(sample >= a) & (sample < b)] - a], dtype=np.float32))
    y, split = np.array(graph.y), np.array(graph.split)
    num_classes = train_result.num_classes
    metrics = split_metrics(pred, y, split, num_classes).flat()
    metrics["best_epoch"] = float(saved["best_epoch"])
    test = (split == SPLIT_TEST) & (y >= 0)
    cm = confusion_matrix(y[test], pred[test], num_classes)
    coords = embedding_sample(np.concatenate(sample_hidden))
    # partition order -> snapshot order -> the user's ids
    perm = np.array(graph.perm)
    order = np.empty_like(perm)
    order[perm] = np.arange(n)
    graph.release()
    predictions = pa.table({
        "node_id": read_node_ids(output_at(snapshot.path)),
        "prediction": pa.array(pred[order]),
        "confidence": pa.array(confidence[order]),
        "label": pa.array(y[order].astype(np.int32)),
        "split": pa.array(split[order].astype(np.int8)),
    })
    inputs = {"checkpoint": train_result.key, "node_data": node_data.fingerprint, "snapshot": snapshot.fingerprint}
    with store.publish(out, params={"seed": seed, "embedding_nodes": embedding_nodes}, inputs=inputs, replace=True) as w:
        write_evaluation(w, metrics=metrics, predictions=predictions, confusion=cm, embedding_coords=coords,
                         embedding_labels=y[sample])
    log.info("evaluate: %s", {k: round(v, 4) for k, v in metrics.items()})
    return EvaluationRef(path=out.location, metrics=metrics, key=key)
