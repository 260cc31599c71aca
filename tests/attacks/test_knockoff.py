import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import KnockoffNets, TrainConfig
from modelsteal.attacks.augment import random_crop_flip
from modelsteal.metrics import attacker_accuracy

FAST = TrainConfig(epochs=6, lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def pool(digits):
    return digits.x_train[digits.y_train >= 5]  # attacker sees only half of the classes


def test_knockoff_spends_exactly_its_budget_and_beats_chance(digits_victim, digits, pool):
    api = PredictionAPI(digits_victim)
    result = KnockoffNets(transfer_set=pool, clone="mlp", train=FAST)(api, budget=300, seed=0)
    assert result.queries == 300 == api.queries()
    acc = attacker_accuracy(result.clone, digits.x_test, digits.y_test)
    assert acc > 0.3, acc  # chance is 0.1; classes 0-4 were never queried


def test_same_seed_same_clone(digits_victim, pool):
    a = KnockoffNets(transfer_set=pool, clone="mlp", train=FAST)
    r1, r2 = a(PredictionAPI(digits_victim), budget=200, seed=3), a(PredictionAPI(digits_victim), budget=200, seed=3)
    for p1, p2 in zip(r1.clone.parameters(), r2.clone.parameters(), strict=True):
        assert torch.equal(p1, p2)


def test_argmax_attacker_trains_on_labels(digits_victim, pool):
    r = KnockoffNets(transfer_set=pool, clone="mlp", train=FAST, labels="argmax")(
        PredictionAPI(digits_victim), budget=100
    )
    assert r.transfer_y.shape == (100, 10)
    assert KnockoffNets(transfer_set=pool, labels="argmax").targets(r.transfer_y).dtype == torch.long


def test_nquery_counts_every_query(digits_victim, pool):
    api = PredictionAPI(digits_victim)
    r = KnockoffNets(transfer_set=pool, clone="mlp", train=FAST, queries_per_image=3)(api, budget=100, seed=0)
    assert api.queries() == 99 and r.queries == 99 and r.info["images"] == 33
    api = PredictionAPI(digits_victim)
    r = KnockoffNets(transfer_set=pool, clone="mlp", train=FAST, queries_per_image=2, query_augment="crop-flip")(
        api, budget=100, seed=0
    )
    assert api.queries() == 100 and len(r.transfer_x) == 100


def test_crop_flip_is_a_shifted_copy():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2, flip=False)
    for i in range(2):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        windows = [padded[:, a : a + 5, b : b + 5] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_bad_transfer_set_is_named(digits_victim):
    with pytest.raises(ValueError, match="transfer set images have shape"):
        KnockoffNets(transfer_set=torch.zeros(10, 1, 28, 28))(PredictionAPI(digits_victim), budget=5)
    with pytest.raises(ValueError, match="non-empty tensor"):
        KnockoffNets(transfer_set=torch.zeros(0, 1, 8, 8))
