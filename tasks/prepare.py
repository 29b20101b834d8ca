"""The data stages in one call, without Prefect: ingest -> normalize -> partition -> layout.

What the flows do stage by stage (as Prefect tasks, with retries and cache states), for code that
wants the prepared graph directly: benchmarks, notebooks, tests. Each stage is cached by the store
as usual, so a second call with the same inputs and settings reuses every output.

::

    from tasks.config import load_config
    from tasks.prepare import prepare_graph

    prepared = prepare_graph(load_config("graphpipe.yaml"))
    result = train_cluster_gcn(prepared.node_data, config.train, Store(config.store), num_classes=config.data.num_classes)
"""

from __future__ import annotations

from typing import NamedTuple

from storage.store import FeaturesRef, NodeDataRef, PartitionRef, SnapshotRef, Store
from tasks.config import PipelineConfig


class PreparedGraph(NamedTuple):
    """References to the four data stages' outputs in the store."""

    snapshot: SnapshotRef
    features: FeaturesRef
    partition: PartitionRef
    node_data: NodeDataRef


def prepare_graph(config: PipelineConfig, snapshot: SnapshotRef | None = None, store: Store | None = None) -> PreparedGraph:
    """Ingest ``config.data`` (unless ``snapshot`` is given), normalize its features, partition it
    with METIS and lay out the node data in cluster order.

    Args:
        config: the whole pipeline config; each stage gets its own section.
        snapshot: an already ingested snapshot to start from (ingest is skipped).
        store: the store to use (default: ``Store(config.store)``, built once for every stage).

    Progress messages go to the ``graphpipe.progress`` logger at INFO (hidden unless that logger,
    or the root logger, is set to show INFO).

    Raises:
        tasks.errors.InputError: a user's mistake in the inputs or the config (one line).
    """
    from tasks.ingest.snapshot import ingest_graph
    from tasks.normalize.features import normalize_features
    from tasks.partition.layout import layout_node_data
    from tasks.partition.partition import partition_graph

    store = store if store is not None else Store(config.store)
    snap = snapshot if snapshot is not None else ingest_graph(config.data, config.split, store)
    features = normalize_features(snap, config.normalize, store)
    partition = partition_graph(snap, config.partition, store)
    return PreparedGraph(snap, features, partition, layout_node_data(partition, snap, features, store))
