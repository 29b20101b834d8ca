"""The synthetic graph generator: reproducibility, shape, structure and difficulty of its output."""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from tasks.synthetic import generate as gen
from tasks.errors import InputError
from tasks.synthetic.generate import GeneratorConfig, add_generate_arguments, config_from_args, generate_graph

FORMATS = ["csv", "csv.gz", "tsv", "txt", "parquet"]


def read_edges(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(src, dst)`` of an edge file in any of the generator's formats, read with pyarrow only."""
    name = path.name
    if name.endswith(".parquet"):
        table = pq.read_table(path)
    elif name.endswith(".txt"):
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=["src", "dst"]),
            parse_options=pacsv.ParseOptions(delimiter=" "),
        )
    else:  # csv, csv.gz (pyarrow decompresses by extension), tsv
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t" if name.endswith(".tsv") else ","))
    assert table.column_names == ["src", "dst"]
    assert table.schema.field("src").type == pa.int64()
    return table.column("src").to_numpy(), table.column("dst").to_numpy()


def read_nodes(path: Path, num_features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(node_id, label, split, x)`` of ``nodes.parquet``."""
    t = pq.read_table(path)
    x = np.stack([t.column(f"f{j}").to_numpy() for j in range(num_features)], axis=1)
    split = t.column("split").dictionary_encode().combine_chunks()
    names = np.asarray(split.dictionary.to_pylist())
    return t.column("node_id").to_numpy(), t.column("label").to_numpy(), names[split.indices.to_numpy()], x


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def degrees(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(np.concatenate([src, dst]), minlength=n)


@pytest.fixture(scope="module")
def graph20k(tmp_path_factory):
    """A 20k-node graph at the default settings otherwise, read back."""
    config = GeneratorConfig(num_nodes=20_000, seed=3)
    g = generate_graph(config, tmp_path_factory.mktemp("g20k"))
    src, dst = read_edges(g.edges_path)
    ids, y, split, x = read_nodes(g.nodes_path, g.num_features)
    return config, g, src, dst, ids, y, split, x


# -- reproducibility ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path, fmt):
    config = GeneratorConfig(num_nodes=3000, num_features=8, edge_format=fmt, seed=11)
    a = generate_graph(config, tmp_path / "a")
    b = generate_graph(config, tmp_path / "b")
    c = generate_graph(GeneratorConfig(num_nodes=3000, num_features=8, edge_format=fmt, seed=12), tmp_path / "c")
    assert a.edges_path.name == f"edges.{fmt}"
    assert sha256(a.edges_path) == sha256(b.edges_path)
    assert sha256(a.nodes_path) == sha256(b.nodes_path)
    assert sha256(a.edges_path) != sha256(c.edges_path)
    assert sha256(a.nodes_path) != sha256(c.nodes_path)
    # Nothing but the two outputs is left behind (temporary files are renamed into place).
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([f"edges.{fmt}", "nodes.parquet"])


def test_chunked_output_is_reproducible_and_each_chunk_has_its_own_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "EDGE_CHUNK", 1000)
    monkeypatch.setattr(gen, "NODE_ROW_GROUP", 700)
    config = GeneratorConfig(num_nodes=2000, avg_degree=8.5, num_features=4, edge_format="parquet", seed=5)
    g = generate_graph(config, tmp_path / "a")
    again = generate_graph(config, tmp_path / "b")
    assert sha256(g.edges_path) == sha256(again.edges_path)
    assert sha256(g.nodes_path) == sha256(again.nodes_path)
    src, dst = read_edges(g.edges_path)
    assert len(src) == g.num_edges == 8500 - g.self_loops_dropped
    assert pq.ParquetFile(g.nodes_path).metadata.num_row_groups == 3  # ceil(2000 / 700)
    ids, y, split, x = read_nodes(g.nodes_path, 4)
    np.testing.assert_array_equal(ids, np.arange(2000))
    # One Parquet row group per chunk; chunks have their own seeds, so no two are copies.
    edge_file = pq.ParquetFile(g.edges_path)
    assert edge_file.metadata.num_row_groups == 9  # ceil(8500 / 1000)
    chunks = [edge_file.read_row_group(i).column("src").to_numpy() for i in range(9)]
    assert len({c.tobytes() for c in chunks}) == 9


# -- counts and layout ----------------------------------------------------------------------------


def test_counts_ids_and_node_table(graph20k):
    config, g, src, dst, ids, y, split, x = graph20k
    n = config.num_nodes
    assert (g.num_nodes, g.num_classes, g.num_features) == (n, 10, 64)
    assert g.seconds > 0
    # Edge rows: E = N * avg_degree / 2 sampled, minus the self-loops, which are few.
    assert config.num_sampled_edges == 160_000
    assert len(src) == g.num_edges == 160_000 - g.self_loops_dropped
    assert 0 < g.self_loops_dropped < 0.02 * 160_000
    assert not np.any(src == dst)
    assert src.min() >= 0 and dst.min() >= 0 and max(src.max(), dst.max()) < n
    # Duplicates are kept in the file but are a small minority.
    key = np.minimum(src, dst) * n + np.maximum(src, dst)
    assert 0.9 * len(key) < len(np.unique(key)) < len(key)
    # Node table: ids 0..N-1 in order, labels in range, float32 features, the split's fractions.
    schema = pq.read_schema(g.nodes_path)
    assert schema.names == ["node_id", "label", "split"] + [f"f{j}" for j in range(64)]
    assert schema.field("node_id").type == pa.int64() and schema.field("label").type == pa.int64()
    assert schema.field("split").type == pa.string() and schema.field("f0").type == pa.float32()
    np.testing.assert_array_equal(ids, np.arange(n))
    assert set(np.unique(y)) == set(range(10))
    fractions = {s: np.mean(split == s) for s in ("train", "val", "test")}
    assert set(np.unique(split)) == {"train", "val", "test"}
    assert fractions["train"] == pytest.approx(0.6, abs=0.015)
    assert fractions["val"] == pytest.approx(0.2, abs=0.015)
    assert x.dtype == np.float32 and x.shape == (n, 64) and np.isfinite(x).all()


def test_ids_do_not_line_up_with_communities(graph20k):
    config, g, src, dst, ids, y, split, x = graph20k
    n = config.num_nodes
    # Neighbouring ids are no more alike than random pairs: label[i] == label[i+1] at about the
    # rate of two random nodes (sum of squared class shares, ~1/C), far below the edges' rate.
    shares = np.bincount(y, minlength=10) / n
    adjacent_same = np.mean(y[1:] == y[:-1])
    assert adjacent_same == pytest.approx(np.sum(shares**2), abs=0.02)
    assert np.mean(y[src] == y[dst]) > 0.7  # about p_intra + (1 - p_intra) / C = 0.91 before label noise, ~0.83 after, vs ~0.1 at random
    # Edges are not local in id space: with random ids P(|src - dst| < N/100) is about 2/100; were
    # communities (~1000 nodes) contiguous id ranges, most intra-community edges would be that close.
    assert np.mean(np.abs(src - dst) < n // 100) < 0.03


# -- structure ------------------------------------------------------------------------------------


@pytest.mark.parametrize("p_intra", [0.8, 0.5])
def test_homophily_follows_p_intra(tmp_path, p_intra):
    config = GeneratorConfig(num_nodes=20_000, num_features=4, p_intra=p_intra, label_noise=0.0, seed=7)
    g = generate_graph(config, tmp_path)
    src, dst = read_edges(g.edges_path)
    _, y, _, _ = read_nodes(g.nodes_path, 4)
    same = np.mean(y[src] == y[dst])
    # Intra-community edges always join one class; the others join one class at the rate of two
    # θ-weighted random nodes (sum of the classes' squared degree shares, >= 1/C).
    deg = degrees(src, dst, config.num_nodes)
    mass = np.bincount(y, weights=deg, minlength=10) / deg.sum()
    expected = p_intra + (1 - p_intra) * np.sum(mass**2)
    assert same == pytest.approx(expected, abs=0.01)
    assert same > 3 / config.num_classes


def test_label_noise_one_makes_labels_random(tmp_path):
    config = GeneratorConfig(num_nodes=20_000, num_features=4, label_noise=1.0, seed=2)
    g = generate_graph(config, tmp_path)
    src, dst = read_edges(g.edges_path)
    _, y, _, _ = read_nodes(g.nodes_path, 4)
    assert np.mean(y[src] == y[dst]) == pytest.approx(0.1, abs=0.01)
    assert np.bincount(y, minlength=10) / len(y) == pytest.approx(np.full(10, 0.1), abs=0.01)


def test_degrees_are_heavy_tailed_and_follow_the_exponent(tmp_path, graph20k):
    config, g, src, dst, *_ = graph20k
    deg = degrees(src, dst, config.num_nodes)
    assert deg.mean() == pytest.approx(16.0, rel=0.02)
    assert deg.max() > 10 * deg.mean()
    # The tail thins as the exponent grows: the 99th percentile over the median drops.
    ratios = []
    for exponent in (2.1, 2.5, 3.5):
        cfg = GeneratorConfig(num_nodes=20_000, num_features=4, degree_exponent=exponent, seed=3)
        h = generate_graph(cfg, tmp_path / str(exponent))
        d = degrees(*read_edges(h.edges_path), cfg.num_nodes)
        ratios.append(np.percentile(d, 99) / np.median(d))
    assert ratios[0] > 1.5 * ratios[1] > 2.25 * ratios[2]
    assert ratios[2] > 2  # even gamma = 3.5 is far from a Poisson (ER) degree distribution


# -- formats --------------------------------------------------------------------------------------


def test_every_format_holds_the_same_edges_and_is_read_by_pyarrow(tmp_path):
    edges = {}
    for fmt in FORMATS:
        g = generate_graph(GeneratorConfig(num_nodes=2000, num_features=2, edge_format=fmt, seed=9), tmp_path / fmt)
        edges[fmt] = read_edges(g.edges_path)
        assert len(edges[fmt][0]) == g.num_edges
    for fmt in FORMATS[1:]:
        np.testing.assert_array_equal(edges[fmt][0], edges["csv"][0])
        np.testing.assert_array_equal(edges[fmt][1], edges["csv"][1])
    assert (tmp_path / "csv" / "edges.csv").read_text().startswith("src,dst\n")
    assert (tmp_path / "tsv" / "edges.tsv").read_text().startswith("src\tdst\n")
    assert (tmp_path / "csv.gz" / "edges.csv.gz").read_bytes()[:2] == b"\x1f\x8b"
    txt = (tmp_path / "txt" / "edges.txt").read_text().splitlines()
    assert txt[0] == "# generated by graphpipe"
    assert txt[1] == f"{edges['csv'][0][0]} {edges['csv'][1][0]}"


def test_every_format_is_read_by_the_ingest_reader(tmp_path):
    from tasks.ingest.edges import edge_format, read_edge_file

    reference = None
    for fmt in FORMATS:
        g = generate_graph(GeneratorConfig(num_nodes=1000, num_features=2, edge_format=fmt, seed=4), tmp_path / fmt)
        cols = read_edge_file(str(g.edges_path), edge_format(str(g.edges_path), "auto"))
        got = (cols.src.to_numpy(), cols.dst.to_numpy())
        assert len(got[0]) == g.num_edges
        if reference is None:
            reference = got
        np.testing.assert_array_equal(got[0], reference[0])
        np.testing.assert_array_equal(got[1], reference[1])


# -- features: informative, but the graph adds much more ------------------------------------------


def _standardize(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x)
    return (t - t.mean(0)) / t.std(0)


def logistic_regression_accuracy(x, y, split, num_classes) -> float:
    """Multinomial logistic regression on standardized features, full-batch Adam; test accuracy."""
    torch.manual_seed(0)
    X, Y = _standardize(x), torch.from_numpy(y)
    train, test = torch.from_numpy(split == "train"), torch.from_numpy(split == "test")
    model = torch.nn.Linear(X.shape[1], num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[train]), Y[train]).backward()
        opt.step()
    return (model(X[test]).argmax(1) == Y[test]).float().mean().item()


class _SymmetricSpmm(torch.autograd.Function):
    """``Â @ h`` for a constant symmetric sparse ``Â``; the gradient is ``Â @ grad`` (``Â^T = Â``)."""

    @staticmethod
    def forward(ctx, a, h):
        ctx.a = a
        return a @ h

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.a @ grad


def gcn_accuracy(src, dst, x, y, split, num_classes, hidden: int = 32, epochs: int = 100) -> float:
    """Full-batch 2-layer GCN (Kipf & Welling): ``softmax(Â relu(Â X W1) W2)``; test accuracy.

    ``Â = D^-1/2 (A + I) D^-1/2`` comes from torch_geometric's ``gcn_norm`` (what ``GCNConv`` uses).
    ``Â X`` has no parameters, so it is computed once; no dropout (weight decay only). This is the
    GCNConv model, made fast enough for a unit test on two cores.
    """
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import to_undirected

    torch.manual_seed(0)
    n = len(y)
    X, Y = _standardize(x), torch.from_numpy(y)
    edge_index = to_undirected(torch.from_numpy(np.stack([src, dst])), num_nodes=n)
    edge_index, weight = gcn_norm(edge_index, num_nodes=n, add_self_loops=True)
    a_hat = torch.sparse_coo_tensor(edge_index, weight, (n, n)).coalesce().to_sparse_csr()
    ax = a_hat @ X
    train, test = torch.from_numpy(split == "train"), torch.from_numpy(split == "test")
    lin1, lin2 = torch.nn.Linear(X.shape[1], hidden), torch.nn.Linear(hidden, num_classes)
    opt = torch.optim.Adam([*lin1.parameters(), *lin2.parameters()], lr=0.02, weight_decay=5e-4)

    def forward() -> torch.Tensor:
        return _SymmetricSpmm.apply(a_hat, torch.relu(lin1(ax)) @ lin2.weight.T) + lin2.bias

    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(forward()[train], Y[train]).backward()
        opt.step()
    with torch.no_grad():
        return (forward()[test].argmax(1) == Y[test]).float().mean().item()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_features_are_informative_but_the_graph_adds_much_more(graph20k):
    config, g, src, dst, ids, y, split, x = graph20k
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steadier than 2 contended threads for these small kernels
    try:
        features_only = logistic_regression_accuracy(x, y, split, config.num_classes)
        gcn = gcn_accuracy(src, dst, x, y, split, config.num_classes)
    finally:
        torch.set_num_threads(threads)
    # Chance is ~0.1; 5% label noise caps any model at 1 - 0.05 * 9/10 = 0.955.
    assert 0.45 < features_only < 0.75
    assert gcn > 0.85
    assert gcn - features_only > 0.2
    assert gcn < 0.955 + 0.01


# -- configuration and command line ---------------------------------------------------------------


def test_config_defaults_and_validation():
    c = GeneratorConfig()
    assert c.resolved_communities_per_class == 5 and c.num_communities == 50
    assert c.num_sampled_edges == 400_000 and c.edge_file_name == "edges.csv"
    assert GeneratorConfig(num_nodes=300, num_classes=10).resolved_communities_per_class == 1
    amazon = GeneratorConfig(num_nodes=2_449_029, avg_degree=2 * 61_859_140 / 2_449_029, num_classes=47)
    assert amazon.num_sampled_edges == 61_859_140
    for bad in (
        dict(num_nodes=1),
        dict(avg_degree=0.0),
        dict(num_classes=1),
        dict(num_features=0),
        dict(communities_per_class=0),
        dict(p_intra=1.5),
        dict(degree_exponent=1.0),
        dict(feature_signal=-1.0),
        dict(label_noise=-0.1),
        dict(split=(0.8, 0.3)),
        dict(split=(0.0, 0.5)),
        dict(edge_format="xml"),
        dict(seed=-1),
        dict(num_nodes=2.5),
        dict(num_nodes=50, num_classes=10, communities_per_class=6),  # 60 communities > 50 nodes
    ):
        with pytest.raises(InputError):
            GeneratorConfig(**bad)


def test_defaults_are_the_calibrated_ones_and_errors_are_one_line():
    # docs/generator.md, "Calibration": edge-cut, degree tail and homophily of real graphs
    c = GeneratorConfig()
    assert (c.p_intra, c.degree_exponent, c.label_noise) == (0.9, 3.0, 0.05)
    with pytest.raises(InputError) as err:
        GeneratorConfig(p_intra=1.5, seed=-1)
    message = str(err.value)
    assert "\n" not in message and message.startswith("generator: ")
    assert "p_intra=1.5: Input should be less than or equal to 1" in message and "seed=-1" in message
    with pytest.raises(InputError, match=r"^generator: num_nodes=True: expected an integer, not a boolean$"):
        GeneratorConfig(num_nodes=True)
    with pytest.raises(InputError, match=r"^generator: colour='red': Extra inputs are not permitted$"):
        GeneratorConfig(colour="red")
    with pytest.raises(InputError, match=r"train \+ val <= 1"):
        GeneratorConfig(split=(0.9, 0.2))
    # integral numbers are integers (numpy's too), lists become tuples; the config is frozen and hashable
    assert GeneratorConfig(num_nodes=np.int64(300), split=[0.5, 0.25]) == GeneratorConfig(num_nodes=300.0, split=(0.5, 0.25))
    with pytest.raises(Exception):
        c.num_nodes = 10
    assert len({GeneratorConfig(), GeneratorConfig()}) == 1


def test_cli_flags_map_onto_the_config():
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    args = parser.parse_args(
        "--out d --nodes 1000 --avg-degree 7.5 --classes 4 --features 3 --p-intra 0.6 "
        "--degree-exponent 3 --feature-signal 2 --label-noise 0.1 --format parquet --seed 8 --progress".split()
    )
    assert args.out == "d" and args.progress is True
    assert config_from_args(args) == GeneratorConfig(
        num_nodes=1000, avg_degree=7.5, num_classes=4, num_features=3, p_intra=0.6, degree_exponent=3.0,
        feature_signal=2.0, label_noise=0.1, edge_format="parquet", seed=8,
    )
    defaults = parser.parse_args(["--out", "d"])
    assert defaults.progress is False and config_from_args(defaults) == GeneratorConfig()
    with pytest.raises(SystemExit):
        parser.parse_args(["--nodes", "10"])  # --out is required
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "d", "--format", "xml"])
    with pytest.raises(InputError):
        config_from_args(parser.parse_args(["--out", "d", "--p-intra", "2"]))


def test_progress_logs_chunks_only_when_asked(tmp_path, caplog):
    config = GeneratorConfig(num_nodes=500, num_features=2)
    with caplog.at_level(logging.INFO, logger="tasks.synthetic.generate"):
        generate_graph(config, tmp_path / "quiet")
        assert not caplog.records
        generate_graph(config, tmp_path / "loud", progress=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any("edges: chunk 1/1" in m for m in messages)
    assert any("nodes: row group 1/1" in m for m in messages)
