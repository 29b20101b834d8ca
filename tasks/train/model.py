"""The GNN and its model registry: every layer's code, for training, inference and export.

A model is an entry of :data:`MODELS` (``train.model``): how to build its PyG convolution for
each layer, which adjacency normalization its propagation reads
(:class:`~tasks.train.batching.AdjacencyNorm`), and how its layer splits into a node-wise
``transform``, the propagation, and a node-wise ``finish``. :meth:`GNN.layer` is the one
implementation of a layer: the training forward runs it on a batch's sparse CSR adjacency, the
full-graph inference (:mod:`tasks.evaluate.inference`) on row blocks of the full adjacency, and
the exported predictor (:class:`EdgeIndexPredictor`) on an :class:`EdgeAdjacency` built from an
``edge_index``. Adding a model means adding an entry here and its name to ``TrainConfig.model``.

- ``gcn``: PyG ``GCNConv`` (``normalize=False``) on ``D^-1/2 (A+I) D^-1/2``; with
  ``diag_lambda`` the Cluster-GCN paper's diagonal enhancement instead,
  ``(D+I)^-1 (A+I) + lambda diag((D+I)^-1 (A+I))`` (Chiang et al. 2019, sec. 3.3).
- ``sage``: PyG ``SAGEConv`` (mean aggregation, root weight).
- ``gat``: PyG ``GATConv`` on the adjacency's ``edge_index`` (self-loops included):
  ``spec.heads`` heads of ``hidden / heads`` channels, concatenated, in hidden layers; one head at
  the output. Attention dropout is ``spec.dropout`` (training only).

``gcn`` and ``sage`` propagate with a fixed linear operator, so a layer is
``finish(A @ transform(x))``: inference computes ``transform`` once per node, streams the sparse
product over memory-bounded row blocks, then ``finish`` per block. Attention weights depend on the
features, so inference runs ``gat``'s layer per row block on the block's rows and all their
neighbours (as PyG's Cluster-GCN example does).

Sparse features (a sparse CSR ``x``, see :mod:`storage.arrays`) stay sparse through the first
layer: its linear map is one sparse-dense product ``x @ W^T`` (``torch.sparse.mm``), then the
propagation runs as for dense input. For standardized sparse features the stored ``x`` is
``raw / std`` and the model holds ``input_shift = mean / std``, so the first layer computes
``(raw / std - mean / std) W^T = x W^T - input_shift W^T``: the constant row is folded in after
the product, before the propagation, which gives exactly the dense layer's output. Input dropout
drops stored entries (zeros stay zeros, exactly as dense dropout on ``row``/``l2``/``none``
features); with ``standard`` the shift is not dropped, a milder regularizer than dropping dense
standardized entries (``auto`` picks ``standard`` only for features with negative values, which are
rarely sparse). ``gat`` densifies sparse input (per batch or block) before its layer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, GCNConv, SAGEConv
from torch_geometric.utils import scatter

from storage.checkpoints import MODEL as CHECKPOINT_MODEL
from storage.checkpoints import Checkpoints
from tasks.errors import InputError
from tasks.normalize.transform import normalize_rows
from tasks.train.batching import AdjacencyNorm, edge_weights

MODEL_FILE = CHECKPOINT_MODEL  # the finished run's record in a checkpoint set (named by storage.checkpoints)


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild the model around saved weights.

    Args:
        kind: a key of :data:`MODELS` (``gcn``, ``sage``, ``gat``).
        in_dim, hidden, out_dim: input features, hidden width, classes.
        num_layers: graph convolutions (ReLU between them).
        dropout: input dropout of every layer (and ``gat``'s attention dropout).
        input_shift: sparse standardized input: the first layer subtracts ``input_shift W^T``.
        heads: ``gat``'s attention heads in hidden layers (``hidden`` must be a multiple).
        diag_lambda: ``gcn`` only: the diagonal enhancement's ``lambda`` (``None``: the plain
            symmetric normalization).
    """

    kind: str
    in_dim: int
    hidden: int
    out_dim: int
    num_layers: int
    dropout: float
    input_shift: bool = False
    heads: int = 1
    diag_lambda: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in MODELS:
            raise ValueError(f"unknown model {self.kind!r}: expected one of {', '.join(sorted(MODELS))}")
        if self.diag_lambda is not None and self.kind != "gcn":
            raise ValueError(f"diag_lambda (diagonal enhancement) applies to gcn only, not {self.kind}")
        if self.kind == "gat" and (self.heads < 1 or self.hidden % self.heads):
            raise ValueError(f"gat: hidden={self.hidden} must be a multiple of heads={self.heads}")

    @classmethod
    def from_config(cls, config: Any, in_dim: int, out_dim: int, input_shift: bool = False) -> ModelSpec:
        """The spec of the model ``config`` (a :class:`~tasks.config.TrainConfig`) describes, for
        ``in_dim`` features and ``out_dim`` classes: the training loop builds its model here, so a
        model's options go from the config to the model without passing through the loop."""
        heads = config.heads if config.model == "gat" else 1  # other models have no heads: weights stay comparable
        return cls(config.model, in_dim, config.hidden, out_dim, config.num_layers, config.dropout,
                   input_shift=input_shift, heads=heads, diag_lambda=config.diag_lambda)

    def to_dict(self) -> dict:
        """The spec as plain data (saved in checkpoints)."""
        return asdict(self)

    @property
    def adjacency(self) -> AdjacencyNorm:
        """The adjacency normalization this model's propagation reads (batches and row blocks)."""
        return MODELS[self.kind].adjacency(self)

    def same_architecture(self, other: ModelSpec) -> bool:
        """Whether weights saved for ``other`` fit this model (every field but ``dropout`` equal)."""
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(self) if f.name != "dropout")


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout from one ``rand_like`` comparison: the same distribution as
    ``F.dropout``, whose CPU kernel (``bernoulli_``) is single-threaded and several times slower."""
    if not training or p == 0.0:
        return x
    if x.layout == torch.sparse_csr:  # drop stored entries: zeros stay zeros, as with dense input
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), dropout(x.values(), p, training),
                                       size=x.size(), check_invariants=False)
    return x * torch.rand_like(x).ge_(p).to(x.dtype).mul_(1.0 / (1.0 - p))


def is_sparse(x: torch.Tensor) -> bool:
    """Whether ``x`` is a sparse CSR tensor (features kept sparse)."""
    return x.layout == torch.sparse_csr


def first_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """The first ``rows`` rows of a dense or sparse CSR ``x`` (a view for dense ``x``)."""
    if rows == x.size(0):
        return x
    if not is_sparse(x):
        return x[:rows]
    crow = x.crow_indices()[: rows + 1]
    nnz = int(crow[-1])
    return torch.sparse_csr_tensor(crow, x.col_indices()[:nnz], x.values()[:nnz], size=(rows, x.size(1)),
                                   check_invariants=False)


class SymmetricSpMM(torch.autograd.Function):
    """``adj @ x`` for a symmetric sparse ``adj``: the gradient w.r.t. ``x`` is ``adj @ grad``,
    so backward reuses ``adj`` instead of transposing the CSR matrix as ``torch.sparse.mm`` does."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adj = adj
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return None, torch.sparse.mm(ctx.adj, grad)


@dataclass
class EdgeAdjacency:
    """An adjacency as weighted entries: ``edge_index[0]`` the source row, ``edge_index[1]`` the
    target row (PyG's convention), ``weight`` per entry, ``num_rows`` targets. What the exported
    predictor uses (no sparse tensors, so ``torch.export`` can trace it) and what attention layers
    read in inference blocks."""

    edge_index: torch.Tensor
    weight: torch.Tensor
    num_rows: int

    def matmul(self, z: torch.Tensor) -> torch.Tensor:
        """``A @ z``: each target's weighted sum of its sources' rows."""
        src, dst = self.edge_index[0], self.edge_index[1]
        return scatter(z[src] * self.weight.unsqueeze(1), dst, dim=0, dim_size=self.num_rows, reduce="sum")

    @classmethod
    def from_edge_index(cls, edge_index: torch.Tensor, num_nodes: int, norm: AdjacencyNorm) -> EdgeAdjacency:
        """The square adjacency of an undirected graph given as ``edge_index`` (``2 x E``, both
        directions of each edge, no self-loops) under ``norm``, with degrees counted here."""
        src, dst = edge_index[0], edge_index[1]
        deg = scatter(torch.ones(dst.shape, dtype=torch.float32, device=dst.device), dst, dim=0,
                      dim_size=num_nodes, reduce="sum")
        if norm.self_loops:
            loop = torch.arange(num_nodes, dtype=edge_index.dtype, device=edge_index.device)
            src, dst = torch.cat([src, loop]), torch.cat([dst, loop])
        weight = edge_weights(norm, dst, src, deg[dst], deg[src], xp=torch).to(torch.float32)
        return cls(torch.stack([src, dst]), weight, num_nodes)


Adjacency = torch.Tensor | EdgeAdjacency  # a sparse CSR (targets x sources) tensor or an edge list


def num_targets(adj: Adjacency) -> int:
    """The number of target rows of ``adj``."""
    return adj.num_rows if isinstance(adj, EdgeAdjacency) else adj.size(0)


def edge_index_of(adj: Adjacency) -> torch.Tensor:
    """``adj``'s entries as a PyG ``edge_index`` (source row, target row)."""
    if isinstance(adj, EdgeAdjacency):
        return adj.edge_index
    crow = adj.crow_indices()
    row = torch.repeat_interleave(torch.arange(adj.size(0), device=crow.device), crow.diff())
    return torch.stack([adj.col_indices(), row])


class GNN(nn.Module):
    """``num_layers`` graph convolutions of ``spec.kind`` with ReLU between them and input dropout
    before each; see the module docstring for the layer decomposition."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        dims = [spec.in_dim] + [spec.hidden] * (spec.num_layers - 1) + [spec.out_dim]
        last = spec.num_layers - 1
        self.convs = nn.ModuleList(
            self.kind.conv(spec, a, b, i == last) for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))
        )
        if spec.input_shift:
            self.register_buffer("input_shift", torch.zeros(spec.in_dim))

    def set_input_shift(self, shift) -> None:
        """Set the constant row subtracted from the (sparse, standardized) input features."""
        if not self.spec.input_shift:
            raise ValueError("this model was built without input_shift (ModelSpec.input_shift=False)")
        self.input_shift.copy_(torch.as_tensor(shift, dtype=torch.float32))

    @property
    def kind(self) -> ModelKind:
        """This model's registry entry (:data:`MODELS`)."""
        return MODELS[self.spec.kind]

    @property
    def num_layers(self) -> int:
        """The number of graph convolutions."""
        return len(self.convs)

    @property
    def propagates_linearly(self) -> bool:
        """Whether every layer is ``layer_finish(A @ layer_transform(x))`` with ``A`` fixed by the
        graph (``gcn``, ``sage``): inference can then stream the product over row blocks."""
        return self.kind.transform is not None

    def project(self, lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``x W^T`` of a linear map ``lin`` (without its bias): a sparse-dense product for sparse
        ``x``, minus ``input_shift W^T`` for standardized sparse features. Dense ``x`` is taken
        as the normalized features themselves (no shift)."""
        weight = lin.weight
        if not is_sparse(x):
            return F.linear(x, weight)
        out = torch.sparse.mm(x, weight.t())
        if self.spec.input_shift:
            out = out - self.input_shift @ weight.t()
        return out

    def dense_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as a dense tensor of normalized features (sparse CSR input densified, minus the shift)."""
        if not is_sparse(x):
            return x
        dense = x.to_dense()
        return dense - self.input_shift if self.spec.input_shift else dense

    def propagate(self, adj: Adjacency, z: torch.Tensor) -> torch.Tensor:
        """``adj @ z``. A square symmetric batch adjacency under autograd uses
        :class:`SymmetricSpMM` (no transposed copy in backward)."""
        if isinstance(adj, EdgeAdjacency):
            return adj.matmul(z)
        if self.spec.adjacency.symmetric and adj.size(0) == adj.size(1) and torch.is_grad_enabled():
            return SymmetricSpMM.apply(adj, z)
        return torch.sparse.mm(adj, z)

    def layer_transform(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The node-wise part of layer ``i`` before propagation (linear models only)."""
        return self.kind.transform(self, self.convs[i], x)

    def layer_finish(self, i: int, agg: torch.Tensor, x_rows: torch.Tensor) -> torch.Tensor:
        """The node-wise part of layer ``i`` after propagation, for target rows ``x_rows`` (their
        layer input) with propagated ``agg``; ReLU on every layer but the last."""
        out = self.kind.finish(self, self.convs[i], agg, x_rows)
        return out if i == self.num_layers - 1 else F.relu(out)

    def layer(self, i: int, x: torch.Tensor, adj: Adjacency, num_rows: int | None = None) -> torch.Tensor:
        """Layer ``i`` for the target rows of ``adj``, reading source rows ``x``.

        Args:
            i: the layer.
            x: source rows (dense, or sparse CSR for the first layer); the first
                ``num_targets(adj)`` rows of ``x`` are the targets.
            adj: a sparse CSR ``(targets, sources)`` adjacency normalized by ``spec.adjacency``
                (batching), or an :class:`EdgeAdjacency` (predictor, inference blocks).
            num_rows: ignored (the adjacency's rows are the targets); kept for callers that pass it.

        ReLU follows every layer but the last.
        """
        rows = num_targets(adj)
        if self.propagates_linearly:
            return self.layer_finish(i, self.propagate(adj, self.layer_transform(i, x)), first_rows(x, rows))
        out = self.kind.attend(self, self.convs[i], self.dense_input(x), adj, rows)
        return out if i == self.num_layers - 1 else F.relu(out)

    def forward(self, x: torch.Tensor, adj: Adjacency) -> torch.Tensor:
        """Every layer on a square adjacency (a training batch, or the predictor's whole graph)."""
        for i in range(self.num_layers):
            x = dropout(x, self.spec.dropout, self.training)
            x = self.layer(i, x, adj)
        return x


# --- the model registry ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelKind:
    """A model of the registry.

    Args:
        conv: ``(spec, in_dim, out_dim, is_last) -> module``: layer ``i``'s PyG convolution.
        adjacency: ``spec -> AdjacencyNorm``: the adjacency the propagation reads.
        transform, finish: linear models: ``(gnn, conv, x) -> z`` before the propagation and
            ``(gnn, conv, A @ z, x_rows) -> out`` after it (ReLU is added by the GNN).
        attend: other models: ``(gnn, conv, dense x, adj, num_targets) -> out``, the whole layer
            on the targets of ``adj`` (ReLU is added by the GNN).
    """

    conv: Callable[[ModelSpec, int, int, bool], nn.Module]
    adjacency: Callable[[ModelSpec], AdjacencyNorm]
    transform: Callable[[GNN, nn.Module, torch.Tensor], torch.Tensor] | None = None
    finish: Callable[[GNN, nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    attend: Callable[[GNN, nn.Module, torch.Tensor, Adjacency, int], torch.Tensor] | None = None


def _gcn_adjacency(spec: ModelSpec) -> AdjacencyNorm:
    return AdjacencyNorm("sym") if spec.diag_lambda is None else AdjacencyNorm("row", float(spec.diag_lambda))


def _gcn_finish(gnn: GNN, conv: nn.Module, agg: torch.Tensor, x_rows: torch.Tensor) -> torch.Tensor:
    return agg + conv.bias if conv.bias is not None else agg


def _sage_finish(gnn: GNN, conv: nn.Module, agg: torch.Tensor, x_rows: torch.Tensor) -> torch.Tensor:
    # mean aggregation commutes with the linear map: lin_l(mean x_j) = mean(x_j W_l^T) + b_l
    out = agg + conv.lin_l.bias if conv.lin_l.bias is not None else agg
    return out + gnn.project(conv.lin_r, x_rows) if conv.root_weight else out


def _gat_conv(spec: ModelSpec, a: int, b: int, last: bool) -> nn.Module:
    if last:
        return GATConv(a, b, heads=1, concat=False, dropout=spec.dropout, add_self_loops=False)
    return GATConv(a, b // spec.heads, heads=spec.heads, concat=True, dropout=spec.dropout, add_self_loops=False)


def _gat_attend(gnn: GNN, conv: nn.Module, x: torch.Tensor, adj: Adjacency, rows: int) -> torch.Tensor:
    edge_index = edge_index_of(adj)  # the adjacency's structure, self-loops included; weights unused
    return conv(x, edge_index) if rows == x.size(0) else conv((x, x[:rows]), edge_index)


MODELS: dict[str, ModelKind] = {
    "gcn": ModelKind(
        conv=lambda spec, a, b, last: GCNConv(a, b, normalize=False, cached=False),
        adjacency=_gcn_adjacency,
        transform=lambda gnn, conv, x: gnn.project(conv.lin, x),
        finish=_gcn_finish,
    ),
    "sage": ModelKind(
        conv=lambda spec, a, b, last: SAGEConv(a, b, aggr="mean"),
        adjacency=lambda spec: AdjacencyNorm("mean"),
        transform=lambda gnn, conv, x: gnn.project(conv.lin_l, x),
        finish=_sage_finish,
    ),
    "gat": ModelKind(conv=_gat_conv, adjacency=lambda spec: AdjacencyNorm("ones"), attend=_gat_attend),
}


class EdgeIndexPredictor(nn.Module):
    """The exported predictor: raw features + ``edge_index`` -> class logits.

    Applies the saved feature normalization (:func:`tasks.normalize.transform.normalize_rows`),
    then the trained model's own layers (:meth:`GNN.forward`) on the graph given as an
    ``edge_index`` (2 x E, both directions of each undirected edge, no self-loops), normalized as
    in training (:class:`EdgeAdjacency`). Self-contained, so it can be saved with
    ``torch.export`` and served by MLflow.
    """

    def __init__(self, gnn: GNN, method: str, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.gnn = gnn
        self.method = method
        d = gnn.spec.in_dim
        self.register_buffer("mean", mean if mean is not None else torch.zeros(d))
        self.register_buffer("std", std if std is not None else torch.ones(d))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = normalize_rows(x, self.method, self.mean, self.std)
        adj = EdgeAdjacency.from_edge_index(edge_index, h.size(0), self.gnn.spec.adjacency)
        return self.gnn(h, adj)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device=cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`plain_checkpoint` + ``torch.save``, loaded without unpickling
    anything but tensors, numbers, strings, lists and dicts (``weights_only=True``): the store and
    the MLflow artifact store (a champion's weights) are never trusted to run code.

    Raises :class:`~tasks.errors.UnsafeFileError` (one line) for a file holding anything else."""
    from storage.checkpoints import load_torch_bytes

    return load_torch_bytes(Path(path).read_bytes(), str(path))


def plain_checkpoint(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays turned into Python numbers and tensors, so that
    :func:`load_checkpoint` (``weights_only=True``) accepts it; other types are an error here, at
    save time, rather than a refused checkpoint later."""
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass, pickled as numpy
        return obj.item()
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):  # an OrderedDict (a state dict) stays one; other mappings become dicts
        kind = OrderedDict if isinstance(obj, OrderedDict) else dict
        return kind((k, plain_checkpoint(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return (tuple if type(obj) is tuple else list)(plain_checkpoint(v) for v in obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (tensors and plain data only)")


def load_trained(checkpoint_dir: str | Path) -> tuple[GNN, dict[str, Any]]:
    """The best-validation model of a training run (on the CPU, in eval mode) and its record.

    Args:
        checkpoint_dir: the run's checkpoint set (``TrainResult.checkpoint_dir``), read through
            :class:`storage.checkpoints.Checkpoints` (tensors and plain data only).

    Raises FileNotFoundError when the set holds no finished run.
    """
    saved = Checkpoints.at(str(checkpoint_dir)).model()
    if saved is None:
        raise FileNotFoundError(f"{checkpoint_dir}: no finished training in this checkpoint set")
    model = GNN(ModelSpec(**saved["spec"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, saved
