"""JBDA, JB-self and JB-top-k: budget accounting, step geometry, batched Jacobians, clone quality."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelsteal import BudgetExceededError, PredictionAPI
from modelsteal.attacks import JBDA, JBSelf, JBTopK, TrainConfig, attack_class
from modelsteal.training import accuracy, train
from modelsteal.attacks.jbda import input_jacobian
from modelsteal.models import build_model

FAST = TrainConfig(epochs=8)


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.Tensor]:
    """sklearn's 8×8 digits in [0, 1] as (N, 1, 8, 8): victim train / test / attacker splits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    p = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return {"x_train": x[p[:900]], "y_train": y[p[:900]], "x_test": x[p[900:1300]], "y_test": y[p[900:1300]],
            "x_att": x[p[1300:]]}


@pytest.fixture(scope="module")
def victim(digits: dict[str, torch.Tensor]) -> nn.Module:
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0)
    train(model, digits["x_train"], digits["y_train"], config=TrainConfig(epochs=15))
    assert accuracy(model, digits["x_test"], digits["y_test"]) > 0.85
    return model


def _attack(cls: type, digits: dict[str, torch.Tensor], **kw: object):
    return cls(seed_set=digits["x_att"], seed_size=kw.pop("seed_size", 50), clone="mlp", train=FAST, **kw)


def test_registered() -> None:
    assert attack_class("jbda") is JBDA
    assert attack_class("jb-self") is JBSelf
    assert attack_class("jb_top_k") is JBTopK


@pytest.mark.parametrize("cls", [JBDA, JBSelf])
def test_budget_trims_last_round(cls: type, digits, victim) -> None:
    api = PredictionAPI(victim)
    result = _attack(cls, digits)(api, budget=777, seed=0)
    # 50 seeds, then rounds of 50, 100, 200 new points, then 377 of the 400 the last round wanted
    assert result.queries == api.queries() == 777
    assert torch.bincount(result.info["made_in_round"]).tolist() == [50, 50, 100, 200, 377]
    assert len(result.transfer_x) == len(result.transfer_y) == 777


def test_top_k_trims_whole_groups(digits, victim) -> None:
    api = PredictionAPI(victim)
    result = _attack(JBTopK, digits, k=3)(api, budget=777, seed=0)
    # 50 seeds + 3·50, then ⌊577 / 3⌋ = 192 whole groups of 3 — one query is left unspent
    assert result.queries == api.queries() == 50 + 150 + 576
    last = result.info["made_in_round"] == 2
    assert int(last.sum()) == 576
    per_parent = torch.bincount(result.info["parents"][last])
    assert set(per_parent[per_parent > 0].tolist()) == {3}


def test_budget_smaller_than_seed_set(digits, victim) -> None:
    api = PredictionAPI(victim)
    result = _attack(JBTopK, digits, k=2)(api, budget=30, seed=0)
    assert result.queries == api.queries() == 30 and result.info["rounds"] == 0


def test_rounds_limit_and_growth(digits, victim) -> None:
    api = PredictionAPI(victim)
    r = _attack(JBDA, digits, seed_size=20, rounds=3)(api, budget=10_000)
    assert r.queries == 20 * 2**3
    api = PredictionAPI(victim)
    r = _attack(JBTopK, digits, seed_size=10, rounds=2, k=2)(api, budget=10_000)
    assert r.queries == 10 * 3**2


def test_never_exceeds_budget_of_a_limited_api(digits, victim) -> None:
    """The API's own budget is never hit: the attack stops on its QueryBudget first."""
    api = PredictionAPI(victim, budget=301)
    result = _attack(JBTopK, digits, k=4)(api, budget=301)
    assert result.queries == api.queries() <= 301
    with pytest.raises(BudgetExceededError):
        api.query(digits["x_att"][:10])


@pytest.mark.parametrize(("cls", "options"), [
    (JBDA, {}), (JBSelf, {}), (JBTopK, {}), (JBDA, {"labels": "argmax", "warm_start": True}),
])
def test_clone_beats_chance(cls: type, options: dict, digits, victim) -> None:
    result = _attack(cls, digits, **options)(PredictionAPI(victim), budget=800, seed=1)
    assert accuracy(result.clone, digits["x_test"], digits["y_test"]) > 0.3


def test_augmented_points_are_lambda_steps(digits, victim) -> None:
    result = _attack(JBDA, digits, step=0.05, tau=2)(PredictionAPI(victim), budget=400, seed=0)
    x, parents, rounds = result.transfer_x, result.info["parents"], result.info["made_in_round"]
    assert result.info["step_sizes"] == [0.05, 0.05, -0.05]
    synthetic = parents >= 0
    diff = x[synthetic] - x[parents[synthetic]]
    assert float(diff.abs().max()) <= 0.05 + 1e-6
    free = (x[synthetic] > 0) & (x[synthetic] < 1) & (diff != 0)  # not clipped, gradient not zero
    assert bool(free.any())
    assert torch.allclose(diff[free].abs(), torch.full_like(diff[free], 0.05), atol=1e-6)
    assert x.min() >= 0 and x.max() <= 1
    # parents always come from earlier rounds
    assert bool((rounds[parents[synthetic]] < rounds[synthetic]).all())


def _per_sample_grad(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, score: str) -> torch.Tensor:
    rows = []
    model.eval()
    for xi, c in zip(x, classes, strict=True):
        xi = xi.unsqueeze(0).clone().requires_grad_(True)
        z = model(xi)
        if score == "log_prob":
            z = torch.log_softmax(z, dim=1)
        z[0, int(c)].backward()
        rows.append(xi.grad[0])
    return torch.stack(rows)


@pytest.mark.parametrize("score", ["logit", "log_prob"])
def test_input_jacobian_is_batched_per_sample_gradient(score: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.5), nn.Linear(4 * 8 * 8, 5))
    model.train()
    x = torch.rand(13, 1, 8, 8)
    classes = torch.randint(0, 5, (13,))
    got = input_jacobian(model, x, classes, score=score, batch_size=5)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # parameter gradients untouched
    want = _per_sample_grad(model, x, classes, score)
    assert torch.allclose(got, want, atol=1e-6)


def test_augment_matches_reference_and_flips_sign(victim, digits) -> None:
    attack = JBDA(seed_set=digits["x_att"], tau=3, step=0.1)
    x = digits["x_att"][:16]
    answers = PredictionAPI(victim).query(x)
    labels = answers.argmax(1)
    grad = _per_sample_grad(victim, x, labels, "logit")
    for rho, sign in [(0, 1.0), (2, 1.0), (3, -1.0), (6, 1.0)]:
        new, classes = attack.augment(victim, x, answers, rho=rho)
        assert torch.equal(classes, labels)
        assert torch.allclose(new, (x + sign * 0.1 * grad.sign()).clamp(0, 1), atol=1e-6)


def test_step_classes(victim, digits) -> None:
    x = digits["x_att"][:20]
    answers = torch.softmax(torch.randn(20, 10), dim=1)  # deliberately unrelated to the substitute
    logits = victim(x).detach()
    jbda = JBDA(seed_set=x)
    assert torch.equal(jbda.step_classes(victim, x, answers)[:, 0], answers.argmax(1))
    jbself = JBSelf(seed_set=x)
    assert torch.equal(jbself.step_classes(victim, x, answers)[:, 0], logits.argmax(1))
    top = JBTopK(seed_set=x, k=3)
    classes = top.step_classes(victim, x, answers)
    assert classes.shape == (20, 3)
    assert torch.equal(classes, logits.argsort(dim=1, descending=True)[:, 1:4])
    new, flat = top.augment(victim, x, answers, rho=5)
    assert new.shape == (60, 1, 8, 8) and torch.equal(flat, classes.reshape(-1))
    # targeted steps move towards their target: its log-probability goes up for most points
    before = torch.log_softmax(victim(x.repeat_interleave(3, 0)), 1).gather(1, flat.view(-1, 1))
    after = torch.log_softmax(victim(new), 1).gather(1, flat.view(-1, 1))
    assert float((after > before).float().mean()) > 0.9


def test_invalid_options(digits, victim) -> None:
    api = PredictionAPI(victim)
    with pytest.raises(ValueError, match="num_classes|classes"):
        JBTopK(seed_set=digits["x_att"], k=10)(api, budget=100)
    assert api.queries() == 0
    with pytest.raises(ValueError, match="shape"):
        JBDA(seed_set=torch.rand(10, 1, 4, 4))(api, budget=100)
    with pytest.raises(ValueError):
        JBDA(seed_set=digits["x_att"], step=0.0)
    with pytest.raises(ValueError):
        JBDA(seed_set=digits["x_att"], score="prob")


def test_same_seed_same_transfer_set(digits, victim) -> None:
    a = _attack(JBSelf, digits, seed_size=10, rounds=2)(PredictionAPI(victim), budget=100, seed=3)
    b = _attack(JBSelf, digits, seed_size=10, rounds=2)(PredictionAPI(victim), budget=100, seed=3)
    assert torch.equal(a.transfer_x, b.transfer_x)
