"""Truncating defenses, on numbers a wrong implementation would change: rounding rounds, then renormalises."""

from __future__ import annotations

import torch

from modelsteal.defenses.truncation import Rounding

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
