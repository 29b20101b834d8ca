"""The feature normalization as one tensor function, shared by the normalize stage
(:func:`tasks.normalize.features.apply_stats`) and the exported predictor
(:class:`tasks.train.model.EdgeIndexPredictor`), so stored features and served predictions use
the same arithmetic. Kept free of store and pipeline imports: the predictor is exported with it.
"""

from __future__ import annotations

import torch


def normalize_rows(x: torch.Tensor, method: str, mean: torch.Tensor | None = None,
                   std: torch.Tensor | None = None) -> torch.Tensor:
    """Normalize dense feature rows ``x`` (float32, ``n x d``) by ``method``.

    Args:
        x: raw features.
        method: ``row`` (divide by the row's L1 norm), ``l2`` (by its L2 norm), ``standard``
            (``(x - mean) / std``), or ``none``. Rows whose norm is zero stay zero.
        mean, std: per-feature statistics (``standard`` only; ``std`` must have no zeros, the
            stage saves 1 there).

    Plain tensor operations without data-dependent shapes, so ``torch.export`` can trace it.
    """
    if method == "row":
        return x / x.abs().sum(dim=1, keepdim=True).clamp(min=1e-30)
    if method == "l2":
        return x / x.square().sum(dim=1, keepdim=True).sqrt().clamp(min=1e-30)
    if method == "standard":
        if mean is None or std is None:
            raise ValueError("standard normalization needs mean and std")
        return (x - mean) / std
    return x
