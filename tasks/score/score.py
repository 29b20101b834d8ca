"""The scoring stage: a trained model scores every node of a snapshot's node data by exact
full-graph inference (:mod:`tasks.evaluate.inference`) into a versioned ``scores`` output
(:mod:`storage.scores`): per node the predicted class, its confidence, the ``top_k`` classes with
their probabilities and, optionally, the embedding (the last layer's input).

Which model (the champion, a registered version, a checkpoint) is resolved by the flow
(:mod:`flows.score`); this stage gets a local weights file or checkpoint set. The output's key
covers the weights' bytes, the node data and the settings, so scoring the same snapshot with the
same model again is a cache hit. The evaluate stage writes this output too, from its own
full-graph inference (:func:`publish_scores`): when the evaluated model becomes the champion, the
pipeline's scoring finds it and runs no second inference.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from storage.arrays import ClusterGraph
from storage.checkpoints import Checkpoints, load_torch_bytes
from storage.fingerprint import fingerprint_value
from storage.scores import ScoresRef, latest, read_scores, write_scores
from storage.snapshot import read_node_ids
from storage.store import NodeDataRef, SnapshotRef, Store, output_at
from tasks.config import ScoreConfig
from tasks.evaluate.parallel import iter_full_graph_ranks, open_graph
from tasks.score.drift import Drift, compute_drift
from tasks.train.model import GNN, ModelSpec, resolve_device

log = logging.getLogger(__name__)

SCORES_VERSION = 1  # bump when scoring the same model on the same data changes


def weights_digest(record: bytes | dict[str, Any], where: str = "model record") -> str:
    """The digest that keys scorings by model: a fingerprint of the model a finished run's
    checkpoint record (``model.pt``, as bytes or loaded) holds, its spec and its weights (each
    state-dict tensor, in name order), not the record's other contents (history, best epoch).
    The checkpoint set's :meth:`storage.checkpoints.Checkpoints.model_bytes`, the copy logged to
    MLflow and the champion's downloaded file agree; so do a warm-started run that kept the
    champion's weights (nothing beat them) and the champion, whose records differ."""
    saved = load_torch_bytes(record, where) if isinstance(record, bytes) else record
    tensors = sorted(saved["state_dict"].items())
    return fingerprint_value("model-weights", saved["spec"], [name for name, _ in tensors],
                             *(t.detach().cpu().contiguous().numpy() for _, t in tensors))


def load_scoring_model(weights: str) -> tuple[GNN, str]:
    """``(model in eval mode, digest of its weights)`` from ``weights``: a checkpoint file (a
    finished run's ``model.pt`` record, as the champion's weights are downloaded) or a checkpoint
    set directory (``TrainResult.checkpoint_dir``). Only tensors and plain data are unpickled.
    Both forms of one model have the same digest (:func:`weights_digest`)."""
    path = Path(weights)
    if path.is_dir():
        ckpt = Checkpoints.at(str(path))
        data, where = ckpt.model_bytes(), ckpt.model_location()
        if data is None:
            raise FileNotFoundError(f"{weights}: no finished training in this checkpoint set")
    else:
        data, where = path.read_bytes(), str(path)
    saved = load_torch_bytes(data, where)
    model = GNN(ModelSpec(**saved["spec"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, weights_digest(saved)


def scores_key(weights_digest: str, node_data: NodeDataRef, config: ScoreConfig) -> str:
    """The scores output's key: the weights, the node data and the settings that shape the table."""
    return fingerprint_value("scores", SCORES_VERSION, weights_digest, node_data.fingerprint,
                             {"top_k": config.top_k, "embeddings": config.embeddings})


def _table(node_ids: pa.Array, got: dict[str, np.ndarray], order: np.ndarray) -> pa.Table:
    """The scores table in the snapshot's node order (``order``: snapshot position -> partition row)."""
    top_p, top_c = got["top_p"][order], got["top_c"][order]
    kk = top_p.shape[1]
    offsets = pa.array(np.arange(0, len(order) * kk + 1, kk, dtype=np.int32))
    cols = {
        "node_id": node_ids,
        "prediction": pa.array(top_c[:, 0].copy()),
        "confidence": pa.array(top_p[:, 0].copy()),
        "top_k_classes": pa.ListArray.from_arrays(offsets, pa.array(top_c.ravel())),
        "top_k_probs": pa.ListArray.from_arrays(offsets, pa.array(top_p.ravel())),
    }
    if "emb" in got:
        emb = got["emb"][order]
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])
    return pa.table(cols)


class ScoreRows:
    """The scores of every node gathered row block by row block of one full-graph inference (in
    partition order): the ``top_k`` classes and probabilities and, with ``embeddings``, the last
    layer's input. Only the top ``k`` of each row's probabilities are kept, never all classes.

    Args:
        num_nodes: rows of the graph.
        top_k: classes kept per node (fewer when the model has fewer classes).
        embeddings: keep the embeddings too.
    """

    def __init__(self, num_nodes: int, top_k: int, embeddings: bool) -> None:
        self.num_nodes, self.top_k, self.embeddings = num_nodes, top_k, embeddings
        self.got: dict[str, np.ndarray] = {}

    def add(self, start: int, stop: int, probs: torch.Tensor, hidden: np.ndarray) -> None:
        """Rows ``start:stop``: their softmax probabilities ``probs`` and hidden rows ``hidden``."""
        got, kk = self.got, min(self.top_k, probs.shape[1])
        if not got:
            got["top_p"] = np.empty((self.num_nodes, kk), dtype=np.float32)
            got["top_c"] = np.empty((self.num_nodes, kk), dtype=np.int32)
            if self.embeddings:
                got["emb"] = np.empty((self.num_nodes, hidden.shape[1]), dtype=np.float32)
        p, c = probs.topk(kk, dim=1)  # sorted, most probable first
        got["top_p"][start:stop], got["top_c"][start:stop] = p.numpy(), c.numpy()
        if self.embeddings:
            got["emb"][start:stop] = np.asarray(hidden, dtype=np.float32)

    def table(self, node_ids: pa.Array, order: np.ndarray) -> pa.Table:
        """The scores table in the snapshot's node order (``order``: snapshot position -> partition row)."""
        return _table(node_ids, self.got, order)


def block_probabilities(logits: np.ndarray) -> torch.Tensor:
    """Softmax probabilities of a block's logits (float32), as evaluation and scoring compute them."""
    return torch.softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=1)


def _infer(model: GNN, graph: ClusterGraph, k: int, embeddings: bool, scratch: Path | None, workers: int = 1,
           reopen: Any = None) -> ScoreRows:
    """Per node (partition order): prediction, confidence, top-k classes and probabilities and,
    with ``embeddings``, the last layer's input (``workers``, ``reopen``: see
    :func:`tasks.evaluate.parallel.iter_full_graph_ranks`)."""
    rows = ScoreRows(graph.num_nodes, k, embeddings)
    device = resolve_device("auto")
    for blk in iter_full_graph_ranks(model.to(device), graph, device, workers, scratch_dir=scratch, reopen=reopen):
        rows.add(blk.start, blk.stop, block_probabilities(blk.logits), blk.hidden)
    return rows


def _snapshot_edges(snapshot: SnapshotRef) -> int:
    """The snapshot's undirected edge count (for the drift's ``edges_added``)."""
    return int(output_at(snapshot.path).manifest().get("counts", {}).get("undirected_edges", 0))


def _publish_args(digest: str, node_data: NodeDataRef, snapshot: SnapshotRef, config: ScoreConfig,
                  model_label: str) -> dict[str, Any]:
    """The scores output's manifest parameters and inputs."""
    return {"params": {"top_k": config.top_k, "embeddings": config.embeddings, "model": model_label},
            "inputs": {"weights": digest, "node_data": node_data.fingerprint, "snapshot": snapshot.fingerprint}}


def partition_to_snapshot_order(perm: np.ndarray) -> np.ndarray:
    """``order`` with ``order[snapshot position] = partition row`` from the partition's ``perm``."""
    perm = np.asarray(perm)
    order = np.empty_like(perm)
    order[perm] = np.arange(len(perm))
    return order


def publish_scores(rows: ScoreRows, order: np.ndarray, store: Store, *, digest: str, node_data: NodeDataRef,
                   snapshot: SnapshotRef, config: ScoreConfig, model_label: str) -> ScoresRef:
    """Publish scores gathered by another full-graph inference of the same model (the evaluate
    stage's) as the ``scores`` output the scoring stage would write for those weights
    (:func:`scores_key`), so that scoring with them later is a cache hit.

    Args:
        rows: every node's scores (partition order), gathered with ``config``'s settings.
        order: snapshot position -> partition row (:func:`partition_to_snapshot_order`).
        store: the store receiving the output.
        digest: :func:`weights_digest` of the model's checkpoint record.
        node_data, snapshot, config, model_label: as for :func:`score_nodes`.
    """
    key = scores_key(digest, node_data, config)
    out = store.output(snapshot.name, "scores", key)
    edges = _snapshot_edges(snapshot)
    with store.publish(out, **_publish_args(digest, node_data, snapshot, config, model_label)) as w:
        table = rows.table(read_node_ids(output_at(snapshot.path)), order)
        write_scores(w, table)
        w.counts["undirected_edges"] = edges
    log.info("score: %s nodes of %s scored in the same pass by %s -> %s", f"{table.num_rows:,}", snapshot.name,
             model_label, out.location)
    return ScoresRef(path=out.location, graph=snapshot.name, key=key, snapshot=snapshot.fingerprint,
                     edges=edges, model=model_label, num_nodes=table.num_rows)


def score_nodes(node_data: NodeDataRef, snapshot: SnapshotRef, config: ScoreConfig, store: Store, *,
                weights: str, model_label: str) -> ScoresRef:
    """Score every node of ``snapshot`` (laid out as ``node_data``) with the model in ``weights``
    and publish the ``scores`` output (:mod:`storage.scores`).

    Args:
        node_data: the snapshot's node data (features in partition order).
        snapshot: the snapshot, for the user's node ids and its edge count.
        config: the ``score`` section (``top_k``, ``embeddings``).
        store: the store receiving the output.
        weights: a checkpoint file or checkpoint set directory (:func:`load_scoring_model`).
        model_label: what the model is, for the pointer and messages (``champion v3``).

    Caveats: the model must have been trained on features of this width (a clear error
    otherwise); the "latest" pointer is not moved here (:func:`tasks.score.score.drift_since_latest`
    then :func:`storage.scores.set_latest`), so drift can be computed against the previous one.
    When the pipeline's evaluation already scored these nodes with these weights (the run's
    model became the champion) the output exists and this is a cache hit, without inference.
    """
    model, digest = load_scoring_model(weights)
    key = scores_key(digest, node_data, config)
    out = store.output(snapshot.name, "scores", key)
    edges = _snapshot_edges(snapshot)
    ref = dict(path=out.location, graph=snapshot.name, key=key, snapshot=snapshot.fingerprint, edges=edges,
               model=model_label)
    if out.reusable("scores"):
        log.info("score: cache hit %s", out.location)
        return ScoresRef(**ref, num_nodes=int(out.manifest()["counts"]["num_nodes"]), reused=True)
    reopen = functools.partial(open_graph, node_data.partition.path, node_data.path)
    graph = reopen()
    _check_width(model, graph, weights)
    order = partition_to_snapshot_order(graph.perm)
    with store.publish(out, **_publish_args(digest, node_data, snapshot, config, model_label)) as w, \
            w.scratch() as scratch:
        rows = _infer(model, graph, config.top_k, config.embeddings, scratch, config.workers, reopen)
        graph.release()
        table = rows.table(read_node_ids(output_at(snapshot.path)), order)
        write_scores(w, table)
        w.counts["undirected_edges"] = edges
    log.info("score: %s nodes of %s scored with %s -> %s", f"{table.num_rows:,}", snapshot.name, model_label, out.location)
    return ScoresRef(**ref, num_nodes=table.num_rows)


def _check_width(model: GNN, graph: ClusterGraph, weights: str) -> None:
    """A one-line error when the model expects another feature width than the graph has."""
    from tasks.errors import InputError

    want = int(model.spec.in_dim)
    have = int(graph.x.shape[1])
    if want != have:
        raise InputError(f"{weights}: the model expects {want} input features, the graph's node data has {have}; "
                         "score with a model trained on this graph's features")


def drift_since_latest(current: ScoresRef, store: Store) -> tuple[Drift | None, ScoresRef | None]:
    """``(drift, previous)``: the drift of ``current`` against the graph's latest scoring before
    it (:func:`tasks.score.drift.compute_drift`), or ``(None, None)`` when there is none. Call it
    before moving the pointer to ``current``."""
    previous = latest(store, current.graph)
    if previous is None:
        return None, None
    cols = ["node_id", "prediction"]
    now = read_scores(store.open(current.path), columns=cols)
    before = read_scores(store.open(previous.path), columns=cols)
    return compute_drift(now, before, edges_now=current.edges, edges_before=previous.edges), previous
