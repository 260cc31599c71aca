"""Label-only extraction of a linear classifier by line search (Lowd & Meek 2005; Tramèr et al., Sec. 5.1).

When the API returns class labels only, a linear binary model ``sign(w·x + β)`` still gives itself away:
a line search (bisection) between a positively and a negatively labelled input finds a point ``x*`` within
``ε`` of the decision boundary, where ``w·x* + β ≈ 0``. ``d + 1`` such points in general position
determine the hyperplane up to a positive factor — the solution of the homogeneous system
``[x*_j, 1]·(w, β) = 0``, the smallest right singular vector. Labels cannot reveal the scale of ``w``, so
the result is reported with ``‖w‖₂ = 1`` and the sign that puts class 1 on the positive side.

Random uniform queries are drawn until both labels have been seen; the first query of each label is an
anchor, and each of ``d + 1`` further random queries is joined to the anchor of the other label: distinct
lines through a fixed point meet the hyperplane in points in general position. Cost: about
``d + 3 + (d + 1)⌈log₂(1/ε)⌉`` queries.

:func:`bisect_segments` is the batched line search, shared with line-search retraining.

Example::

    api = PredictionAPI(SklearnVictim(lr), output="label")
    result = LowdMeek(space=data.space, epsilon=1e-10)(api, budget=5_000)
    result.info["weights"], result.info["bias"]       # coef_ / ‖coef_‖, intercept_ / ‖coef_‖
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from modelsteal.attacks.base import Attack, StealResult, register_attack
from modelsteal.blackbox import BudgetExceededError, QueryBudget
from modelsteal.data.tabular import FeatureSpace
from modelsteal.tabular.tabular import TabularLinear

__all__ = ["LowdMeek", "bisect_segments"]


def bisect_segments(labels_of: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, label_a: Tensor, *,
                    steps: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bisect the segments ``[a_i, b_i]`` (``(S, D)``) whose ends have different labels, all at once.

    Each step queries the ``S`` midpoints in one batch and keeps the half whose ends still differ, so after
    ``steps`` steps ``a_i`` (labelled ``label_a[i]``) and ``b_i`` (another label) are ``2^-steps`` of the
    segment apart. Returns ``(a, b, queried_x, queried_labels)`` with every midpoint queried.
    """
    xs, ys = [], []
    for _ in range(steps):
        m = 0.5 * (a + b)
        lm = labels_of(m)
        xs.append(m)
        ys.append(lm)
        same = (lm == label_a)[:, None]
        a, b = torch.where(same, m, a), torch.where(same, b, m)
    empty_x, empty_y = a[:0], label_a[:0]
    return a, b, torch.cat(xs) if xs else empty_x, torch.cat(ys) if ys else empty_y


@register_attack("lowd-meek")
class LowdMeek(Attack):
    """The Lowd-Meek line-search attack on linear binary classifiers with label-only answers.

    Options (keyword-only): ``space`` the input domain; ``epsilon`` the bisection precision relative to
    each segment's length (default ``1e-10``); ``boundary_points`` how many boundary points to fit
    (default ``d + 1``; more gives a least-squares fit); ``init_batch`` the size of the batches of random
    queries drawn until both labels are seen; ``max_init`` how many such queries to try before giving up.
    ``info`` holds ``weights`` ``(1, d)`` and ``bias`` ``(1,)`` (unit-norm ``w``, raw input units).
    """

    modality = "tabular"

    def __init__(self, *, space: FeatureSpace, epsilon: float = 1e-10, boundary_points: int | None = None,
                 init_batch: int = 16, max_init: int = 10_000, widen: float = 1.0,
                 device: str | torch.device | None = None) -> None:
        super().__init__(device=device)
        if not 0 < epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
        if boundary_points is not None and boundary_points < space.dim + 1:
            raise ValueError(f"boundary_points must be >= d + 1 = {space.dim + 1}, got {boundary_points}")
        if init_batch < 1 or max_init < 2 or widen <= 0:
            raise ValueError("init_batch >= 1, max_init >= 2 and widen > 0 are required")
        self.space = space
        self.epsilon = float(epsilon)
        self.boundary_points = boundary_points
        self.init_batch = int(init_batch)
        self.max_init = int(max_init)
        self.widen = float(widen)

    @property
    def steps(self) -> int:
        return math.ceil(math.log2(1.0 / self.epsilon))

    def describe(self) -> dict[str, Any]:
        return {"attack": self.name, "epsilon": self.epsilon, "steps": self.steps}

    def _labels(self, victim: QueryBudget, x: Tensor) -> Tensor:
        return self.query_all(victim, x).argmax(dim=1)

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        d = self.space.dim
        if victim.num_classes != 2:
            raise ValueError(f"Lowd-Meek extracts binary linear models; this victim has {victim.num_classes} classes")
        if tuple(victim.input_shape) != (d,):
            raise ValueError(f"victim takes inputs {tuple(victim.input_shape)} but the feature space has {d} columns")
        m = self.boundary_points or d + 1
        # 1. random queries until both labels have been seen, and m more end points besides one anchor per label
        xs = self.space.sample(0, generator=generator, widen=self.widen)
        ys = torch.empty(0, dtype=torch.long)
        while len(ys) < m + 2 or ys.unique().numel() < 2:
            if len(ys) >= self.max_init and ys.unique().numel() < 2:
                raise ValueError(f"all {len(ys)} random queries got label {int(ys[0])}: the boundary does not cross "
                                 "the feature ranges")
            n = min(self.init_batch, victim.remaining) if ys.unique().numel() < 2 else m + 2 - len(ys)
            if n < 1:
                raise BudgetExceededError(f"the budget ran out before both labels were seen ({len(ys)} queries)")
            x = self.space.sample(n, generator=generator, widen=self.widen)
            xs, ys = torch.cat([xs, x]), torch.cat([ys, self._labels(victim, x)])
        initial = victim.used
        # 2. segments from each end point to the anchor of the other label: distinct lines through two fixed
        #    points meet the hyperplane in points in general position
        anchors = torch.stack([(ys == label).nonzero()[0, 0] for label in (0, 1)])
        rest = torch.ones(len(ys), dtype=torch.bool)
        rest[anchors] = False
        ends = rest.nonzero().flatten()[torch.randperm(int(rest.sum()), generator=generator)[:m]]
        partner = anchors[1 - ys[ends]]
        # 3. line searches to the boundary, then the hyperplane through the boundary points
        a, b, _, _ = bisect_segments(lambda x: self._labels(victim, x), xs[ends], xs[partner], ys[ends],
                                     steps=self.steps)
        points = 0.5 * (a + b)
        c, h = self.space.box(widen=self.widen)
        system = torch.cat([(points - c) / h, torch.ones(m, 1, dtype=torch.float64)], dim=1)
        _, s, vh = torch.linalg.svd(system, full_matrices=False)
        theta = vh[-1]
        w = theta[:d] / h
        bias = theta[d] - w @ c
        positive = xs[ys == 1][0]
        if float(w @ positive + bias) < 0:
            w, bias = -w, -bias
        norm = w.norm()
        if not float(norm) > 0:
            raise ValueError("the boundary points do not determine a hyperplane")
        w, bias = (w / norm)[None, :], (bias / norm).reshape(1)
        clone = TabularLinear(d, 2, mode="binary").set_raw_parameters(w, bias)
        info = {"weights": w, "bias": bias, "boundary_points": m, "steps": self.steps, "initial_queries": initial,
                "singular_gap": float(s[-1] / s[-2]) if len(s) > 1 else 0.0}
        return StealResult(clone=clone, queries=victim.used, transfer_x=points, info=info)
