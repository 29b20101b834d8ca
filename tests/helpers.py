"""Small graphs built by hand for exact tests."""

from __future__ import annotations

import numpy as np

from storage.arrays import ClusterGraph


def cluster_graph(
    edges: list[tuple[int, int]],
    cluster_ptr: list[int],
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    split: np.ndarray | None = None,
) -> ClusterGraph:
    """A ClusterGraph whose node ids are already in cluster order (clusters = ranges of ``cluster_ptr``)."""
    n = cluster_ptr[-1]
    a = np.zeros((n, n), dtype=bool)
    for u, v in edges:
        a[u, v] = a[v, u] = True
    np.fill_diagonal(a, False)
    rows, cols = np.nonzero(a)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    ptr = np.asarray(cluster_ptr, dtype=np.int64)
    node_cluster = np.repeat(np.arange(len(ptr) - 1, dtype=np.int32), np.diff(ptr))
    return ClusterGraph(
        cluster_ptr=ptr,
        node_cluster=node_cluster,
        indptr=indptr,
        indices=cols.astype(np.int32),
        perm=np.arange(n, dtype=np.int64),
        x=np.eye(n, dtype=np.float32) if x is None else x,
        y=np.zeros(n, dtype=np.int64) if y is None else y,
        split=np.ones(n, dtype=np.int8) if split is None else split,
    )


def dense_adjacency(graph: ClusterGraph) -> np.ndarray:
    n = graph.num_nodes
    a = np.zeros((n, n), dtype=np.float64)
    rows = np.repeat(np.arange(n), np.diff(graph.indptr))
    a[rows, graph.indices] = 1.0
    return a


def gcn_normalize(a: np.ndarray) -> np.ndarray:
    """D^-1/2 (A + I) D^-1/2 (dense reference)."""
    a = a + np.eye(len(a))
    d = a.sum(axis=1)
    return a / np.sqrt(np.outer(d, d))


def prepared_generated(root, overrides: list[str], **generator):
    """A generated community graph under ``root`` taken through the data stages (no Prefect):
    returns the config (``overrides`` applied, store under ``root``) and the prepared graph."""
    from tasks.config import load_config
    from tasks.synthetic.generate import GeneratorConfig, generate_graph
    from tasks.prepare import prepare_graph

    gen = generate_graph(GeneratorConfig(**generator), root / "input")
    cfg = load_config(None, overrides, base={"store": str(root / "store"),
                                             "data": {"name": "g", "edges": [str(gen.edges_path)],
                                                      "nodes": str(gen.nodes_path)}})
    return cfg, prepare_graph(cfg)


def train(node_data, config, **kwargs):
    """``train_cluster_gcn`` as the flow calls it: the train section, the store built once,
    ``data.num_classes`` and the lock timeout of ``config``."""
    from storage.store import Store
    from tasks.train.loop import train_cluster_gcn

    return train_cluster_gcn(node_data, config.train, Store(config.store), num_classes=config.data.num_classes,
                             lock_timeout=config.lock_timeout_seconds, **kwargs)


def trained_record(result, config) -> dict:
    """The finished training's record (best weights, spec, history) from its checkpoint set."""
    from storage.checkpoints import Checkpoints
    from storage.store import Store

    return Checkpoints(Store(config.store), result.graph, result.key).model()


def config_with(cfg, store, *overrides: str):
    """``cfg`` with its store moved to ``store`` and ``overrides`` (``key=value``) applied."""
    from tasks.config import load_config

    return load_config(None, list(overrides), base=cfg.model_dump(mode="json") | {"store": str(store)})
