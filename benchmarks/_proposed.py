"""Benchmark-only prototypes of the proposed training changes (``bench_train_epoch.py --proposed``).

Not used by graphpipe. Each function mirrors one proposal in benchmarks/RESULTS.md:

- ``fast_dropout``: dropout from one ``torch.rand_like`` comparison instead of ``F.dropout``, whose
  CPU kernel (``aten::bernoulli_``) costs ~20 ns per element, single-threaded, on torch 2.13 CPU;
- ``SymmetricSpMM``: ``adj @ x`` whose backward reuses ``adj`` (the batch's GCN adjacency
  ``D^-1/2 (A+I) D^-1/2`` is symmetric), instead of ``torch.sparse.mm``'s backward, which
  transposes the CSR matrix (COO conversion + sort) on every call;
- ``ProposedGNN``: ``tasks.model.GNN`` with both (same parameters and state_dict keys).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.model import GNN


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    keep = torch.rand_like(x).ge_(p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep


class SymmetricSpMM(torch.autograd.Function):
    """``adj @ x`` for a symmetric sparse ``adj``: the gradient w.r.t. ``x`` is ``adj @ grad``."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, torch.sparse.mm(ctx.adj, grad)


class ProposedGNN(GNN):
    """GNN with ``fast_dropout`` and, for GCN on a square (batch) adjacency, ``SymmetricSpMM``."""

    def __init__(self, spec, *, dropout: bool = True, spmm: bool = True):
        super().__init__(spec)
        self.use_fast_dropout, self.use_sym = dropout, spmm

    def layer(self, i, x, adj, num_rows=None):
        conv = self.convs[i]
        if self.use_sym and self.spec.kind == "gcn" and adj.size(0) == adj.size(1) and torch.is_grad_enabled():
            out = SymmetricSpMM.apply(adj, conv.lin(x))
            if conv.bias is not None:
                out = out + conv.bias
            return out if i == self.num_layers - 1 else F.relu(out)
        return super().layer(i, x, adj, num_rows)

    def forward(self, x, adj):
        for i in range(self.num_layers):
            x = fast_dropout(x, self.spec.dropout, self.training) if self.use_fast_dropout else \
                F.dropout(x, p=self.spec.dropout, training=self.training)
            x = self.layer(i, x, adj)
        return x


@torch.no_grad()
def infer_full_graph_lazy(model, graph, device, block_nodes: int = 20_000, hidden_dtype=None):
    """tasks.evaluate.infer_full_graph without the list of every block's adjacency.

    The current code builds ``row_block`` for all blocks up front and keeps them for both layers:
    a second copy of the whole normalized adjacency (int64 columns + float32 values + halo ids,
    ~14 bytes per entry). Here each block is built when used (once per layer). ``hidden_dtype``
    (e.g. ``np.float16``) optionally stores the intermediate layer output in a smaller type.
    """
    import numpy as np

    from tasks.batching import block_bounds, row_block

    model.eval()
    kind = model.spec.kind
    bounds = block_bounds(graph, block_nodes)
    h = graph.x
    hidden = graph.x
    for i in range(model.num_layers):
        last = i == model.num_layers - 1
        out = None
        for a, b in bounds:
            block = row_block(graph, a, b, kind)
            x_src = torch.from_numpy(np.ascontiguousarray(h[block.sources], dtype=np.float32)).to(device)
            y = model.layer(i, x_src, block.adj.to(device), block.stop - block.start).cpu().numpy()
            if out is None:
                dtype = np.float32 if last or hidden_dtype is None else hidden_dtype
                out = np.empty((graph.num_nodes, y.shape[1]), dtype=dtype)
            out[block.start : block.stop] = y
        if last:
            return out, hidden
        hidden = h = out
    raise AssertionError("unreachable")
