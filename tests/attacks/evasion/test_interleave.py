"""Interleaving: the fraction of natural queries is exact at every prefix, and the inner attack is unchanged."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.attacks.evasion import Interleave

from .helpers import Recorder, jbda


# -- interleaving ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.75])
def test_interleaving_fraction_is_exact_at_every_prefix(fraction, digits_victim, digits):
    """Natural rows (the test split) and JBDA rows (seeds from the validation split and their children) are told
    apart by value; among the first p queries exactly ⌊p·f⌋ are natural. Bug caught: natural rows placed after
    the attack rows of a batch, or a rounded instead of floored count."""
    api = PredictionAPI(digits_victim)
    rec = Recorder(api)
    natural = digits.x_test
    result = Interleave(attack=jbda(digits), natural=natural, fraction=fraction)(rec, budget=240, seed=1)
    stream = rec.stream.flatten(1)
    is_natural = (torch.cdist(stream, natural.flatten(1)) == 0).any(dim=1)
    prefix = is_natural.long().cumsum(0)
    p = torch.arange(1, len(stream) + 1)
    f = Fraction(fraction).limit_denominator(1000)
    assert prefix.tolist() == [int(i) * f.numerator // f.denominator for i in p]  # ⌊p·f⌋
    assert result.info["natural_queries"] == int(is_natural.sum())
    assert result.info["natural_fraction"] == int(is_natural.sum()) / len(stream)
    assert result.queries == len(stream) <= 240


def test_interleaving_leaves_the_inner_attack_unchanged(digits_victim, digits):
    """With half the stream natural, the inner attack makes the queries it makes alone on half the budget, and
    fraction 0 is the inner attack itself. Bug caught: the natural order drawn from the attack's generator
    (shifting the inner attack's random choices), or natural answers handed to the inner attack."""
    alone = jbda(digits)(PredictionAPI(digits_victim), budget=150, seed=2)
    for fraction, budget in [(0.5, 300), (0.0, 150)]:
        mixed = Interleave(attack=jbda(digits), natural=digits.x_test, fraction=fraction)(
            PredictionAPI(digits_victim), budget=budget, seed=2)
        assert torch.equal(alone.transfer_x, mixed.transfer_x)
        assert torch.equal(alone.transfer_y, mixed.transfer_y)
        # the natural row due after the last attack row is not sent: 150 attack rows end at position 299
        assert mixed.info["natural_queries"] == (mixed.queries // 2 if fraction else 0)
        assert mixed.info["attack_queries"] == 150
