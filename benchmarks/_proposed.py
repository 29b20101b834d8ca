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
