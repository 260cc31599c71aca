"""Adaptive Knockoff Nets: the gradient-bandit policy, the action tree, budget and clone quality."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from modelsteal import PredictionAPI
from modelsteal.attacks import AdaptiveKnockoff, TrainConfig, attack_class
from modelsteal.attacks.knockoff_adaptive import ActionTree, _RunningStats
from modelsteal.models import build_model
from modelsteal.training import accuracy, train

FAST = TrainConfig(epochs=8)


@pytest.fixture(scope="module")
def digits() -> dict[str, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    p = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return {"x_train": x[p[:900]], "y_train": y[p[:900]], "x_test": x[p[900:1300]], "y_test": y[p[900:1300]],
            "x_att": x[p[1300:]], "y_att": y[p[1300:]]}


@pytest.fixture(scope="module")
def victim(digits: dict[str, Tensor]) -> nn.Module:
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0)
    train(model, digits["x_train"], digits["y_train"], config=TrainConfig(epochs=15))
    return model


class OneRewardingClass:
    """A black box whose answers are confident only for images of class ``good`` (pixel value = class/10)."""

    num_classes = 10
    input_shape = (1, 2, 2)

    def __init__(self, good: int) -> None:
        self.good = good

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        cls = (x[:, 0, 0, 0] * 10).round().long()
        out = torch.full((len(x), 10), 0.1)
        out[cls == self.good] = torch.nn.functional.one_hot(torch.tensor(self.good), 10).float()
        return out


def _synthetic_pool(per_class: int = 200) -> tuple[Tensor, Tensor]:
    labels = torch.arange(10).repeat_interleave(per_class)
    x = (labels.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return x, labels


def test_registered() -> None:
    assert attack_class("knockoff-adaptive") is AdaptiveKnockoff


def test_budget_exact_and_clone_beats_chance(digits, victim) -> None:
    api = PredictionAPI(victim)
    attack = AdaptiveKnockoff(transfer_set=digits["x_att"], transfer_labels=digits["y_att"], clone="mlp",
                              train=FAST, policy_batch_size=16)
    result = attack(api, budget=301, seed=0)  # not a multiple of the batch size
    assert result.queries == api.queries() == 301 == len(result.transfer_x)
    assert len(set(result.info["indices"].tolist())) == 301  # no image queried twice
    assert int(result.info["action_counts"].sum()) == 301
    assert torch.equal(result.transfer_x, digits["x_att"][result.info["indices"]])
    assert accuracy(result.clone, digits["x_test"], digits["y_test"]) > 0.3


def test_stops_when_transfer_set_is_spent(digits, victim) -> None:
    api = PredictionAPI(victim)
    attack = AdaptiveKnockoff(transfer_set=digits["x_att"][:40], transfer_labels=digits["y_att"][:40],
                              clone="mlp", train=TrainConfig(epochs=1), policy_batch_size=7)
    result = attack(api, budget=100)
    assert result.queries == api.queries() == 40
    assert sorted(result.info["indices"].tolist()) == list(range(40))


@pytest.mark.parametrize("hierarchy", [None, {c: ("odd" if c % 2 else "even") for c in range(10)}])
def test_policy_concentrates_on_the_rewarding_class(hierarchy) -> None:
    x, labels = _synthetic_pool()
    attack = AdaptiveKnockoff(transfer_set=x, transfer_labels=labels, hierarchy=hierarchy, reward="certainty",
                              policy_lr=0.5, policy_batch_size=8, clone="mlp", train=TrainConfig(epochs=1))
    result = attack(OneRewardingClass(good=3), budget=400, seed=0)
    policy, counts = result.info["policy"], result.info["action_counts"]
    assert int(policy.argmax()) == 3 and float(policy[3]) > 0.5
    assert int(counts.argmax()) == 3 and int(counts[3]) > 400 // 3
    if hierarchy is not None:
        root = result.info["preferences"]["<root>"]  # children sorted: "even", "odd"
        assert float(root[1]) > float(root[0])


def test_gradient_bandit_update_rule() -> None:
    tree = ActionTree([0, 1, 2])
    pol = tree.policies()
    tree.update(torch.tensor([0]), torch.tensor([2.0]), pol, lr=0.5)
    h = next(iter(tree.H.values()))
    assert torch.allclose(h, 0.5 * 2.0 * (torch.tensor([1.0, 0, 0], dtype=torch.float64) - 1 / 3))
    # a batch update is the mean of the per-action terms
    tree = ActionTree([0, 1, 2])
    tree.update(torch.tensor([0, 1]), torch.tensor([1.0, -1.0]), pol, lr=1.0)
    h = next(iter(tree.H.values()))
    assert torch.allclose(h, torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64))


def test_action_tree_paths_masks_and_errors() -> None:
    tree = ActionTree([0, 1, 2, 3], {0: "a", 1: "a", 2: "b", 3: "b", "a": "top", 99: "unused"})
    probs = tree.leaf_probabilities()
    assert torch.allclose(probs, torch.full((4,), 0.25, dtype=torch.float64))
    tree.available[2] = False
    probs = tree.leaf_probabilities()
    # "b" keeps half the root's mass with one child left; "top"→"a" splits the other half
    assert torch.allclose(probs, torch.tensor([0.25, 0.25, 0.0, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="cycle"):
        ActionTree([0, 1], {0: "a", "a": "b", "b": "a"})
    with pytest.raises(ValueError, match="parent"):
        ActionTree([0, 1], {0: 1})


def test_running_stats_standardize() -> None:
    stats = _RunningStats()
    chunks = [torch.randn(5), torch.randn(9) * 3 + 1, torch.randn(1)]
    for c in chunks:
        stats.add(c)
    allv = torch.cat(chunks).double()
    z = stats.standardize(allv)
    assert abs(float(z.mean())) < 1e-9 and abs(float(z.std(unbiased=False)) - 1) < 1e-9
    assert torch.equal(_RunningStats().standardize(torch.ones(3)), torch.zeros(3, dtype=torch.float64))


def test_invalid_options(digits) -> None:
    x, y = digits["x_att"], digits["y_att"]
    with pytest.raises(ValueError):
        AdaptiveKnockoff(transfer_set=x, transfer_labels=y[:-1])
    with pytest.raises(ValueError):
        AdaptiveKnockoff(transfer_set=x, transfer_labels=y, reward="entropy")
    with pytest.raises(ValueError, match="cycle"):
        AdaptiveKnockoff(transfer_set=x, transfer_labels=y, hierarchy={0: "a", "a": "a"})


def test_a_sweep_record_keeps_where_the_queries_went(tmp_path) -> None:
    """The record of a ``knockoff-adaptive`` point holds the final policy and the per-class action counts (in the
    point's JSON; ``results.csv`` keeps one value per column): the counts add up to the queries spent."""
    import csv
    import json

    from modelsteal.experiment import run_sweep
    from modelsteal.experiment.config import parse_config

    raw = {"victim": {"dataset": "digits", "arch": "mlp", "epochs": 2}, "defenses": [{"name": "none"}],
           "attacks": [{"name": "knockoff-adaptive", "clone": "mlp", "train": {"epochs": 1}}], "budgets": [96],
           "device": "cpu"}
    (rec,) = run_sweep(parse_config(raw), out_dir=tmp_path, progress=False, plots=False)
    assert rec["classes"] == list(range(10))
    assert len(rec["policy"]) == 10 and abs(sum(rec["policy"]) - 1) < 1e-5
    assert sum(rec["action_counts"]) == rec["queries"] == 96
    (point,) = (tmp_path / "points").glob("*.json")
    assert json.loads(point.read_text())["action_counts"] == rec["action_counts"]
    header = next(csv.reader(open(tmp_path / "results.csv")))
    assert not {"classes", "policy", "action_counts"} & set(header)
