"""D-DAE (Chen et al., IEEE S&P 2023): the restorer undoes a known defense on held-out shadow answers, the
detector tells which defense answers, and bad suspicions are refused before any query."""

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.attacks.adaptive import DDAE
from modelsteal.attacks.adaptive.restoration import _CACHE
from modelsteal.blackbox import QueryBudget
from modelsteal.defenses import make_defense
from modelsteal.training import TrainConfig

TRAIN = TrainConfig(epochs=6, lr=0.05, momentum=0.9)


def _attack(digits, **kw):
    opts = {"defense": "mad", "strength": 0.9, "defense_options": {"norm": "l1"}, "shadow_models": 2,
            "shadow_inputs": 600, "restorer_epochs": 30, "detector_epochs": 10, **kw}
    return DDAE(transfer_set=digits.x_train, transfer_labels=digits.y_train, clone="mlp", train=TRAIN,
                device="cpu", **opts)


def test_restorer_lowers_the_l1_to_clean_answers_well_below_mads_epsilon(digits_victim, digits):
    attack = _attack(digits)
    rest = attack.learn(QueryBudget(PredictionAPI(digits_victim), budget=1), torch.Generator().manual_seed(0))
    h = rest.heldout["mad"]
    assert h["defended"] == pytest.approx(0.9, abs=0.02)  # MAD spends its L1 budget
    assert h["restored"] < 0.45 * h["defended"], h  # restored answers are far closer to the clean ones


def test_detector_finds_the_defense_and_the_clone_learns_from_restored_answers(digits_victim, digits):
    _CACHE.clear()
    attack = _attack(digits, defense=[{"name": "mad", "strength": 0.9, "options": {"norm": "l1"}},
                                      {"name": "reverse-sigmoid", "strength": 0.2, "options": {"gamma": 0.4}}],
                     strength=None, defense_options=None)
    mad = make_defense("mad", strength=0.9, norm="l1")
    defended = attack(PredictionAPI(digits_victim, defense=mad), budget=300, seed=0)
    assert defended.info["detected"] == "mad" and defended.info["detected_share"] > 0.6
    assert defended.queries == 300
    clean = attack(PredictionAPI(digits_victim), budget=300, seed=0)
    assert clean.info["detected"] == "clean"
    assert torch.equal(clean.transfer_y, PredictionAPI(digits_victim).query(clean.transfer_x))  # raw kept
    # restored answers are closer to the clean ones than the defended answers were
    truth = PredictionAPI(digits_victim).query(defended.transfer_x)
    raw = PredictionAPI(digits_victim, defense=make_defense("mad", strength=0.9, norm="l1")).query(
        defended.transfer_x)
    assert (defended.transfer_y - truth).abs().sum(1).mean() < 0.6 * (raw - truth).abs().sum(1).mean()


def test_every_restorable_defense_is_accepted_with_its_own_strength_type(digits):
    entries = [{"name": "rounding", "strength": 1}, {"name": "top-k", "strength": 2}, {"name": "label-only"},
               {"name": "random-noise", "strength": 1.0}, {"name": "am", "strength": 0.95}]
    attack = _attack(digits, defense=entries, strength=None, defense_options=None)
    assert [s.strengths for s in attack.suspects] == [(1,), (2,), (None,), (1.0,), (0.95,)]


@pytest.mark.parametrize("bad, match", [
    ({"defense": "dawn"}, "cannot restore defense 'dawn'"),
    ({"defense": "mad", "strength": 2.5}, "out of range"),
    ({"defense": "am", "strength": 1.5}, "out of range"),
    ({"defense": "mad", "strength": -0.1}, "out of range"),
    ({"defense": "rounding", "strength": "two"}, "must be a number"),
    ({"defense": "mad", "strength": 0.5, "defense_options": {"nrom": "l1"}}, "nrom"),
])
def test_bad_suspicions_are_refused_at_construction(bad, match, digits):
    with pytest.raises(ValueError, match=match):
        _attack(digits, **bad)
