"""Extraction error of Tramèr et al. (USENIX Security 2016, Sec. 3, "Extraction accuracy").

For a victim ``f`` and an extracted model ``f̂`` the distance between their answers is

- the total variation distance ``d(y, y') = ½ Σ_i |y[i] − y'[i]|`` for class probabilities,
- the 0-1 distance ``d(y, y') = 1[y ≠ y']`` for class labels;

``R_test`` averages it over a test set ``D`` and ``R_unif`` over points ``U`` drawn uniformly from the
feature space; the paper's *extraction accuracy* is ``1 − R_test`` and ``1 − R_unif``.

Example::

    r = r_test(victim_probs, clone_probs, x_test)                  # probabilities: TV distance
    r = r_unif(victim_labels, clone_labels, sampler=space.sample, labels=True)
    extraction_accuracy(r)                                         # 1 - r
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["extraction_accuracy", "extraction_error", "r_test", "r_unif", "total_variation", "zero_one"]

Predictor = Callable[[Tensor], Tensor]
Sampler = Callable[..., Tensor]


def total_variation(p: Tensor, q: Tensor) -> Tensor:
    """Per-row total variation distance ``½ Σ_i |p_i − q_i|`` of two ``(N, K)`` batches."""
    if p.shape != q.shape or p.ndim != 2:
        raise ValueError(f"total variation needs two (N, K) batches of one shape, got {tuple(p.shape)} and "
                         f"{tuple(q.shape)}")
    return 0.5 * (p - q.to(p.dtype)).abs().sum(dim=1)


def _labels(y: Tensor) -> Tensor:
    return y.argmax(dim=1) if y.ndim == 2 else y.long()


def zero_one(y: Tensor, y_hat: Tensor) -> Tensor:
    """Per-row 0-1 distance of two label batches; ``(N, K)`` rows are compared by their argmax."""
    a, b = _labels(y), _labels(y_hat)
    if a.shape != b.shape:
        raise ValueError(f"label batches differ in length: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.cpu() != b.cpu()).to(torch.float64)


def extraction_error(y: Tensor, y_hat: Tensor, *, labels: bool = False) -> float:
    """Mean distance between two batches of answers: TV for probabilities, 0-1 with ``labels=True``.

    Label vectors ``(N,)`` are always compared with the 0-1 distance.
    """
    if len(y) == 0:
        raise ValueError("extraction error over an empty set")
    if labels or y.ndim == 1 or y_hat.ndim == 1:
        return float(zero_one(y, y_hat).mean())
    return float(total_variation(y.detach().cpu().double(), y_hat.detach().cpu().double()).mean())


def r_test(f: Predictor, f_hat: Predictor, x: Tensor, *, labels: bool = False) -> float:
    """``R_test(f, f̂)``: mean distance of the two models' answers on the test inputs ``x``.

    ``f`` and ``f̂`` map a batch ``(N, D)`` to probabilities ``(N, K)`` or labels ``(N,)``.
    """
    with torch.no_grad():
        return extraction_error(f(x), f_hat(x), labels=labels)


def r_unif(f: Predictor, f_hat: Predictor, *, sampler: Sampler, n: int = 10_000, seed: int = 0,
           labels: bool = False) -> float:
    """``R_unif(f, f̂)``: mean distance on ``n`` points ``sampler(n, generator=g)`` uniform over the domain.

    ``sampler`` is typically :meth:`modelsteal.data.tabular.FeatureSpace.sample`.
    """
    if n < 1:
        raise ValueError(f"R_unif needs n >= 1 points, got {n}")
    u = sampler(n, generator=torch.Generator().manual_seed(int(seed)))
    return r_test(f, f_hat, u, labels=labels)


def extraction_accuracy(r: float) -> float:
    """The paper's extraction accuracy ``1 − R``."""
    if not 0.0 <= r <= 1.0 + 1e-12:
        raise ValueError(f"an extraction error lies in [0, 1], got {r}")
    return 1.0 - r
