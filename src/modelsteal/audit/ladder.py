"""The budget ladder and what is read off it: where a clone first reaches a share of the victim's accuracy.

The ladder is geometric in half-decades, ending at the audit's budget: ``budget / 10^(k/2)`` for ``k = 0, 1, …``
down to :data:`FIRST_RUNG` (10,000 → 100, 316, 1,000, 3,162, 10,000), so the rungs are evenly spaced on the
report's log axis and each costs about a third of the next.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: the smallest budget worth a clone: below it no attack in the battery has anything to train on
FIRST_RUNG = 100
#: the ratio between rungs: sqrt(10), two rungs per decade
RATIO = math.sqrt(10.0)


def budget_ladder(budget: int, *, first: int = FIRST_RUNG, ratio: float = RATIO) -> list[int]:
    """The rungs up to ``budget``, ascending, the last one ``budget`` itself; a ``ValueError`` when
    ``budget`` is below ``first`` (no clone would be trained)."""
    if ratio <= 1:
        raise ValueError(f"the ladder's ratio must be > 1, got {ratio}")
    if budget < first:
        raise ValueError(f"--budget {budget} is below the ladder's first rung ({first} queries); pass --budget {first} "
                         "or more")
    rungs, k = [], 0
    while True:
        b = round(budget / ratio**k)
        if b < first:
            break
        rungs.append(int(b))
        k += 1
    return sorted(set(rungs))


def first_reaching(budgets: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    """The smallest rung of ``budgets`` whose value is at least ``threshold`` (``None``: never within the
    ladder). The rungs are read in ascending order; a later dip does not undo a reached threshold, since
    the attacker would have stopped there."""
    for b, v in sorted(zip(budgets, values, strict=True)):
        if v >= threshold:
            return int(b)
    return None
