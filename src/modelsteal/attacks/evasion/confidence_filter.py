"""Knockoff Nets with confidence filtering: the attacker who knows Adaptive Misinformation's gate.

Adaptive Misinformation (Kariyappa, Prakash and Qureshi, CVPR 2020) answers a query from the victim ``f``
when its maximum softmax probability is high and from the misinformation model ``f̂`` otherwise (Eq. 9–11).
Its Sec. 6 ("Can the adversary distinguish when the inputs are being serviced by f vs f̂?") names the
adaptive attacker this module implements: since an input is serviced by ``f`` only when ``f`` is confident,
the attacker reads the top-1 confidence of each answer as a sign that ``f`` answered and trains the clone
only on those answers. Every query still counts against the budget; the dropped answers are simply not
used, so the attacker needs a larger budget to collect as many useful answers (the paper's argument for why
the filter does not break AM). The paper's counter-measure, smoothing ``f``'s or sharpening ``f̂``'s
posteriors so that the MSP distributions match, is a defense-side option, not this attack's.

Algorithm (the random-strategy Knockoff loop of :class:`~modelsteal.attacks.KnockoffNets`, unchanged):

1. sample ``B`` transfer images, query the black box for their answers ``ỹ`` (``B`` = the budget);
2. keep the rows with ``max_k ỹ_k ≥ min_confidence`` (after nquery averaging, when ``queries_per_image > 1``);
3. train the clone on the kept rows only.

With ``min_confidence=0`` every row is kept and the clone is the plain Knockoff clone of the same seed.
When no answer passes, the clone is left untrained (at its seeded initialisation) and ``info["kept"]`` is 0.
"""

from __future__ import annotations

import math

from torch import Tensor

from modelsteal.attacks.base import register_attack
from modelsteal.attacks.knockoff import KnockoffNets


@register_attack("knockoff-filter")
class ConfidenceFilterKnockoff(KnockoffNets):
    """Knockoff Nets that trains the clone only on answers with top-1 confidence ≥ ``min_confidence``.

    Example::

        attack = ConfidenceFilterKnockoff(transfer_set=x_pool, min_confidence=0.9, clone="lenet")
        result = attack(api, budget=50_000, seed=0)
        result.queries, result.info["kept"]  # 50_000 queries spent, how many answers the clone saw

    Args:
        min_confidence: threshold in ``[0, 1)`` on the largest probability of an answer; rows at or above it
            are kept (0 keeps every row: plain Knockoff).
        **knockoff: options of :class:`~modelsteal.attacks.KnockoffNets` (``transfer_set``,
            ``queries_per_image``, ``query_augment``) and of :class:`~modelsteal.attacks.base.Attack`.

    ``info`` adds ``min_confidence``, ``answers`` (rows before filtering), ``kept`` and ``kept_fraction``;
    ``transfer_x`` / ``transfer_y`` hold the kept rows only.
    """

    reported_info = ("kept", "kept_fraction")

    stackable = False  # the kept rows depend on each defense's answers

    def __init__(self, *, min_confidence: float = 0.9, **knockoff: object) -> None:
        if isinstance(min_confidence, bool) or not isinstance(min_confidence, int | float) or not (
            math.isfinite(min_confidence) and 0 <= min_confidence < 1
        ):
            raise ValueError(f"min_confidence must be a number in [0, 1), got {min_confidence!r}")
        super().__init__(**knockoff)  # type: ignore[arg-type]
        self.min_confidence = float(min_confidence)

    def select(self, x: Tensor, answers: Tensor) -> tuple[Tensor, Tensor, dict[str, object]]:
        """The rows whose answer's top-1 probability is at least ``min_confidence``."""
        keep = answers.max(dim=1).values >= self.min_confidence
        kept = int(keep.sum())
        info = {"min_confidence": self.min_confidence, "answers": len(answers), "kept": kept,
                "kept_fraction": kept / len(answers)}
        return x[keep], answers[keep], info

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "min_confidence": self.min_confidence}
