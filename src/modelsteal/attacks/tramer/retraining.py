"""Label-only extraction by retraining (Tramèr et al., USENIX Security 2016, Sec. 5.2, Figs. 4-6).

With class labels only, the attacker queries ``m`` inputs, labels them with the API and trains a model of
the victim's class on them. Three ways of choosing the queries:

- ``uniform``: ``m`` points uniform over the feature space;
- ``line-search`` (a generalisation of Lowd-Meek): a share of the budget on uniform points, the rest on
  bisections between random pairs of differently labelled points, so many training points lie close to
  the decision boundary (every bisection midpoint is a labelled training point);
- ``adaptive`` (active learning): ``r`` rounds of ``m/r`` queries; the first round is uniform, each later
  one queries the ``m/r`` points, among fresh uniform candidates, that the current clone is least certain
  about (smallest gap between its two most likely classes), then retrains on everything so far.

Training uses :func:`modelsteal.training.train`, the project's one training loop,
on the returned labels. The clone is logistic regression (``model="linear"``) or an MLP.

Example::

    api = PredictionAPI(SklearnVictim(lr), output="label")
    result = Retraining(space=data.space, strategy="adaptive", rounds=10)(api, budget=650)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal import training
from modelsteal.attacks.base import Attack, StealResult, register_attack
from modelsteal.attacks.tramer.lowd_meek import bisect_segments
from modelsteal.blackbox import QueryBudget
from modelsteal.data.tabular import FeatureSpace
from modelsteal.models import build_seeded
from modelsteal.tabular.tabular import TabularLinear, TabularMLP
from modelsteal.training import TrainConfig

__all__ = ["Retraining", "STRATEGIES"]

STRATEGIES = ("uniform", "line-search", "adaptive")
DEFAULT_TRAIN = TrainConfig(epochs=100, batch_size=32, lr=0.05, optimizer="adam")


@register_attack("retraining")
class Retraining(Attack):
    """Retraining on label-only answers with uniform, line-search or adaptive query selection.

    Options (keyword-only): ``space`` the input domain; ``strategy`` one of ``uniform``, ``line-search``,
    ``adaptive``; ``model`` ``"linear"`` (logistic regression) or ``"mlp"`` with ``hidden``/``activation``;
    ``rounds`` ``r`` for adaptive; ``candidates`` uniform candidates per selected query in adaptive
    rounds; ``line_search_steps`` bisection steps per segment and ``init_fraction`` the share of uniform
    queries for line-search; ``train`` the :class:`TrainConfig` (Adam, lr 0.05, 100 epochs by default).
    The budget passed to the attack is ``m``; all of it is spent.
    """

    modality = "tabular"

    def __init__(self, *, space: FeatureSpace, strategy: str = "adaptive", model: str = "linear",
                 hidden: Sequence[int] = (20,), activation: str = "tanh", rounds: int = 10, candidates: int = 20,
                 line_search_steps: int = 10, init_fraction: float = 0.25, train: TrainConfig | None = None,
                 widen: float = 1.0, device: str | torch.device | None = None) -> None:
        super().__init__(train=train if train is not None else DEFAULT_TRAIN, labels="argmax", device=device)
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        if model not in ("linear", "mlp"):
            raise ValueError(f"unknown clone model {model!r}; known: linear, mlp")
        if rounds < 1 or candidates < 1 or line_search_steps < 1 or not 0 < init_fraction <= 1 or widen <= 0:
            raise ValueError("rounds, candidates, line_search_steps >= 1, 0 < init_fraction <= 1, widen > 0 required")
        self.space = space
        self.strategy = strategy
        self.model = model
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.rounds = int(rounds)
        self.candidates = int(candidates)
        self.line_search_steps = int(line_search_steps)
        self.init_fraction = float(init_fraction)
        self.widen = float(widen)

    def describe(self) -> dict[str, Any]:
        return {"attack": self.name, "strategy": self.strategy, "model": self.model, "rounds": self.rounds}

    # -- pieces ------------------------------------------------------------------------------------------
    def _labels(self, victim: QueryBudget, x: Tensor) -> Tensor:
        return self.targets(self.query_all(victim, x))

    def _sample(self, n: int, generator: torch.Generator) -> Tensor:
        return self.space.sample(n, generator=generator, widen=self.widen)

    def _train(self, x: Tensor, y: Tensor, k: int, generator: torch.Generator) -> nn.Module:
        d = self.space.dim
        c, h = self.space.box(widen=self.widen)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))

        def make() -> nn.Module:
            if self.model == "mlp":
                return TabularMLP(d, k, hidden=self.hidden, activation=self.activation, center=c, scale=h)
            return TabularLinear(d, k, mode="binary" if k == 2 else "softmax", center=c, scale=h)

        clone = build_seeded(make, seed=seed)
        training.train(clone, x, y, config=self.train_config, generator=generator, device=self.device)
        return clone.cpu()

    # -- strategies -------------------------------------------------------------------------------------
    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        if tuple(victim.input_shape) != (self.space.dim,):
            raise ValueError(f"victim takes inputs {tuple(victim.input_shape)} but the feature space has "
                             f"{self.space.dim} columns")
        m, k = victim.remaining, victim.num_classes
        if m < 2:
            raise ValueError(f"retraining needs a budget of at least 2 queries, got {m}")
        if self.strategy == "uniform":
            x = self._sample(m, generator)
            y = self._labels(victim, x)
        elif self.strategy == "line-search":
            x, y = self._line_search_queries(victim, m, generator)
        else:
            return self._adaptive(victim, m, k, generator)
        clone = self._train(x, y, k, generator)
        return StealResult(clone=clone, queries=victim.used, transfer_x=x, transfer_y=y,
                           info={"strategy": self.strategy})

    def _line_search_queries(self, victim: QueryBudget, m: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Uniform seeds, then batched bisections between random pairs of differently labelled points."""
        n0 = max(2, int(round(self.init_fraction * m)))
        x = self._sample(n0, generator)
        y = self._labels(victim, x)
        while victim.remaining > 0:
            segments = victim.remaining // self.line_search_steps
            if y.unique().numel() < 2 or segments == 0:  # nothing to bisect (yet): spend on uniform points
                extra = self._sample(victim.remaining if segments == 0 else min(victim.remaining, n0), generator)
                x, y = torch.cat([x, extra]), torch.cat([y, self._labels(victim, extra)])
                continue
            i = torch.randint(len(y), (segments,), generator=generator)
            j = torch.randint(len(y), (segments,), generator=generator)
            for _ in range(8):  # redraw partners with the same label
                same = y[j] == y[i]
                if not bool(same.any()):
                    break
                j[same] = torch.randint(len(y), (int(same.sum()),), generator=generator)
            keep = y[j] != y[i]
            if not bool(keep.any()):
                continue
            i, j = i[keep], j[keep]
            _, _, mx, my = bisect_segments(lambda q: self._labels(victim, q), x[i], x[j], y[i],
                                           steps=self.line_search_steps)
            x, y = torch.cat([x, mx]), torch.cat([y, my])
        return x, y

    def _adaptive(self, victim: QueryBudget, m: int, k: int, generator: torch.Generator) -> StealResult:
        """``r`` rounds of ``m/r`` queries, each after the first chosen where the clone is least certain."""
        rounds = min(self.rounds, m)
        sizes = [m // rounds + (1 if r < m % rounds else 0) for r in range(rounds)]
        x = self._sample(sizes[0], generator)
        y = self._labels(victim, x)
        clone = self._train(x, y, k, generator)
        for size in sizes[1:]:
            pool = self._sample(size * self.candidates, generator)
            with torch.no_grad():
                top2 = torch.softmax(clone(pool), dim=1).topk(2, dim=1).values
            pick = pool[(top2[:, 0] - top2[:, 1]).argsort()[:size]]
            x, y = torch.cat([x, pick]), torch.cat([y, self._labels(victim, pick)])
            clone = self._train(x, y, k, generator)
        return StealResult(clone=clone, queries=victim.used, transfer_x=x, transfer_y=y,
                           info={"strategy": "adaptive", "rounds": rounds})
