"""Query smoothing: the clone's target is exactly the combination of the copies' answers, every copy is paid for."""

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import KnockoffNets
from modelsteal.attacks.adaptive import QuerySmoothing, combine_answers
from modelsteal.blackbox import BudgetExceededError, QueryBudget
from modelsteal.training import TrainConfig

TRAIN = TrainConfig(epochs=1, lr=0.05)


class Recorder:
    """A black box that keeps every batch it answers."""

    def __init__(self, api):
        self.api, self.seen = api, []
        self.num_classes, self.input_shape = api.num_classes, api.input_shape

    def query(self, x, *, client="default"):
        self.seen.append(x.clone())
        return self.api.query(x, client=client)


def test_combine_rules_on_hand_made_answers():
    a = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1]]])
    assert torch.allclose(combine_answers(a, "mean"), torch.tensor([[1.4 / 3, 1.3 / 3, 0.1]]))
    med = torch.tensor([0.6, 0.3, 0.1])
    assert torch.allclose(combine_answers(a, "median"), (med / med.sum())[None])
    assert torch.allclose(combine_answers(a, "vote"), torch.tensor([[2 / 3, 1 / 3, 0.0]]))


@pytest.mark.parametrize("combine", ["mean", "median", "vote"])
def test_target_is_the_combination_of_the_copies_answers(combine, digits_victim, digits):
    api = PredictionAPI(digits_victim)
    rec = Recorder(api)
    k, budget = 3, 3 * 40 + 2  # two queries left over: never spent on a partial image
    attack = QuerySmoothing(transfer_set=digits.x_train, copies=k, augment="noise", combine=combine, clone="mlp",
                            train=TRAIN, device="cpu")
    result = attack(rec, budget=budget, seed=0)
    sent = torch.cat(rec.seen)
    assert result.queries == api.total_queries == len(sent) == 3 * 40
    assert len(result.transfer_x) == 40
    copies = sent.view(40, k, *sent.shape[1:])
    assert not torch.equal(copies[:, 0], copies[:, 1])  # augmented: the copies differ
    with torch.no_grad():
        answers = api.query(sent)  # the API is deterministic: the same answers again
    expect = combine_answers(answers.view(40, k, -1), combine)
    assert torch.allclose(result.transfer_y, expect, atol=1e-6)
    single = combine_answers(answers.view(40, k, -1)[:, :1], combine)
    assert not torch.allclose(result.transfer_y, single, atol=1e-3)  # not just the first copy's answer
    # the clone trains on the original images (rows of the pool), not on the copies
    pool = digits.x_train.flatten(1)
    assert all((pool == row).all(1).any() for row in result.transfer_x.flatten(1))


def test_identical_copies_mean_is_knockoffs_nquery(digits_victim, digits):
    api = PredictionAPI(digits_victim, defense=None)
    common = {"transfer_set": digits.x_train, "clone": "mlp", "train": TRAIN, "device": "cpu"}
    s = QuerySmoothing(copies=4, augment=None, combine="mean", **common)(api, budget=200, seed=3)
    n = KnockoffNets(queries_per_image=4, **common)(api, budget=200, seed=3)
    assert torch.equal(s.transfer_x, n.transfer_x)
    assert torch.allclose(s.transfer_y, n.transfer_y)
    assert s.queries == n.queries == 200


def test_budget_one_short_of_a_copy_set_is_refused(digits_victim, digits):
    api = PredictionAPI(digits_victim)
    budgeted = QueryBudget(api, budget=5)
    with pytest.raises(BudgetExceededError):
        budgeted.query(digits.x_train[:6])  # one over: refused before anything is sent
    assert budgeted.used == 0 and api.total_queries == 0
    attack = QuerySmoothing(transfer_set=digits.x_train, copies=6, clone="mlp", train=TRAIN, device="cpu")
    with pytest.raises(ValueError, match="too small for 6 copies"):
        attack(api, budget=5, seed=0)
    assert api.total_queries == 0


@pytest.mark.parametrize("bad", [{"copies": 0}, {"combine": "max"}, {"augment": "rotate"}])
def test_bad_options_are_refused(bad, digits):
    with pytest.raises(ValueError):
        QuerySmoothing(transfer_set=digits.x_train, **bad)
