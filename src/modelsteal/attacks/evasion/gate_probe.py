"""Gate probing: the attacker who spends queries to find inputs Adaptive Misinformation's gate lets through.

Adaptive Misinformation (Kariyappa, Prakash and Qureshi, CVPR 2020) answers from the victim ``f`` only when
``f``'s maximum softmax probability is high (Eq. 9–11), and from the misinformation model ``f̂`` otherwise. Its
Sec. 6 ("Can the defense be treated as part of the black box…?") argues that an attacker must "maximize the
number of inputs that get serviced by f", and that "in the absence of a way to reliably generate
in-distribution inputs" this needs a much larger budget. This attack is one such way, ours (the paper names the
goal, not an algorithm): it uses the top-1 confidence of each answer as the sign that ``f`` answered (as
:mod:`~modelsteal.attacks.evasion.confidence_filter` does) and spends part of its budget *near* the inputs that
got through, where more of them are likely to, instead of on fresh transfer images only.

Algorithm, with budget ``B`` over ``rounds`` rounds (round ``r`` spends ``n_r = ⌊remaining / (rounds − r)⌋``):

1. ``A`` ← ∅ (accepted inputs). In each round, if ``A`` is empty, all ``n_r`` queries are fresh transfer images
   (drawn without replacement); otherwise a fraction ``explore`` of them are fresh images and the rest are
   children ``clip(a + noise · ε)`` of parents ``a`` drawn uniformly from ``A`` (``ε ~ N(0, I)``, clipped to
   the transfer set's value range). When the pool runs out, every query is a child.
2. An answer is *accepted* when its top-1 probability is at least ``min_confidence``; accepted inputs join ``A``.
3. The clone trains on the accepted rows only (every query counts against the budget).

With ``rounds=1`` (or ``explore=1``) it is :class:`~modelsteal.attacks.evasion.ConfidenceFilterKnockoff` on a
random draw of the pool. ``info`` reports ``kept`` / ``kept_fraction`` (accepted rows), ``children`` (queries
spent near accepted inputs), ``children_kept`` and ``fresh_kept`` (how many of each got through).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from modelsteal import training
from modelsteal.attacks.base import Attack, StealResult, register_attack
from modelsteal.blackbox import QueryBudget


def _fraction(value: object, name: str, *, low_open: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (0 < value if low_open else 0 <= value) or value > 1:  # type: ignore[operator]
        raise ValueError(f"gate-probe {name} must be a number in {'(0' if low_open else '[0'}, 1], got {value!r}")
    return float(value)  # type: ignore[arg-type]


@register_attack("gate-probe")
class GateProbe(Attack):
    """Knockoff Nets that spends part of its budget perturbing the inputs whose answers were confident.

    Example::

        attack = GateProbe(transfer_set=x_pool, min_confidence=0.9, rounds=8, explore=0.25, noise=0.1)
        result = attack(am_api, budget=20_000, seed=0)
        result.info["kept"], result.info["children_kept"]

    Args:
        transfer_set: pool of natural query images ``(M, *input_shape)``.
        min_confidence: an answer with top-1 probability at least this is taken as the victim's own (the gate
            let it through); in ``[0, 1)``.
        rounds: how many rounds the budget is spread over (>= 1).
        explore: fraction of a round's queries spent on fresh pool images once some input got through.
        noise: standard deviation of the Gaussian step from a parent to a child, in input units (> 0).
        **base: options of :class:`~modelsteal.attacks.base.Attack` (clone, train, labels, device, ...).
    """

    reported_info: ClassVar[tuple[str, ...]] = ("kept", "kept_fraction", "children", "children_kept",
                                                "fresh_kept")

    def __init__(self, *, transfer_set: Tensor, min_confidence: float = 0.9, rounds: int = 8,
                 explore: float = 0.25, noise: float = 0.1, **base: object) -> None:
        super().__init__(**base)  # type: ignore[arg-type]
        if not isinstance(transfer_set, Tensor) or transfer_set.ndim < 2 or len(transfer_set) == 0:
            raise ValueError("transfer_set must be a non-empty tensor of query inputs (M, *input_shape)")
        conf = min_confidence
        if isinstance(conf, bool) or not isinstance(conf, int | float) or not (math.isfinite(conf) and 0 <= conf < 1):
            raise ValueError(f"gate-probe min_confidence must be a number in [0, 1), got {min_confidence!r}")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"gate-probe rounds must be an integer >= 1, got {rounds!r}")
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not (math.isfinite(noise) and noise > 0):
            raise ValueError(f"gate-probe noise must be a number > 0, got {noise!r}")
        self.transfer_set = transfer_set
        self.min_confidence = float(conf)
        self.rounds = rounds
        self.explore = _fraction(explore, "explore")
        self.noise = float(noise)
        self.low, self.high = float(transfer_set.min()), float(transfer_set.max())

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        if tuple(self.transfer_set.shape[1:]) != tuple(victim.input_shape):
            raise ValueError(f"transfer set images have shape {tuple(self.transfer_set.shape[1:])}, the victim "
                             f"expects {tuple(victim.input_shape)}")
        order = torch.randperm(len(self.transfer_set), generator=generator)
        drawn = 0
        accepted: list[Tensor] = []
        xs, ys = [], []
        counts = {"children": 0, "children_kept": 0, "fresh_kept": 0}
        for r in range(self.rounds):
            n = victim.remaining // (self.rounds - r)
            if n == 0:
                continue
            pool_left = len(order) - drawn
            fresh = n if not accepted else min(n, round(n * self.explore))
            fresh = min(fresh, pool_left) if accepted else min(n, pool_left)
            if fresh == 0 and not accepted:
                break  # the pool is exhausted and nothing got through: nothing to probe around
            parts = [self.transfer_set[order[drawn: drawn + fresh]]]
            drawn += fresh
            n_children = n - fresh if accepted else 0
            if n_children:
                parents = torch.cat(accepted)
                pick = torch.randint(0, len(parents), (n_children,), generator=generator)
                step = torch.randn((n_children, *parents.shape[1:]), generator=generator) * self.noise
                parts.append((parents[pick] + step).clamp(self.low, self.high))
            x = torch.cat(parts)
            answers = self.query_all(victim, x)
            keep = answers.max(dim=1).values >= self.min_confidence
            counts["fresh_kept"] += int(keep[:fresh].sum())
            counts["children"] += n_children
            counts["children_kept"] += int(keep[fresh:].sum())
            if keep.any():
                accepted.append(x[keep])
            xs.append(x[keep])
            ys.append(answers[keep])
        x_kept = torch.cat(xs) if xs else self.transfer_set[:0]
        y_kept = torch.cat(ys) if ys else torch.empty(0, victim.num_classes)
        clone = self.make_clone(victim, generator=generator)
        history = None
        if len(x_kept):
            history = training.train(clone, x_kept, self.targets(y_kept), config=self.train_config,
                                     generator=generator, device=self.device,
                                     progress="train clone" if self.progress else False)
        used = victim.used
        info = {"kept": len(x_kept), "kept_fraction": len(x_kept) / used if used else 0.0, **counts,
                "fresh": drawn, "min_confidence": self.min_confidence, "rounds": self.rounds,
                "final_loss": history.loss[-1] if history is not None and history.loss else None}
        return StealResult(clone=clone, queries=used, transfer_x=x_kept, transfer_y=y_kept, info=info)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "min_confidence": self.min_confidence, "rounds": self.rounds,
                "explore": self.explore, "noise": self.noise}
