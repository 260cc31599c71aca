"""One property test over every registered image attack: the budget is never exceeded and the clone beats
chance on an undefended victim. (Tabular extraction attacks have their own tests in test_tramer_*.)"""


import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import attack_class, available_attacks
from modelsteal.attacks.base import image_attacks
from modelsteal.experiment.config import AttackConfig
from modelsteal.experiment.points import build_attack
from modelsteal.metrics import attacker_accuracy
from modelsteal.models import build_model

IMAGE_ATTACKS = image_attacks()
BUDGET = 257  # not a multiple of anything convenient


@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_every_attack_respects_its_budget_and_learns(name, digits_victim, digits):
    api = PredictionAPI(digits_victim)
    attack = build_attack(
        AttackConfig(name=name, clone="mlp", train={"epochs": 6, "lr": 0.05, "momentum": 0.9}),
        victim_arch="mlp",
        transfer=(digits.x_train, digits.y_train),
        seeds=digits.x_val[:40],
        device=torch.device("cpu"),
    )
    result = attack(api, budget=BUDGET, seed=0)
    assert result.queries == api.total_queries <= BUDGET  # all client keys together (sybil uses many)
    assert result.queries >= BUDGET - 10, f"{name} left {BUDGET - result.queries} queries unspent"
    assert attacker_accuracy(result.clone, digits.x_test, digits.y_test) > 0.3  # chance is 0.1


def test_tabular_attacks_point_to_their_command():
    tabular = [a for a in available_attacks() if a not in IMAGE_ATTACKS]
    assert tabular, "the Tramer attacks should be registered"
    with pytest.raises(ValueError, match="modelsteal tramer"):
        build_attack(AttackConfig(name=tabular[0]), victim_arch="mlp", transfer=(torch.zeros(1), None),
                     seeds=torch.zeros(1), device=torch.device("cpu"))


def test_unknown_attack_lists_known():
    with pytest.raises(ValueError, match="known attacks: .*knockoff"):
        attack_class("steal-everything")


def test_only_stackable_attacks_hand_over_their_clones_training():
    # bugs caught: a non-stackable attack (the confidence filter inherits Knockoff's collect) handing over a
    # clone job that would train on every answer instead of the kept ones; a stackable attack without collect
    from modelsteal import PredictionAPI
    from modelsteal.attacks.base import Attack

    pool = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    api = PredictionAPI(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0))
    job = attack_class("knockoff")(transfer_set=pool, clone="mlp").begin(api, budget=12, seed=0)
    assert len(job.x) == 12
    with pytest.raises(TypeError, match="'knockoff-filter' is not stackable"):
        attack_class("knockoff-filter")(transfer_set=pool, clone="mlp").begin(api, budget=12, seed=0)
    with pytest.raises(TypeError, match="Broken is stackable but defines no collect"):
        type("Broken", (Attack,), {"stackable": True, "run": lambda self, victim, *, generator: None})
