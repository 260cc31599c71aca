"""Chain: defenses applied in turn, as one defense (its records, fits and class checks those of its stages)."""

from __future__ import annotations

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.defenses import DAWN, MAD, AdaptiveMisinformation, Rounding, TopK
from modelsteal.defenses.compose import Chain


def _probs(n: int = 64, k: int = 5) -> torch.Tensor:
    return torch.softmax(3 * torch.randn(n, k, generator=torch.Generator().manual_seed(0)), dim=1)


def test_stages_answer_in_turn_and_order_matters():
    x, p = torch.zeros(64, 3), _probs()
    chained = Chain(Rounding(decimals=1), TopK(k=2))(x, p)
    assert torch.equal(chained, TopK(k=2)(x, Rounding(decimals=1)(x, p)))
    reversed_ = Chain(TopK(k=2), Rounding(decimals=1))(x, p)
    assert not torch.allclose(chained, reversed_)  # a chain that ignored its order would give one answer


def test_none_stages_are_dropped_and_an_empty_chain_is_refused():
    x, p = torch.zeros(64, 3), _probs()
    assert torch.equal(Chain(None, TopK(k=1), None)(x, p), TopK(k=1)(x, p))
    with pytest.raises(ValueError, match="at least one"):
        Chain(None)
    with pytest.raises(TypeError, match="must be a Defense"):
        Chain(TopK(k=1), "mad")


def test_the_chain_declares_what_its_stages_need():
    assert Chain(Rounding(), MAD(epsilon=0.5)).uses_input and not Chain(Rounding(), TopK(k=2)).uses_input
    assert Chain(Rounding(), AdaptiveMisinformation(tau=0.5)).needs_fit
    assert not Chain(Rounding(), TopK(k=2)).needs_fit
    with pytest.raises(ValueError):
        Chain(Rounding(), TopK(k=12)).check_classes(10)  # top-12 of 10 classes, refused by the second stage


def test_dawn_behind_another_defense_records_the_labels_the_chain_answered(digits_victim, digits):
    x = digits.x_test[:200]
    dawn = DAWN(rate=0.3, key="chain-test")
    chain = Chain(Rounding(decimals=3), dawn)
    answers = PredictionAPI(digits_victim, defense=chain).query(x, client="alice")
    before = PredictionAPI(digits_victim, defense=Rounding(decimals=3)).query(x)
    moved = answers.argmax(1) != before.argmax(1)  # the rows DAWN answered with a wrong label
    records = chain.take_new_records("alice")
    assert set(records) == {"1:DAWN"}
    wrong = sorted(w for _, w in records["1:DAWN"]["records"])
    assert 20 < len(wrong) < 100 and wrong == sorted(answers.argmax(1)[moved].tolist())
    assert chain.take_new_records("alice") is None  # taken once
