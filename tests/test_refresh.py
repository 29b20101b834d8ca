"""Partition refresh on small hand-built graphs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tasks.partition.refresh import PartitionQuality, needs_full_metis, quality, refresh_assignment


def csr(n, edges):
    e = np.array(edges, dtype=np.int64).reshape(-1, 2)
    a = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    a = ((a + a.T) > 0).tocsr()
    a.sort_indices()
    return a.indptr.astype(np.int64), a.indices.astype(np.int64)


# two triangles {0,1,2} (cluster 0) and {3,4,5} (cluster 1), joined by 2-3
OLD = [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5), (2, 3)]


def test_new_nodes_join_their_neighbours_cluster_and_old_nodes_keep_theirs():
    # 6 -> 0,1 (cluster 0); 7 -> 4,5,3 (cluster 1); 8 -> 7 only (placed after 7: cluster 1); 9 isolated
    indptr, indices = csr(10, OLD + [(6, 0), (6, 1), (7, 3), (7, 4), (7, 5), (8, 7)])
    a = refresh_assignment(indptr, indices, np.array([0, 0, 0, 1, 1, 1]), 2, cap=10)
    assert a[:6].tolist() == [0, 0, 0, 1, 1, 1]
    assert a[6] == 0 and a[7] == 1 and a[8] == 1
    assert a[9] == 0  # the smallest cluster after placing: 0 has 4, 1 has 5


def test_a_full_cluster_sends_the_node_to_its_next_best():
    # 6 has 2 neighbours in cluster 1 and 1 in cluster 0; cluster 1 is at the cap (3)
    indptr, indices = csr(7, OLD + [(6, 3), (6, 4), (6, 0)])
    a = refresh_assignment(indptr, indices, np.array([0, 0, 0, 1, 1, 1]), 2, cap=3)
    assert a[6] == 0


def test_quality_and_the_full_metis_decision():
    indptr, indices = csr(6, OLD)
    q = quality(indptr, indices, np.array([0, 0, 0, 1, 1, 1]), 2)
    assert q.edge_cut_fraction == pytest.approx(1 / 7) and q.imbalance == 1.0
    base = PartitionQuality(0.10, 1.0)
    kw = dict(max_refreshes=3, max_cut_increase=0.05, max_imbalance=1.5)
    assert needs_full_metis(PartitionQuality(0.104, 1.2), base, refreshes=1, **kw) is None
    assert "edge cut" in needs_full_metis(PartitionQuality(0.106, 1.2), base, refreshes=1, **kw)
    assert "imbalance" in needs_full_metis(PartitionQuality(0.10, 1.6), base, refreshes=1, **kw)
    assert "refreshes" in needs_full_metis(PartitionQuality(0.10, 1.0), base, refreshes=4, **kw)


def test_fewer_nodes_than_before_is_an_error():
    indptr, indices = csr(3, [(0, 1)])
    with pytest.raises(ValueError, match="fewer"):
        refresh_assignment(indptr, indices, np.zeros(5, dtype=np.int32), 1, cap=10)
