"""The simplex check every defense's answer goes through: rows summing to less or more than one, negative or
NaN rows are rejected; rounding error is accepted."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from modelsteal._simplex import SIMPLEX_ATOL, SimplexError, check_simplex
from modelsteal.defenses import Defense

DT = torch.float64


class _Scaled(Defense):
    """A faulty defense: every row multiplied by ``factor`` (so it no longer sums to one)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        return probs * self.factor


@pytest.mark.parametrize("factor", [0.9, 1 - 3 * SIMPLEX_ATOL, 1.1, 1 + 3 * SIMPLEX_ATOL])
def test_the_simplex_check_rejects_rows_summing_to_less_or_more_than_one(factor):
    p = torch.softmax(torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=DT), dim=1)
    with pytest.raises(SimplexError, match=r"row 0 sums to"):
        check_simplex(p * factor)
    with pytest.raises(SimplexError, match=r"row 0 sums to"):
        _Scaled(factor)(torch.zeros(4, 1), p)
    bad_row = p.clone()
    bad_row[2] *= factor
    with pytest.raises(SimplexError, match=r"row 2 sums to"):
        check_simplex(bad_row)


def test_the_simplex_check_accepts_rounding_error_and_rejects_negative_or_nan_rows():
    p = torch.tensor([[0.5, 0.5 - SIMPLEX_ATOL / 2, 0.0]], dtype=DT)
    assert check_simplex(p) is p  # within the tolerance
    with pytest.raises(SimplexError, match="negative"):
        check_simplex(torch.tensor([[1.1, -0.1]], dtype=DT))
    with pytest.raises(SimplexError, match="NaN"):
        check_simplex(torch.tensor([[float("nan"), 1.0]], dtype=DT))
