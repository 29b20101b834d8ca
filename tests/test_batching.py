import numpy as np
import pytest
import torch

from tasks.train.batching import (
    AdjacencyNorm,
    add_self_loops_csr,
    batch_subgraph,
    block_bounds,
    build_batch,
    epoch_batches,
    normalized_adjacency,
    ranges_concat,
    row_block,
)
from tests.helpers import cluster_graph, dense_adjacency, gcn_normalize

# Three clusters: {0,1,2}, {3,4}, {5,6,7}.
# inside: 0-1, 1-2, 3-4, 5-6, 6-7; between: 2-3 (c0-c1), 4-5 (c1-c2), 0-7 (c0-c2)
EDGES = [(0, 1), (1, 2), (3, 4), (5, 6), (6, 7), (2, 3), (4, 5), (0, 7)]
PTR = [0, 3, 5, 8]
SYM = AdjacencyNorm("sym")


def _edges_of(nodes, crow, col):
    rows = np.repeat(np.arange(len(nodes)), np.diff(crow))
    return {(int(nodes[r]), int(nodes[c])) for r, c in zip(rows, col)}


def test_batch_of_two_clusters_keeps_exactly_the_edges_between_them():
    g = cluster_graph(EDGES, PTR)
    nodes, crow, col = batch_subgraph(g, np.array([0, 2]))
    assert nodes.tolist() == [0, 1, 2, 5, 6, 7]
    undirected = {tuple(sorted(e)) for e in _edges_of(nodes, crow, col)}
    # inside c0, inside c2, and the restored c0-c2 edge 0-7; nothing touching c1
    assert undirected == {(0, 1), (1, 2), (5, 6), (6, 7), (0, 7)}
    assert crow[-1] == 10  # both directions
    for r in range(len(nodes)):  # columns sorted in every row
        seg = col[crow[r] : crow[r + 1]]
        assert (np.diff(seg) > 0).all()


def test_batch_subgraph_equals_dense_induced_subgraph_on_random_graph():
    rng = np.random.default_rng(3)
    n = 40
    edges = [tuple(e) for e in rng.integers(0, n, size=(150, 2)) if e[0] != e[1]]
    ptr = [0, 7, 15, 16, 30, 40]
    g = cluster_graph(edges, ptr)
    a = dense_adjacency(g)
    for clusters in ([1, 3], [0, 2, 4], [4], [0, 1, 2, 3, 4]):
        nodes, crow, col = batch_subgraph(g, np.array(clusters))
        sub = np.zeros((len(nodes), len(nodes)))
        rows = np.repeat(np.arange(len(nodes)), np.diff(crow))
        sub[rows, col] = 1
        np.testing.assert_array_equal(sub, a[np.ix_(nodes, nodes)])


def test_gcn_adjacency_matches_dense_formula():
    g = cluster_graph(EDGES, PTR)
    nodes, crow, col = batch_subgraph(g, np.array([0, 1]))
    adj = normalized_adjacency(crow, col, SYM).to_dense().numpy()
    expected = gcn_normalize(dense_adjacency(g)[np.ix_(nodes, nodes)])
    np.testing.assert_allclose(adj, expected, rtol=1e-6)


def test_add_self_loops_keeps_rows_sorted():
    crow = np.array([0, 2, 3, 3, 5])
    col = np.array([1, 3, 0, 0, 2])
    crow2, col2 = add_self_loops_csr(crow, col, 4)
    assert crow2.tolist() == [0, 3, 5, 6, 9]
    assert col2.tolist() == [0, 1, 3, 0, 1, 2, 0, 2, 3]


def test_ranges_concat():
    assert ranges_concat(np.array([5, 0, 9]), np.array([7, 0, 12])).tolist() == [5, 6, 9, 10, 11]


def test_epoch_batches_cover_every_cluster_once_and_are_reproducible():
    b1 = epoch_batches(10, 3, np.random.default_rng([0, 1]))
    b2 = epoch_batches(10, 3, np.random.default_rng([0, 1]))
    assert [b.tolist() for b in b1] == [b.tolist() for b in b2]
    assert [len(b) for b in b1] == [3, 3, 3, 1]
    assert sorted(np.concatenate(b1).tolist()) == list(range(10))
    b3 = epoch_batches(10, 3, np.random.default_rng([0, 2]))
    assert [b.tolist() for b in b3] != [b.tolist() for b in b1]


def test_build_batch_carries_node_data_in_batch_order():
    x = np.arange(16, dtype=np.float32).reshape(8, 2)
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    split = np.array([1, 2, 3, 1, 0, 1, 1, 2], dtype=np.int8)
    g = cluster_graph(EDGES, PTR, x=x, y=y, split=split)
    b = build_batch(g, np.array([2, 0]), SYM)
    assert b.nodes.tolist() == [0, 1, 2, 5, 6, 7]
    np.testing.assert_array_equal(b.x.numpy(), x[[0, 1, 2, 5, 6, 7]])
    assert b.y.tolist() == [0, 1, 0, 1, 0, 1]
    assert b.train_mask.tolist() == [True, False, False, True, True, False]
    assert b.num_edges == 10


def _block_dense(block, num_nodes):
    dense = np.zeros((block.stop - block.start, num_nodes), dtype=np.float32)
    for r in range(block.stop - block.start):
        sl = slice(block.crow[r], block.crow[r + 1])
        assert np.all(np.diff(block.col[sl]) > 0)  # sorted, no duplicates
        dense[r, block.col[sl]] = block.values[sl]
    return dense


def test_row_block_uses_all_neighbours_with_full_graph_degrees():
    g = cluster_graph(EDGES, PTR)
    full = gcn_normalize(dense_adjacency(g))
    block = row_block(g, 3, 5, SYM)  # cluster 1: nodes 3, 4 with neighbours 2 and 5 outside it
    np.testing.assert_allclose(_block_dense(block, 8), full[3:5], rtol=1e-6)
    a = dense_adjacency(g)
    mean = row_block(g, 0, 8, AdjacencyNorm("mean"))
    np.testing.assert_allclose(_block_dense(mean, 8), a / np.maximum(a.sum(axis=1, keepdims=True), 1), rtol=1e-6)


def test_block_bounds_cover_whole_clusters():
    g = cluster_graph(EDGES, PTR)
    assert block_bounds(g, 4) == [(0, 5), (5, 8)]
    assert block_bounds(g, 1) == [(0, 3), (3, 5), (5, 8)]
    assert block_bounds(g, 100) == [(0, 8)]


@pytest.mark.parametrize("kind", ["sym", "mean", "row", "ones"])
def test_sparse_adjacency_is_differentiable(kind):
    g = cluster_graph(EDGES, PTR)
    b = build_batch(g, np.array([0, 1, 2]), AdjacencyNorm(kind, 0.5))
    h = torch.randn(8, 3, requires_grad=True)
    out = torch.sparse.mm(b.adj, h)
    out.sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()


def test_diagonal_enhancement_matches_the_papers_formula():
    """Chiang et al. 2019 sec. 3.3: A' = (D+I)^-1 (A+I), then A' + lambda diag(A'), in a batch
    (batch degrees) and in a full-graph row block (full-graph degrees)."""
    g = cluster_graph(EDGES, PTR)
    lam = 0.7
    norm = AdjacencyNorm("row", lam)

    def enhanced(a):
        a_hat = (a + np.eye(len(a))) / (a.sum(axis=1, keepdims=True) + 1)
        return a_hat + lam * np.diag(np.diag(a_hat))

    nodes, crow, col = batch_subgraph(g, np.array([0, 2]))
    adj = normalized_adjacency(crow, col, norm).to_dense().numpy()
    np.testing.assert_allclose(adj, enhanced(dense_adjacency(g)[np.ix_(nodes, nodes)]), rtol=1e-6)
    # node 0 (batch degree 2: neighbours 1 and 7): off-diagonal 1/3, diagonal (1 + 0.7)/3
    np.testing.assert_allclose(adj[0, [0, 1, 5]], [1.7 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    block = row_block(g, 3, 5, norm)
    np.testing.assert_allclose(_block_dense(block, 8), enhanced(dense_adjacency(g))[3:5], rtol=1e-6)


def test_mean_and_structure_adjacencies():
    g = cluster_graph(EDGES, PTR)
    nodes, crow, col = batch_subgraph(g, np.array([0, 1]))
    a = dense_adjacency(g)[np.ix_(nodes, nodes)]
    mean = normalized_adjacency(crow, col, AdjacencyNorm("mean")).to_dense().numpy()
    np.testing.assert_allclose(mean, a / np.maximum(a.sum(axis=1, keepdims=True), 1), rtol=1e-6)
    ones = normalized_adjacency(crow, col, AdjacencyNorm("ones")).to_dense().numpy()
    np.testing.assert_array_equal(ones, a + np.eye(len(a)))
