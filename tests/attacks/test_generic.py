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
#: data-free attacks (DFME, MAZE) learn from millions of generator queries, not 257: here they run with a batch
#: that fits the budget and only their budget is checked (tests/attacks/test_data_free.py checks their promise)
DATA_FREE = {n for n in IMAGE_ATTACKS if getattr(attack_class(n), "data_free", False)}
SMALL_DATA_FREE = {"batch_size": 16, "directions": 1}


@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_every_attack_respects_its_budget_and_learns(name, digits_victim, digits):
    api = PredictionAPI(digits_victim)
    attack = build_attack(
        AttackConfig(name=name, clone="mlp", train={"epochs": 6, "lr": 0.05, "momentum": 0.9},
                     options=SMALL_DATA_FREE if name in DATA_FREE else {}),
        victim_arch="mlp",
        transfer=(digits.x_train, digits.y_train),
        seeds=digits.x_val[:40],
        device=torch.device("cpu"),
    )
    result = attack(api, budget=BUDGET, seed=0)
    assert result.queries == api.total_queries <= BUDGET  # all client keys together (sybil uses many)
    assert result.queries >= BUDGET - 10, f"{name} left {BUDGET - result.queries} queries unspent"
    if name in DATA_FREE:
        return
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


@pytest.mark.parametrize("name", IMAGE_ATTACKS)
def test_every_attack_has_the_top1_switch(name, digits_victim, digits, monkeypatch):
    """``labels: argmax`` (issue 25's top-1 attacker) reaches the clone's training on every image attack: the
    targets the returned clone trains on are class indices, never posteriors."""
    from modelsteal import training

    calls = []
    real = training.train

    def spy(model, x, y, **kw):
        calls.append((model, y.clone()))
        return real(model, x, y, **kw)

    monkeypatch.setattr(training, "train", spy)
    api = PredictionAPI(digits_victim)
    attack = build_attack(
        AttackConfig(name=name, clone="mlp", train={"epochs": 1, "lr": 0.05, "momentum": 0.9},
                     options={"labels": "argmax", **(SMALL_DATA_FREE if name in DATA_FREE else {})}),
        victim_arch="mlp", transfer=(digits.x_train, digits.y_train), seeds=digits.x_val[:40],
        device=torch.device("cpu"),
    )
    assert attack.labels == "argmax"
    result = attack(api, budget=BUDGET, seed=0)
    final = [y for m, y in calls if m is result.clone]
    assert final, f"{name}: the returned clone was not trained through training.train"
    y = final[-1]
    assert y.ndim == 1 and not y.is_floating_point(), f"{name} trained its clone on soft targets under argmax"
