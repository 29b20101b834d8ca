"""The GNN: PyG ``GCNConv`` (default) or ``SAGEConv`` layers, run on sparse adjacency matrices.

Training and layer-wise inference pass a pre-normalized sparse CSR adjacency
(:mod:`tasks.train.batching`), so each layer is one sparse-dense matrix product instead of
scatter-based message passing. The same layers also accept an ``edge_index`` (with GCN
normalization computed by PyG), which is what the exported predictor uses.

Sparse features (a sparse CSR ``x``, see :mod:`storage.arrays`) stay sparse through the first
layer: its linear map is one sparse-dense product ``x @ W^T`` (``torch.sparse.mm``), then the
propagation runs as for dense input. For standardized sparse features the stored ``x`` is
``raw / std`` and the model holds ``input_shift = mean / std``, so the first layer computes
``(raw / std - mean / std) W^T = x W^T - input_shift W^T``: the constant row is folded in after
the product, before the propagation, which gives exactly the dense layer's output. Input dropout
drops stored entries (zeros stay zeros, exactly as dense dropout on ``row``/``l2``/``none``
features); with ``standard`` the shift is not dropped, a milder regularizer than dropping dense
standardized entries (``auto`` picks ``standard`` only for features with negative values, which are
rarely sparse).
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GCNConv, SAGEConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import spmm

from tasks.errors import InputError, UnsafeFileError

MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild the model around saved weights."""

    kind: Literal["gcn", "sage"]
    in_dim: int
    hidden: int
    out_dim: int
    num_layers: int
    dropout: float
    input_shift: bool = False  # sparse standardized input: the first layer subtracts input_shift W^T

    def to_dict(self) -> dict:
        return asdict(self)


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


class GNN(nn.Module):
    """``num_layers`` graph convolutions with ReLU and dropout between them."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        dims = [spec.in_dim] + [spec.hidden] * (spec.num_layers - 1) + [spec.out_dim]
        self.convs = nn.ModuleList(
            GCNConv(a, b, normalize=False, cached=False) if spec.kind == "gcn" else SAGEConv(a, b, aggr="mean")
            for a, b in zip(dims[:-1], dims[1:])
        )
        if spec.input_shift:
            self.register_buffer("input_shift", torch.zeros(spec.in_dim))

    def set_input_shift(self, shift) -> None:
        """Set the constant row subtracted from the (sparse, standardized) input features."""
        if not self.spec.input_shift:
            raise ValueError("this model was built without input_shift (ModelSpec.input_shift=False)")
        self.input_shift.copy_(torch.as_tensor(shift, dtype=torch.float32))

    def project(self, lin: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``x W^T`` of the first layer's linear map ``lin`` (without its bias): a sparse-dense
        product for sparse ``x``, minus ``input_shift W^T`` for standardized sparse features."""
        weight = lin.weight
        out = torch.sparse.mm(x, weight.t()) if is_sparse(x) else F.linear(x, weight)
        if self.spec.input_shift:
            out = out - self.input_shift @ weight.t()
        return out

    def _sparse_input_layer(self, i: int, x: torch.Tensor, adj: torch.Tensor, num_rows: int | None) -> torch.Tensor:
        """Layer ``i`` on sparse CSR features: project first (sparse-dense product), then
        propagate; the same result as the dense layer on the densified, normalized features."""
        conv = self.convs[i]
        if self.spec.kind == "gcn":
            z = self.project(conv.lin, x)
            if adj.size(0) == adj.size(1) and torch.is_grad_enabled():
                out = SymmetricSpMM.apply(adj, z)
            else:
                out = torch.sparse.mm(adj, z)
            if conv.bias is not None:
                out = out + conv.bias
        else:
            rows = adj.size(0) if num_rows is None else num_rows
            # mean aggregation commutes with the linear map: lin_l(mean x_j) = mean(x_j W^T) + b
            out = spmm(adj, self.project(conv.lin_l, x), reduce="mean")
            if conv.lin_l.bias is not None:
                out = out + conv.lin_l.bias
            if conv.root_weight:
                out = out + self.project(conv.lin_r, x)[:rows]
        return out if i == self.num_layers - 1 else F.relu(out)

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def layer(self, i: int, x: torch.Tensor, adj: torch.Tensor, num_rows: int | None = None) -> torch.Tensor:
        """Layer ``i`` for the ``adj.size(0)`` target rows, reading source rows ``x``.

        ``adj`` is ``(targets, sources)``; the first ``targets`` rows of ``x`` are the targets.
        ReLU follows every layer but the last.
        """
        if is_sparse(x):
            return self._sparse_input_layer(i, x, adj, num_rows)
        conv = self.convs[i]
        if self.spec.kind == "gcn" and adj.size(0) == adj.size(1) and torch.is_grad_enabled():
            # a training batch: D^-1/2 (A+I) D^-1/2 is symmetric; same result as conv(x, adj)
            out = SymmetricSpMM.apply(adj, conv.lin(x))
            if conv.bias is not None:
                out = out + conv.bias
        elif self.spec.kind == "sage":
            rows = adj.size(0) if num_rows is None else num_rows
            out = conv((x, x[:rows]), adj)
        else:
            out = conv(x, adj)
        return out if i == self.num_layers - 1 else F.relu(out)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_layers):
            x = dropout(x, self.spec.dropout, self.training)
            x = self.layer(i, x, adj)
        return x


class EdgeIndexPredictor(nn.Module):
    """The exported predictor: raw features + ``edge_index`` -> class logits.

    Applies the saved feature normalization, then the trained layers on the graph given as an
    ``edge_index`` (2 x E, both directions of each undirected edge). Self-contained, so it can be
    saved with ``torch.export`` and served by MLflow.
    """

    def __init__(self, gnn: GNN, method: str, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.gnn = gnn
        self.method = method
        d = gnn.spec.in_dim
        self.register_buffer("mean", mean if mean is not None else torch.zeros(d))
        self.register_buffer("std", std if std is not None else torch.ones(d))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "row":
            return x / x.abs().sum(dim=1, keepdim=True).clamp(min=1e-30)
        if self.method == "l2":
            return x / x.square().sum(dim=1, keepdim=True).sqrt().clamp(min=1e-30)
        if self.method == "standard":
            return (x - self.mean) / self.std
        return x

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.normalize(x)
        weight = None
        if self.gnn.spec.kind == "gcn":
            edge_index, weight = gcn_norm(edge_index, None, h.size(0), add_self_loops=True)
        for i, conv in enumerate(self.gnn.convs):
            h = conv(h, edge_index, weight) if weight is not None else conv(h, edge_index)
            if i < len(self.gnn.convs) - 1:
                h = F.relu(h)
        return h


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
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        reason = f"it would call {found.group(1)}" if found else "it holds objects other than tensors and plain data"
        raise UnsafeFileError(
            f"{path}: refused to load this checkpoint: {reason} (checkpoints may only hold tensors, numbers, "
            "strings, lists and dicts; nothing else is ever unpickled, so a tampered file cannot run code)"
        ) from None


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
    """The best-validation model of a training run (on the CPU, in eval mode) and its record."""
    from storage.checkpoints import Checkpoints

    saved = Checkpoints.at(str(checkpoint_dir)).model()  # through the store: also a remote one
    if saved is None:
        raise FileNotFoundError(f"no trained model in the checkpoint set {checkpoint_dir}")
    model = GNN(ModelSpec(**saved["spec"]))
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model, saved
