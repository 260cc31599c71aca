"""The black box counts what it answered: a batch whose defense raises is not counted, in the API, in the
attacker's budget wrapper, or for the client's remaining budget."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from modelsteal import PredictionAPI, QueryBudget
from modelsteal.defenses import Defense


class _FailsOnCall(Defense):
    """Passes posteriors through, except that call number ``fail_at`` (0-based) raises."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.calls = fail_at, 0

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            raise RuntimeError("defense failed")
        return probs


@pytest.mark.parametrize("fail_at", [0, 2])  # the first sub-batch, or a later one after two were answered
def test_a_batch_whose_defense_raises_is_not_counted(digits_victim, digits, fail_at):
    defense = _FailsOnCall(fail_at)
    api = PredictionAPI(digits_victim, defense=defense, budget=100, batch_size=4)  # 10 rows: sub-batches 4, 4, 2
    budgeted = QueryBudget(api, budget=50, client="alice")
    x = digits.x_test[:10]
    with pytest.raises(RuntimeError, match="defense failed"):
        budgeted.query(x)
    assert defense.calls == fail_at + 1
    assert api.queries("alice") == 0 and api.total_queries == 0
    assert budgeted.used == 0 and budgeted.remaining == 50
    defense.fail_at = -1
    out = budgeted.query(x)  # the same batch answered in full afterwards counts once
    assert out.shape == (10, 10)
    assert api.queries("alice") == 10 and budgeted.used == 10
    assert torch.allclose(out, api.posteriors(x))
