"""Flat ``.npy`` arrays, read back as memory maps, and the partitioned graph training reads.

A partition directory (``partitions/<fp>/``) holds the graph's structure in cluster order:

- ``perm.npy`` (int64, N): ``perm[new_id] = snapshot_id``; ``assignment.npy`` (int32, N): cluster
  of each snapshot id; ``cluster_ptr.npy`` (int64, k+1): cluster ``c`` is new ids
  ``cluster_ptr[c]:cluster_ptr[c+1]``; ``node_cluster.npy`` (int32, N): cluster of each new id;
- ``indptr.npy`` (int64, N+1) and ``indices.npy`` (int32 or int64): the symmetric adjacency in
  new ids, CSR, no self-loops, each row's neighbours sorted;
- ``stats.json``: edge cut, cluster sizes, label distribution.

A node-data directory (``node_data/<fp>/``) holds the nodes' data in the same order:
``x.npy`` (float32, N x d, normalized), ``y.npy`` (int64, -1 = unlabeled), ``split.npy`` (int8).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def write_arrays(directory: str | os.PathLike, **arrays: np.ndarray) -> list[str]:
    names = []
    for name, arr in arrays.items():
        np.save(Path(directory) / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        names.append(f"{name}.npy")
    return names


def open_array(directory: str | os.PathLike, name: str, mmap: bool = True) -> np.ndarray:
    return np.load(Path(directory) / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)


@dataclass
class ClusterGraph:
    """The partitioned graph, memory-mapped: training reads only the rows of its batches."""

    cluster_ptr: np.ndarray
    node_cluster: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    perm: np.ndarray
    x: np.ndarray
    y: np.ndarray
    split: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_parts(self) -> int:
        return len(self.cluster_ptr) - 1

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @classmethod
    def open(cls, partition_dir: str | os.PathLike, node_data_dir: str | os.PathLike) -> ClusterGraph:
        small = {name: open_array(partition_dir, name, mmap=False) for name in ("cluster_ptr",)}
        return cls(
            cluster_ptr=small["cluster_ptr"],
            node_cluster=open_array(partition_dir, "node_cluster"),
            indptr=open_array(partition_dir, "indptr"),
            indices=open_array(partition_dir, "indices"),
            perm=open_array(partition_dir, "perm"),
            x=open_array(node_data_dir, "x"),
            y=open_array(node_data_dir, "y"),
            split=open_array(node_data_dir, "split"),
        )
