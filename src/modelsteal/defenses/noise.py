"""Random-noise baseline of the Prediction Poisoning paper (Orekondy et al., ICLR 2020, Sec. 5.1 (ii)).

Uniform noise is added to the logit scores ``z = log(y / (1 − y))``, the noise vector is projected onto
an ``ε_z`` ball (L1 via the sort-based projection of Duchi et al., ICML 2008, or L2 by rescaling), the
probabilities are recovered with ``ỹ = 1 / (1 + e^{−z̃})`` and renormalised onto the simplex.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modelsteal._simplex import safe_logit
from modelsteal.defenses.base import Defense, register_defense


def project_l1_ball(v: Tensor, radius: float) -> Tensor:
    """Euclidean projection of each row of ``v`` onto ``{w : ||w||_1 <= radius}`` (Duchi et al. 2008, Fig. 1).

    Rows already inside are unchanged. Batched: one sort per call, no Python loop over rows.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if radius == 0:
        return torch.zeros_like(v)
    a = v.abs()
    inside = a.sum(dim=1, keepdim=True) <= radius
    mu, _ = a.sort(dim=1, descending=True)
    cssv = mu.cumsum(dim=1) - radius
    ks = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    cond = mu - cssv / ks > 0
    rho = cond.to(v.dtype).cumsum(dim=1).argmax(dim=1, keepdim=True)  # last index where cond holds
    theta = cssv.gather(1, rho) / (rho + 1).to(v.dtype)
    w = torch.sign(v) * (a - theta).clamp_min(0)
    return torch.where(inside, v, w)


def project_l2_ball(v: Tensor, radius: float) -> Tensor:
    """Rescale rows of ``v`` whose L2 norm exceeds ``radius``."""
    norms = v.norm(dim=1, keepdim=True)
    scale = torch.where(norms > radius, radius / norms.clamp_min(torch.finfo(v.dtype).tiny), torch.ones_like(norms))
    return v * scale


@register_defense("random-noise")
class RandomNoise(Defense):
    """Uniform logit noise projected onto an ``epsilon`` ball (``norm`` "l1" or "l2").

    ``δ_z ~ U(−ε, ε)^K`` is drawn from a seeded generator (reproducible per defense instance), projected
    onto the ε-ball, added to ``z`` and mapped back to the simplex.
    """

    strength_param = "epsilon"
    example_strength = 20.0

    def __init__(self, *, epsilon: float = 1.0, norm: str = "l1", seed: int = 0) -> None:
        if epsilon < 0:
            raise ValueError(f"random noise needs epsilon >= 0, got {epsilon}")
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
        self.epsilon = float(epsilon)
        self.norm = norm
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    def noise(self, like: Tensor) -> Tensor:
        """Draw the next logit noise ``δ_z`` for a batch like ``like``: ``U(−ε, ε)^K`` projected onto the ball."""
        if self._generator is None or self._generator.device != like.device:
            self._generator = torch.Generator(device=like.device).manual_seed(self.seed)
        u = torch.rand(like.shape, generator=self._generator, device=like.device, dtype=like.dtype)
        delta = (2 * u - 1) * self.epsilon
        return project_l1_ball(delta, self.epsilon) if self.norm == "l1" else project_l2_ball(delta, self.epsilon)

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        out = torch.sigmoid(safe_logit(probs) + self.noise(probs))
        return out / out.sum(dim=1, keepdim=True)
