"""Interleaving: an attack whose query stream is mixed with natural in-distribution queries.

PRADA (Juuti et al., EuroS&P 2019) flags a client when the minimum distances of its queries to its earlier
same-class queries stop looking normally distributed (Shapiro-Wilk ``W < δ``). A benign client's natural
queries give normal-looking distances; a synthetic attack's (JBDA: ``±λ·sign`` steps from a few seeds) give
spikes. An attacker who holds some natural in-distribution inputs (a part of the victim's test split, say)
can send them between its attack queries so that the stream PRADA tests is a mixture dominated, for a large
enough fraction, by benign-looking distances — and pay for every one of them from its budget.

Algorithm (the inner attack is untouched; each of its batches is sent with natural rows woven in):

- with ``f = fraction`` (a rational, exact), position ``p`` (1-based) of the client's stream is natural when
  ``⌊p·f⌋ > ⌊(p−1)·f⌋``; so the first ``p`` queries hold exactly ``⌊p·f⌋`` natural ones, at every ``p``;
- a batch of ``n`` attack rows is sent as one batch: the natural rows due before each attack row, then that
  row, in stream order; the answers to natural rows are not given to the inner attack;
- the inner attack gets a budget of ``B − ⌊B·f⌋`` rows, so attack and natural queries together never exceed
  ``B``;
- natural rows are drawn from ``natural`` in a random order without replacement; when it runs out, a new
  random order starts (``natural_repeated`` counts the repeated rows; a repeat is at distance 0 from its first
  copy, which PRADA notices, so give enough rows).

Given the same seed, the inner attack makes exactly the queries it makes alone (it keeps the generator; the
natural order has its own, derived from the seed), so ``fraction=0`` is the inner attack.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, ClassVar

import torch
from torch import Tensor

from modelsteal.attacks.base import Attack, StealResult, register_attack
from modelsteal.attacks.evasion._wrapping import DetectionLog, build_inner
from modelsteal.blackbox import QueryBudget

_NATURAL_SEED = 0x1E57  # mixed into the attack's seed for the natural rows' order


def natural_count(p: int, fraction: Fraction) -> int:
    """How many of the first ``p`` queries are natural: ``⌊p·f⌋``."""
    return (p * fraction.numerator) // fraction.denominator


class _NaturalPool:
    """Natural rows in random orders, a fresh order each time the pool is used up."""

    def __init__(self, x: Tensor, generator: torch.Generator) -> None:
        self.x = x
        self.generator = generator
        self.order = torch.empty(0, dtype=torch.long)
        self.drawn = 0

    def take(self, n: int) -> Tensor:
        parts = []
        while n > 0:
            if len(self.order) == 0:
                self.order = torch.randperm(len(self.x), generator=self.generator)
            parts.append(self.order[:n])
            n -= len(parts[-1])
            self.order = self.order[len(parts[-1]):]
        idx = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        self.drawn += len(idx)
        return self.x[idx]

    @property
    def repeated(self) -> int:
        return max(0, self.drawn - len(self.x))


class _Interleaver:
    """The black box the inner attack sees: each of its batches goes out with the natural rows due."""

    def __init__(self, log: DetectionLog, pool: _NaturalPool, fraction: Fraction) -> None:
        self.log = log
        self.pool = pool
        self.fraction = fraction
        self.position = 0  # queries sent so far (attack and natural)
        self.natural = 0
        self.num_classes = log.num_classes
        self.input_shape = log.input_shape

    def _layout(self, n: int) -> Tensor:
        """For the next ``n`` attack rows: a mask over the merged batch, True at natural positions."""
        mask = []
        placed = 0
        p = self.position
        while placed < n:
            p += 1
            natural = natural_count(p, self.fraction) > natural_count(p - 1, self.fraction)
            mask.append(natural)
            placed += not natural
        return torch.tensor(mask, dtype=torch.bool)

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        if len(x) == 0:
            return self.log.query(x, client=client)
        mask = self._layout(len(x))
        merged = x.new_empty((len(mask), *x.shape[1:]))
        merged[~mask] = x
        if mask.any():
            merged[mask] = self.pool.take(int(mask.sum())).to(x.device, x.dtype)
        answers = self.log.query(merged, client=client)
        self.position += len(mask)
        self.natural += int(mask.sum())
        return answers[~mask.to(answers.device)]


@register_attack("interleave")
class Interleave(Attack):
    """Any registered attack (``attack``) with a fraction ``fraction`` of natural queries woven into its stream.

    Example::

        attack = Interleave(attack="jbda", seed_set=x_seed, natural=x_test[:1000], fraction=0.5)
        result = attack(api, budget=2_000, seed=0)     # 1,000 JBDA queries, 1,000 natural ones
        result.info["natural_queries"], result.info["detected"]

    Args:
        attack: the inner attack, a registered name (built with ``attack_options``, this wrapper's ``clone``,
            ``train``, ``labels``, ``query_batch_size``, ``device`` and the data it asks for) or an
            :class:`Attack` instance (then give its options to it).
        fraction: share of natural queries in the stream, in ``[0, 1)``; taken as the nearest fraction with a
            denominator up to 1000 (0.3 is exactly 3/10).
        natural: the natural in-distribution inputs ``(M, *input_shape)``; default: ``seed_set`` (which the
            inner attack may also query: pass a disjoint split to avoid repeated inputs).
        seed_set, transfer_set, transfer_labels: the attacker's data, handed to the inner attack if it asks.

    ``info`` holds the inner attack's info plus ``inner``, ``fraction``, ``natural_queries``,
    ``attack_queries``, ``natural_fraction`` (natural / all), ``natural_repeated`` and, when the API reports
    flags, ``detected`` and ``queries_to_detection`` (see :class:`~modelsteal.attacks.evasion.Sybil`).
    """

    reported_info: ClassVar[tuple[str, ...]] = ("natural_queries", "natural_fraction", "detected",
                                                "queries_to_detection")

    def __init__(
        self,
        *,
        attack: str | Attack = "jbda",
        attack_options: dict[str, Any] | None = None,
        fraction: float = 0.5,
        natural: Tensor | None = None,
        seed_set: Tensor | None = None,
        transfer_set: Tensor | None = None,
        transfer_labels: Tensor | None = None,
        **base: Any,
    ) -> None:
        super().__init__(**base)
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
            raise ValueError(f"interleave fraction must be a number in [0, 1), got {fraction!r}")
        self.fraction = Fraction(fraction).limit_denominator(1000)
        if self.fraction >= 1:  # 0.9999 rounds to 1
            raise ValueError(f"interleave fraction {fraction} rounds to 1: no attack queries would be left")
        pool = natural if natural is not None else seed_set
        if not isinstance(pool, Tensor) or pool.ndim < 2 or len(pool) == 0:
            raise ValueError("interleave needs natural in-distribution inputs: pass natural= (or a seed_set)")
        self.natural = pool.detach().float().cpu()
        data = {"seed_set": seed_set, "transfer_set": transfer_set, "transfer_labels": transfer_labels}
        self.inner = build_inner(attack, options=attack_options, wrapper=self, data=data, explicit_base=bool(base))

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        if tuple(self.natural.shape[1:]) != tuple(victim.input_shape):
            raise ValueError(f"interleave natural inputs have shape {tuple(self.natural.shape[1:])}; the victim "
                             f"takes {tuple(victim.input_shape)}")
        budget = victim.remaining
        order = torch.Generator().manual_seed(generator.initial_seed() ^ _NATURAL_SEED)
        log = DetectionLog(victim)
        router = _Interleaver(log, _NaturalPool(self.natural, order), self.fraction)
        result = self.inner.run(QueryBudget(router, budget=budget - natural_count(budget, self.fraction)),
                                generator=generator)
        total = router.position
        info = {**result.info, "inner": self.inner.name, "fraction": float(self.fraction),
                "natural_queries": router.natural, "attack_queries": total - router.natural,
                "natural_fraction": router.natural / total if total else 0.0,
                "natural_repeated": router.pool.repeated, **log.report()}
        return StealResult(clone=result.clone, queries=victim.used, transfer_x=result.transfer_x,
                           transfer_y=result.transfer_y, info=info)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "attack": self.name, "inner": self.inner.name,
                "fraction": float(self.fraction)}
