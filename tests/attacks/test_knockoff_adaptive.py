"""Adaptive Knockoff Nets: the gradient-bandit policy, the action tree, budget and clone quality."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import modelsteal.training
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


@pytest.fixture
def train_calls(monkeypatch):
    """Every call of the one training loop made by an attack: the targets ``y`` it was given."""
    calls: list[dict] = []
    real = modelsteal.training.train

    def spy(model, x, y, **kw):
        calls.append({"x": x.detach().clone(), "y": y.detach().clone()})
        return real(model, x, y, **kw)

    monkeypatch.setattr(modelsteal.training, "train", spy)
    return calls


# ------------------------------------------------------------------------------------------------
# adaptive Knockoff: reward composition and baseline, recomputed from the queries
# ------------------------------------------------------------------------------------------------
K, PIXELS = 5, 4


_W = torch.randn(K, PIXELS, generator=torch.Generator().manual_seed(11))


_A = torch.randn(K, PIXELS, generator=torch.Generator().manual_seed(12))


class _SoftBox:
    """Deterministic soft answers ``softmax(3 W x)``: every image gets its own margin and spread."""

    num_classes, input_shape = K, (1, 2, 2)

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        return torch.softmax(3 * x.flatten(1) @ _W.T, dim=1)


class _FixedLogits(nn.Module):
    """A knockoff whose logits ``A x`` do not move under training (its one parameter has zero gradient), so
    the loss reward ``−Σ y log F_A(x)`` can be recomputed after the run."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("a", _A.clone())
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.a.T + 0 * self.p


def _standardised(values: list[Tensor]) -> Tensor:
    """The last batch standardised by the mean and population std of every value so far."""
    allv = torch.cat(values).double()
    std = float(allv.std(unbiased=False))
    if std < 1e-8:
        return torch.zeros_like(values[-1], dtype=torch.float64)
    return (values[-1].double() - allv.mean()) / std


@pytest.mark.parametrize("reward", ["all", "certainty", "diversity", "loss"])
def test_adaptive_rewards_and_baseline_match_the_paper(reward):
    per_class, classes, b, steps, window, lr = 30, 4, 8, 6, 12, 0.7
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = torch.rand(len(labels), 1, 2, 2, generator=torch.Generator().manual_seed(3))
    attack = AdaptiveKnockoff(transfer_set=x, transfer_labels=labels, reward=reward, policy_lr=lr,
                              policy_batch_size=b, diversity_window=window, clone=lambda s, k: _FixedLogits(),
                              train=TrainConfig(epochs=1))
    result = attack(_SoftBox(), budget=b * steps, seed=0)
    idx = result.info["indices"]
    assert len(idx) == b * steps
    box, knockoff = _SoftBox(), _FixedLogits()
    names = ("certainty", "diversity", "loss") if reward == "all" else (reward,)
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    history = torch.empty(0, K)
    h = torch.zeros(classes, dtype=torch.float64)
    earlier: list[Tensor] = []
    for t in range(steps):
        batch = idx[t * b:(t + 1) * b]
        y = box.query(x[batch])
        logits = knockoff(x[batch]).detach()
        top2 = y.topk(2, dim=1).values
        ybar = history.mean(0) if len(history) else y.mean(0)  # the previous Δ answers
        raw = {"certainty": top2[:, 0] - top2[:, 1], "diversity": (y - ybar).clamp_min(0).sum(1),
               "loss": -(y * torch.log_softmax(logits, 1)).sum(1)}
        r = torch.zeros(b, dtype=torch.float64)
        for n in names:  # each reward standardised by its own running statistics, then summed
            seen[n].append(raw[n])
            r += _standardised(seen[n])
        assert abs(result.info["mean_reward"][t] - float(r.mean())) < 1e-6, (t, reward)
        baseline = float(torch.cat(earlier).mean()) if earlier else float(r.mean())  # earlier rewards only
        pi = torch.softmax(h, 0)
        leaves = labels[batch]
        adv = r - baseline
        h = h + lr / b * (torch.zeros(classes, dtype=torch.float64).index_add_(0, leaves, adv) - adv.sum() * pi)
        earlier.append(r)
        history = torch.cat([history, y])[-window:]
    got = result.info["preferences"]["<root>"]
    assert torch.allclose(got, h, rtol=0, atol=1e-6), (got, h)
    assert float(h.abs().max()) > 0.05  # the preferences moved: the comparison means something


@pytest.mark.parametrize("labels", ["soft", "argmax"])
def test_adaptive_final_clone_trains_on_the_collected_answers(train_calls, labels):
    y_labels = torch.arange(3).repeat_interleave(10)
    x = torch.rand(len(y_labels), 1, 2, 2, generator=torch.Generator().manual_seed(5))
    attack = AdaptiveKnockoff(transfer_set=x, transfer_labels=y_labels, policy_batch_size=4, labels=labels,
                              clone=lambda s, k: _FixedLogits(), train=TrainConfig(epochs=1))
    result = attack(_SoftBox(), budget=12, seed=0)
    final = train_calls[-1]
    answers = _SoftBox().query(x[result.info["indices"]])
    assert torch.equal(final["x"], x[result.info["indices"]]) and torch.allclose(result.transfer_y, answers)
    if labels == "soft":
        assert final["y"].dtype.is_floating_point and torch.equal(final["y"], result.transfer_y)
    else:
        assert final["y"].dtype == torch.long and torch.equal(final["y"], answers.argmax(1))
