"""PRADA-aware JBDA: Jacobian-based augmentation whose synthetic points are spaced like a benign stream.

Why plain JBDA is caught. PRADA (Juuti et al., EuroS&P 2019) keeps, per client and predicted class, the
earlier queries and tests whether the minimum L2 distances of new queries to them are normally distributed
(Shapiro-Wilk ``W < δ`` flags the client). A JBDA child is ``clip(x + λ·sign(∇))``: its distance to its parent
is ``λ·‖sign(∇)‖₂`` shrunk by the clip, nearly the same for every child of a round, so the distance stream
is a few spikes, far from normal. The benign queries PRADA was calibrated on (natural images) give a broad,
roughly normal spread of distances.

The idea (ours; it follows from what PRADA tests, not from a published attack): choose each child's step so
that its distance to its parent is a draw from a normal distribution ``N(μ, σ²)`` fitted to a *benign*
distance stream the attacker can compute itself — the minimum distance of each seed to the earlier seeds
with the same victim label, which its first (seed) queries already paid for. Then the children's distances,
which are the minimum distances PRADA records whenever the parent is the closest earlier query of that class,
look like the seeds' benign stream. The direction stays Papernot et al.'s ``sign(∇_x s_c(x))`` with the
periodic sign of ``λ_ρ``; only its length changes. Per child ``i``:

1. draw ``t_i = |μ + σ·z_i|``, ``z_i ~ N(0, 1)`` (``μ, σ``: ``distance_mean`` / ``distance_std``, or the
   mean and population std of the seeds' stream, estimated in round 0);
2. find by bisection the scale ``s_i ≥ 0`` with ``‖clip(x_i + s_i·u_i) − x_i‖₂ = t_i``, ``u_i =
   sign(λ_ρ)·sign(∇)`` (the distance grows with ``s_i``; a target beyond what the clip allows takes the
   largest step it allows).

A larger ``t`` than plain JBDA's ``λ√d`` also means bolder steps; the clone accuracy the attack reaches with the
detector on is what ``configs/prada/prada-digits.yaml`` measures (``docs/detection.md``). The attack reports
(``info``) the ``μ, σ`` used and, when the API reports flags, ``detected`` and ``queries_to_detection``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from modelsteal.attacks.base import StealResult, register_attack
from modelsteal.attacks.evasion._wrapping import DetectionLog
from modelsteal.attacks.jbda import JBDA, input_jacobian
from modelsteal.blackbox import QueryBudget

_BISECTION_STEPS = 40
_SPACING_SEED = 0x5BACE  # mixed into the attack's seed for the target distances


def seed_stream(x: Tensor, labels: Tensor) -> np.ndarray:
    """The benign distance stream of ``x`` (rows in query order) as PRADA would record it with every row admitted:
    for each row, the minimum L2 distance to the earlier rows with the same label (the first row of a label
    gives none). Grouped by label, which does not change its mean and std."""
    flat = x.flatten(1).double()
    out = []
    for c in labels.unique().tolist():
        rows = flat[labels == c]
        if len(rows) < 2:
            continue
        d = torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist")
        earlier = torch.ones_like(d, dtype=torch.bool).tril(-1)  # (i, j) with j < i
        out.append(d.masked_fill(~earlier, math.inf)[1:].amin(dim=1))
    return torch.cat(out).numpy() if out else np.empty(0)


@register_attack("prada-jbda")
class PradaAwareJBDA(JBDA):
    """JBDA whose children sit at benign-looking distances from their parents (see the module docstring).

    Example::

        attack = PradaAwareJBDA(seed_set=x_seed, clone="lenet")       # μ, σ from the seeds' own stream
        result = attack(api, budget=1_600, seed=0)
        result.info["distance_mean"], result.info["detected"]

    Args:
        distance_mean, distance_std: ``μ > 0`` and ``σ ≥ 0`` of the target distances; ``None`` (both): estimated
            from the seed queries (round 0 needs at least 3 seeds sharing a label with an earlier one).
        **jbda: options of :class:`~modelsteal.attacks.JBDA` (``seed_set``, ``seed_size``, ``rounds``,
            ``tau``, ``step`` — which sets only the sign pattern here — ``clip``, …).
    """

    reported_info: ClassVar[tuple[str, ...]] = ("distance_mean", "distance_std", "detected", "queries_to_detection")

    def __init__(self, *, seed_set: Tensor, distance_mean: float | None = None, distance_std: float | None = None,
                 **jbda: Any) -> None:
        super().__init__(seed_set=seed_set, **jbda)
        if (distance_mean is None) != (distance_std is None):
            raise ValueError("prada-jbda needs both distance_mean and distance_std, or neither (estimated)")
        if distance_mean is not None and not (math.isfinite(distance_mean) and distance_mean > 0):
            raise ValueError(f"prada-jbda distance_mean must be a positive number, got {distance_mean!r}")
        if distance_std is not None and not (math.isfinite(distance_std) and distance_std >= 0):
            raise ValueError(f"prada-jbda distance_std must be a number >= 0, got {distance_std!r}")
        self.distance_mean = distance_mean
        self.distance_std = distance_std
        self._spacing: tuple[float, float] | None = None
        self._rng: torch.Generator | None = None

    # -- the spacing -----------------------------------------------------------------------------------
    def _estimate(self, x: Tensor, answers: Tensor) -> tuple[float, float]:
        if self.distance_mean is not None and self.distance_std is not None:
            return float(self.distance_mean), float(self.distance_std)
        d = seed_stream(x, answers.argmax(dim=1))
        if len(d) < 2 or not d.std() > 0:
            raise ValueError(f"prada-jbda cannot estimate the benign distance stream from {len(x)} seeds "
                             f"({len(d)} distances): pass distance_mean and distance_std, or more seeds")
        return float(d.mean()), float(d.std())

    def augment(self, model: nn.Module, x: Tensor, answers: Tensor, *, rho: int) -> tuple[Tensor, Tensor]:
        if self._spacing is None:  # round 0: the parents are the seeds, with the victim's answers
            self._spacing = self._estimate(x, answers)
        return super().augment(model, x, answers, rho=rho)

    def _delta(self, model: nn.Module, parents: Tensor, classes: Tensor, rho: int) -> Tensor:
        assert self._spacing is not None and self._rng is not None
        grad = input_jacobian(model, parents, classes, score=self.score, batch_size=self.jacobian_batch_size)
        u = math.copysign(1.0, self.step_size(rho)) * self._scale(parents) * grad.sign()
        mean, std = self._spacing
        target = (mean + std * torch.randn(len(parents), generator=self._rng, dtype=torch.float64)).abs()
        return self._scaled_step(parents, u, target.to(parents.device))

    def _scaled_step(self, x: Tensor, u: Tensor, target: Tensor) -> Tensor:
        """``clip(x + s·u) − x`` with ``s`` per row so that its L2 norm is ``target`` (or as close as the clip
        lets it), by bisection on ``s ∈ [0, s_max]``."""
        def dist(s: Tensor) -> Tensor:
            step = self._clip(x + s.view(-1, *[1] * (x.ndim - 1)).to(x.dtype) * u) - x
            return step.flatten(1).double().norm(dim=1)

        span = 1.0 if self.clip is None else float(self.clip[1] - self.clip[0])
        hi = torch.full((len(x),), span, dtype=torch.float64, device=x.device)
        if self.clip is None:  # unbounded: ‖s·u‖ = s‖u‖ exactly
            return (target / dist(hi).clamp_min(1e-12)).view(-1, *[1] * (x.ndim - 1)).to(x.dtype) * u
        lo = torch.zeros_like(hi)
        for _ in range(_BISECTION_STEPS):
            mid = (lo + hi) / 2
            short = dist(mid) < target
            lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
        return self._clip(x + hi.view(-1, *[1] * (x.ndim - 1)).to(x.dtype) * u) - x

    # -- the loop, with the detection log ------------------------------------------------------------
    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        self._spacing = None
        self._rng = torch.Generator().manual_seed(generator.initial_seed() ^ _SPACING_SEED)
        log = DetectionLog(victim)
        result = super().run(QueryBudget(log, budget=victim.remaining), generator=generator)
        mean, std = self._spacing if self._spacing is not None else (None, None)
        result.info.update({"distance_mean": mean, "distance_std": std, **log.report()})
        result.queries = victim.used
        return result

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "distance_mean": self.distance_mean, "distance_std": self.distance_std}
