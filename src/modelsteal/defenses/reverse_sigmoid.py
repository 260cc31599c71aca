"""Reverse sigmoid (Lee et al., "Defending against NN model stealing attacks using deceptive
perturbations", IEEE S&P Workshops 2019/arXiv 2018).

Each posterior entry is pushed through a reversed sigmoid and the result renormalised:

    r(y) = β · ( s(γ · s⁻¹(y)) − 1/2 ),      ỹ = α · ( y − r(y) )

with ``s`` the logistic sigmoid, ``s⁻¹(y) = log(y / (1 − y))`` and ``α`` the normaliser making ``ỹ`` sum
to one. β ≥ 0 scales the perturbation, γ > 0 its shape (the PP paper fixes γ per dataset: MNIST 0.2,
Fashion-MNIST 0.4, CIFAR-10 0.1, others 0.2, and sweeps β ∈ [0, 1]).

Numerics: ``s(γ · s⁻¹(y)) = y^γ / (y^γ + (1 − y)^γ)``, computed in log space, is exact at y = 0 and
y = 1 (no logit of 0 or 1 is ever taken). Entries that would become negative (only for β > 1) are clipped
to zero before renormalising; a row that would vanish falls back to the undefended row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modelsteal.defenses.base import Defense, register_defense


def squashed(y: Tensor, gamma: float) -> Tensor:
    """``s(γ · s⁻¹(y))`` evaluated as ``sigmoid(γ (log y − log(1 − y)))``, safe at 0 and 1."""
    log_y = torch.log(y.clamp_min(0))  # -inf at 0
    log_1my = torch.log1p(-y.clamp_max(1))  # -inf at 1
    # γ·(log y − log(1−y)) is ±inf at the ends, where sigmoid gives exactly 0 or 1.
    z = gamma * (log_y - log_1my)
    return torch.sigmoid(torch.nan_to_num(z, nan=0.0))


@register_defense("reverse-sigmoid")
class ReverseSigmoid(Defense):
    """Reverse-sigmoid perturbation with strength ``beta`` and shape ``gamma``."""

    strength_param = "beta"
    example_strength = 0.6

    def __init__(self, *, beta: float = 0.5, gamma: float = 0.2) -> None:
        if beta < 0:
            raise ValueError(f"reverse sigmoid needs beta >= 0, got {beta}")
        if gamma <= 0:
            raise ValueError(f"reverse sigmoid needs gamma > 0, got {gamma}")
        self.beta = float(beta)
        self.gamma = float(gamma)

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        r = self.beta * (squashed(probs, self.gamma) - 0.5)
        out = (probs - r).clamp_min(0)
        total = out.sum(dim=1, keepdim=True)
        return torch.where(total > 0, out / total.clamp_min(torch.finfo(out.dtype).tiny), probs)

    def __repr__(self) -> str:
        return f"ReverseSigmoid(beta={self.beta}, gamma={self.gamma})"
