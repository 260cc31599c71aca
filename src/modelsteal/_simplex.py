"""Small numerically safe helpers for rows of probabilities (points on the simplex Δ^K)."""

from __future__ import annotations

import torch
from torch import Tensor

SIMPLEX_ATOL = 1e-4


class SimplexError(ValueError):
    """A defense or output format produced rows that are not probability distributions."""


def check_simplex(probs: Tensor, *, like: Tensor | None = None, atol: float = SIMPLEX_ATOL) -> Tensor:
    """Return ``probs`` after checking every row is finite, non-negative and sums to one.

    ``like`` (the undefended posteriors) fixes the expected shape. Raises :class:`SimplexError` naming the
    first offending row, so a faulty defense fails loudly instead of corrupting an experiment.
    """
    if like is not None and probs.shape != like.shape:
        raise SimplexError(f"defense changed the output shape from {tuple(like.shape)} to {tuple(probs.shape)}")
    if probs.ndim != 2:
        raise SimplexError(f"expected a (N, K) batch of probabilities, got shape {tuple(probs.shape)}")
    if not torch.isfinite(probs).all():
        row = int((~torch.isfinite(probs)).any(dim=1).nonzero()[0])
        raise SimplexError(f"row {row} contains NaN or Inf")
    if (probs < -atol).any():
        row = int((probs < -atol).any(dim=1).nonzero()[0])
        raise SimplexError(f"row {row} has a negative probability ({probs[row].min().item():.3g})")
    sums = probs.sum(dim=1)
    bad = (sums - 1).abs() > atol
    if bad.any():
        row = int(bad.nonzero()[0])
        raise SimplexError(f"row {row} sums to {sums[row].item():.6f}, not 1")
    return probs


def renormalize(probs: Tensor) -> Tensor:
    """Clamp to non-negative and rescale rows to sum to one (a zero row becomes uniform)."""
    probs = probs.clamp_min(0)
    sums = probs.sum(dim=1, keepdim=True)
    uniform = torch.full_like(probs, 1.0 / probs.shape[1])
    return torch.where(sums > 0, probs / sums.clamp_min(torch.finfo(probs.dtype).tiny), uniform)


def safe_logit(probs: Tensor, *, eps: float = 1e-7) -> Tensor:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]``: finite at 0 and 1."""
    p = probs.clamp(eps, 1 - eps)
    return torch.log(p) - torch.log1p(-p)
