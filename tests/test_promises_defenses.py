"""Promises of single defenses on numbers a wrong implementation would change: rounding then renormalising,
the simplex check on rows summing to less than one, and MAD-argmax's greedy search ending at a local optimum."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from modelsteal._simplex import SIMPLEX_ATOL, SimplexError, check_simplex
from modelsteal.defenses import Defense, MADArgmax
from modelsteal.defenses.mad import mad_scores
from modelsteal.defenses.truncation import Rounding
from modelsteal.models import build_model

DT = torch.float64


def test_rounding_rounds_then_renormalises_on_known_rows():
    p = torch.tensor([
        [0.46, 0.34, 0.20],  # rounds to (0.5, 0.3, 0.2): already sums to one
        [0.44, 0.44, 0.12],  # rounds to (0.4, 0.4, 0.1), sum 0.9: renormalised to (4, 4, 1) / 9
        [0.66, 0.17, 0.17],  # rounds to (0.7, 0.2, 0.2), sum 1.1: (7, 2, 2) / 11
        [0.34, 0.33, 0.33],  # decimals=0 below: every entry rounds to 0, the row falls back to uniform
    ], dtype=DT)
    x = torch.zeros(len(p), 1)
    out = Rounding(decimals=1)(x[:3], p[:3])
    expected = torch.tensor([[0.5, 0.3, 0.2], [4 / 9, 4 / 9, 1 / 9], [7 / 11, 2 / 11, 2 / 11]], dtype=DT)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12), out
    assert torch.allclose(Rounding(decimals=0)(x[3:], p[3:]), torch.full((1, 3), 1 / 3, dtype=DT), atol=1e-12)
    # on arbitrary posteriors: exactly round(p, d) / row sum, for several d
    g = torch.Generator().manual_seed(0)
    q = torch.softmax(2 * torch.randn(50, 7, generator=g, dtype=DT), dim=1)
    for d in (1, 2, 3):
        r = torch.round(q, decimals=d)
        assert torch.allclose(Rounding(decimals=d)(torch.zeros(50, 1), q), r / r.sum(1, keepdim=True), atol=1e-12)


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


def test_mad_argmax_greedy_search_ends_at_a_local_optimum():
    """Above ``max_exact_classes`` the greedy ascent adds classes to ``S`` while one addition raises Eq. 4:
    at its answer ``y_S`` no single further class ``j ∉ S`` scores higher (a local optimum), and it took more
    than one step on some rows (else stopping after one step would pass too)."""
    k, n = 16, 24
    model = build_model("mlp", input_shape=(5,), num_classes=k, seed=5).to(DT).eval()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(n, 5, generator=gen, dtype=DT)
    y = torch.softmax(1.5 * torch.randn(n, k, generator=gen, dtype=DT), dim=1)
    greedy = MADArgmax(surrogate=model, epsilon=0.5, jacobian="all", max_exact_classes=12)
    m = greedy.gram(x)
    y_star = greedy.target(x, y)
    in_s = y_star > 0
    assert torch.allclose(y_star, in_s.to(DT) / in_s.sum(1, keepdim=True))  # a vertex y_S of Δ_c
    assert in_s[torch.arange(n), y.argmax(1)].all()
    sizes = in_s.sum(1)
    assert int(sizes.max()) >= 3, f"the search never took two steps on these rows: sizes {sizes.tolist()}"
    current = mad_scores(m, y, y_star.unsqueeze(1))[:, 0]
    eye = torch.eye(k, dtype=torch.bool)
    neighbours = (in_s.unsqueeze(1) | eye).to(DT)  # row j: S ∪ {j}
    neighbours = neighbours / neighbours.sum(-1, keepdim=True)
    scores = mad_scores(m, y, neighbours).masked_fill(in_s, float("-inf"))
    assert (scores <= current[:, None] + 1e-12).all(), (scores.max(1).values - current).max()
    # and it is a real ascent: at least as good as the start e_c, strictly better on some rows
    start = mad_scores(m, y, torch.nn.functional.one_hot(y.argmax(1), k).to(DT).unsqueeze(1))[:, 0]
    assert (current >= start - 1e-12).all() and (current > start + 1e-6).any()
