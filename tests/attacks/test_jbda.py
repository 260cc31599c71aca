"""JBDA, JB-self and JB-top-k: budget accounting, step geometry, batched Jacobians, clone quality."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelsteal import BudgetExceededError, PredictionAPI
from modelsteal.attacks import JBDA, JBSelf, JBTopK, TrainConfig, attack_class
from modelsteal.attacks.jbda import input_jacobian
from modelsteal.models import build_model
from modelsteal.training import accuracy, train

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


# -- options reproducing the authors' code (tribhuvanesh/prediction-poisoning, defenses/adversary/jacobian.py) --

MNIST_NORM = (0.1307, 0.3081)


class RecordingAPI(PredictionAPI):
    """A PredictionAPI that keeps every batch it was asked."""

    def __init__(self, model: nn.Module, **kw: object) -> None:
        super().__init__(model, **kw)
        self.asked: list[torch.Tensor] = []

    def query(self, x: torch.Tensor, *, client: str = "default") -> torch.Tensor:
        self.asked.append(x.detach().cpu().clone())
        return super().query(x, client=client)


def _distinct(x: torch.Tensor) -> int:
    return len(torch.unique(x.flatten(1), dim=0))


def _is_row_of(x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """For each row of ``x``: whether it equals (bitwise) some row of ``pool``."""
    return (x.flatten(1)[:, None, :] == pool.flatten(1)[None, :, :]).all(dim=2).any(dim=1)


def test_default_keeps_every_parent_and_matches_explicit_off_options(digits, victim) -> None:
    a = _attack(JBDA, digits, seed_size=10, rounds=3)(PredictionAPI(victim), budget=70, seed=2)
    b = _attack(JBDA, digits, seed_size=10, rounds=3, replace_parents=False, trim="random", normalize=None,
                period_rounding="floor", round_train=None)(PredictionAPI(victim), budget=70, seed=2)
    assert torch.equal(a.transfer_x, b.transfer_x) and torch.equal(a.transfer_y, b.transfer_y)
    # our algorithm: D_{ρ+1} = D_ρ ∪ children, the seeds kept in front; a child may repeat an earlier sibling
    # (a parent stepped along the same signs twice), but far more than 2·|D_0| images are distinct
    assert a.queries == 70 and _distinct(a.transfer_x) > 40
    assert bool(_is_row_of(a.transfer_x[:10], digits["x_att"]).all())
    assert torch.bincount(a.info["made_in_round"]).tolist() == [10, 10, 20, 30]
    last = a.info["made_in_round"] == 3  # the trimmed round drew a random subset of parents
    assert a.info["parents"][last].tolist() != list(range(30))


@pytest.mark.parametrize("cls", [JBDA, JBSelf])
def test_replace_parents_without_trimming(cls: type, digits, victim) -> None:
    api = PredictionAPI(victim)
    r = _attack(cls, digits, seed_size=10, rounds=3, replace_parents=True)(api, budget=10_000, seed=0)
    # the query count is the algorithm's, |D_0|·2^R, but the set is generation R only, each image 2^R times
    assert r.queries == api.queries() == 80 and len(r.transfer_x) == 80
    assert _distinct(r.transfer_x) == 10
    assert not bool(_is_row_of(r.transfer_x, digits["x_att"]).any())  # no seed survives
    assert torch.equal(r.transfer_x, r.transfer_x[:10].repeat(8, 1, 1, 1))
    assert bool((r.info["made_in_round"] == 3).all())


def test_replace_parents_trimmed_round_as_the_authors_code(digits, victim) -> None:
    api = RecordingAPI(victim)
    r = _attack(JBDA, digits, seed_size=10, replace_parents=True, trim="first")(api, budget=70, seed=0)
    # 10 seeds, rounds of 10, 20 and then the first 30 of the 40 rows; the set is cut to the budget
    assert r.queries == api.queries() == 70 and len(r.transfer_x) == 70
    x, rounds = r.transfer_x, r.info["made_in_round"]
    assert rounds.tolist() == [3] * 30 + [2] * 10 + [3] * 30
    # ~2·|D_0| distinct images: generation 3 (rows 0-29 and the 30 appended) and generation 2 (rows 30-39)
    assert _distinct(x) == 20 and _distinct(x[:30]) == 10 and _distinct(x[30:40]) == 10
    assert torch.equal(x[:30], x[40:]) and torch.equal(r.transfer_y[:30], r.transfer_y[40:])
    # the last round queried rows 0..29 of D_3 (three copies of each generation-3 image), no seed ever again
    asked = torch.cat(api.asked)
    assert len(asked) == 70 and torch.equal(asked[-30:], x[:30])
    assert not bool(_is_row_of(asked[10:], digits["x_att"]).any())


def test_query_mirror_queries_x_minus_delta_and_stores_x_plus_delta(digits, victim) -> None:
    api = RecordingAPI(victim)
    r = _attack(JBSelf, digits, seed_size=10, rounds=1, step_class="victim", query_mirror=True,
                score="cross_entropy", normalize=MNIST_NORM)(api, budget=100, seed=0)
    seeds, children = r.transfer_x[:10], r.transfer_x[10:]
    asked = torch.cat(api.asked)[10:]
    assert torch.allclose(asked, 2 * seeds - children, atol=1e-6)
    # the stored labels are the victim's answers at the mirror points, not at the stored points
    assert torch.allclose(r.transfer_y[10:], api.posteriors(asked).cpu(), atol=1e-6)
    assert not torch.allclose(r.transfer_y[10:], api.posteriors(children).cpu(), atol=1e-3)
    # stored points are clipped to normalised [0, 1] = raw [mean, mean + std]; the mirror points are not
    lo, hi = MNIST_NORM[0], MNIST_NORM[0] + MNIST_NORM[1]
    assert float(children.min()) >= lo - 1e-6 and float(children.max()) <= hi + 1e-6
    assert float(asked.min()) < lo - 0.1
    # step_class="victim": the class differentiated is the victim's label, as for JBDA
    assert torch.equal(r.info["step_classes"][10:], r.transfer_y[:10].argmax(1))


def test_store_parent_stores_the_seeds_with_the_childrens_labels(digits, victim) -> None:
    api = RecordingAPI(victim)
    r = _attack(JBTopK, digits, seed_size=10, k=3, store_parent=True, clip=None)(api, budget=160, seed=0)
    assert r.queries == api.queries() == 160
    x, parents = r.transfer_x, r.info["parents"]
    seeds = x[:10]
    assert bool(_is_row_of(seeds, digits["x_att"]).all())
    # every stored input is bitwise one of the 10 seeds: the children themselves are never trained on
    assert _distinct(x) == 10 and bool(_is_row_of(x, seeds).all())
    synthetic = parents >= 0
    assert torch.equal(x[synthetic], x[parents[synthetic]])
    # ... while the labels are the victim's answers at the children that were queried
    asked = torch.cat(api.asked)
    assert torch.equal(r.transfer_y[10:], api.posteriors(asked[10:]).cpu())
    assert not torch.equal(asked[10:], x[10:])
    # the fixed code (and our default) stores the children instead
    api = RecordingAPI(victim)
    fixed = _attack(JBTopK, digits, seed_size=10, k=3, clip=None)(api, budget=160, seed=0)
    assert torch.equal(torch.cat(api.asked), fixed.transfer_x)


def test_normalized_step_is_lambda_times_std_in_raw_space(digits, victim) -> None:
    x = digits["x_att"][:16]
    answers = PredictionAPI(victim).query(x)
    grad = _per_sample_grad(victim, x, answers.argmax(1), "logit")
    mean, std = MNIST_NORM
    free = JBDA(seed_set=x, normalize=MNIST_NORM, clip=None)
    new, _ = free.augment(victim, x, answers, rho=0)
    diff = new - x
    moving = grad != 0
    assert bool(moving.any())
    assert torch.allclose(diff[moving].abs(), torch.full_like(diff[moving], 0.1 * std), atol=1e-6)
    assert torch.equal(diff.sign(), grad.sign())
    # with the clip: the authors' clamp(x_n + λ·sign g, 0, 1) in normalised space, mapped back to raw
    clipped, _ = JBDA(seed_set=x, normalize=MNIST_NORM).augment(victim, x, answers, rho=0)
    want = (((x - mean) / std + 0.1 * grad.sign()).clamp(0, 1)) * std + mean
    assert torch.allclose(clipped, want, atol=1e-6)
    assert float(clipped.min()) >= mean - 1e-6 and float(clipped.max()) <= mean + std + 1e-6


def test_normalized_step_per_channel() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.rand(7, 3, 6, 6)
    answers = torch.softmax(torch.randn(7, 5), 1)
    std = (0.2, 0.5, 1.0)
    new, _ = JBDA(seed_set=x, normalize=((0.4, 0.5, 0.6), std), clip=None).augment(model, x, answers, rho=0)
    for c, s in enumerate(std):
        d = (new - x)[:, c].abs()
        assert torch.allclose(d[d > 0], torch.full_like(d[d > 0], 0.1 * s), atol=1e-6)


def test_cross_entropy_score_is_minus_log_prob() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    x, classes = torch.rand(6, 1, 4, 4), torch.randint(0, 5, (6,))
    assert torch.allclose(input_jacobian(model, x, classes, score="cross_entropy"),
                          -input_jacobian(model, x, classes, score="log_prob"))


def test_period_rounding_round_as_the_authors_code(digits) -> None:
    authors = JBDA(seed_set=digits["x_att"], tau=5, period_rounding="round")
    assert [authors.step_size(r) for r in range(13)] == [0.1] * 3 + [-0.1] * 5 + [0.1] * 5
    ours = JBDA(seed_set=digits["x_att"], tau=5)
    assert [ours.step_size(r) for r in range(11)] == [0.1] * 5 + [-0.1] * 5 + [0.1]
    top = JBTopK(seed_set=digits["x_att"], tau=5, period_rounding="round")
    assert top.step_size(2) == 0.1 and top.step_size(3) == -0.1
    assert JBTopK(seed_set=digits["x_att"]).step_size(3) == 0.1


def test_top_k_exclude_label(victim, digits) -> None:
    x = digits["x_att"][:20]
    answers = torch.softmax(torch.randn(20, 10), dim=1)
    logits = victim(x).detach()
    classes = JBTopK(seed_set=x, k=3, exclude="label").step_classes(victim, x, answers)
    for row, lab, got in zip(logits, answers.argmax(1), classes, strict=True):
        ranked = [int(c) for c in row.argsort(descending=True) if int(c) != int(lab)]
        assert got.tolist() == ranked[:3]


def test_top_k_iterations_pgd_and_the_negative_bound(victim, digits) -> None:
    x = digits["x_att"][:8]
    answers = PredictionAPI(victim).query(x)
    std = MNIST_NORM[1]
    top = JBTopK(seed_set=x, k=2, score="logit", iterations=8, iteration_step=0.01, tau=5,
                 period_rounding="round", normalize=MNIST_NORM, clip=None)
    new, flat = top.augment(victim, x, answers, rho=0)
    d = new - x.repeat_interleave(2, 0)
    # 8 signed steps of 0.01·std: |δ| ≤ 0.08·std, on the lattice of 0.02·std, and most pixels moved
    assert float(d.abs().max()) <= 0.08 * std + 1e-6
    assert torch.allclose(d / (0.01 * std), (d / (0.01 * std)).round(), atol=1e-3)
    assert float((d != 0).float().mean()) > 0.5
    # round 3 has λ_ρ = −0.1: the clamp's bounds cross and every pixel is shifted by −0.1·std
    neg, _ = top.augment(victim, x, answers, rho=3)
    assert torch.allclose(neg - x.repeat_interleave(2, 0), torch.full_like(neg, -0.1 * std), atol=1e-6)
    # the steps go up the target's logit
    before = victim(x.repeat_interleave(2, 0)).gather(1, flat.view(-1, 1))
    after = victim(new).gather(1, flat.view(-1, 1))
    assert float((after > before).float().mean()) > 0.9


def test_trim_first_spends_every_query_with_a_partial_last_group(digits, victim) -> None:
    api = PredictionAPI(victim)
    r = _attack(JBTopK, digits, seed_size=10, k=3, trim="first")(api, budget=77, seed=0)
    # 10 seeds + 30, then ⌈37 / 3⌉ = 13 first parents for 37 queries: the 13th gets one child
    assert r.queries == api.queries() == 77 and len(r.transfer_x) == 77
    last = r.info["made_in_round"] == 2
    assert r.info["parents"][last].tolist() == [p for p in range(12) for _ in range(3)] + [12]
    # the default keeps whole groups and leaves one query unspent
    assert _attack(JBTopK, digits, seed_size=10, k=3)(PredictionAPI(victim), budget=77, seed=0).queries == 76


def test_round_train_is_used_between_rounds_and_train_at_the_end(digits, victim, monkeypatch) -> None:
    import modelsteal.attacks.jbda as jbda_module

    seen: list[TrainConfig] = []
    real = jbda_module.training.train

    def spy(*args: object, config: TrainConfig, **kw: object) -> object:
        seen.append(config)
        return real(*args, config=config, **kw)

    monkeypatch.setattr(jbda_module.training, "train", spy)
    final = TrainConfig(epochs=2, lr=0.01, momentum=0.9)
    attack = JBDA(seed_set=digits["x_att"], seed_size=10, clone="mlp", train=final,
                  round_train={"epochs": 1, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4})
    attack(PredictionAPI(victim), budget=80, seed=0)
    assert seen == [TrainConfig(epochs=1, lr=0.1, momentum=0.9, weight_decay=5e-4)] * 3 + [final]


@pytest.mark.parametrize("victim_name", ["mnist", "fashion-mnist"])
def test_authors_configs_build(victim_name: str, digits) -> None:
    """The authors'-code configs name options the attacks accept, with the values they validate."""
    from pathlib import Path

    from modelsteal.experiment import load_config
    from modelsteal.experiment.points import build_attack

    root = Path(__file__).parents[2] / "configs" / "prediction-poisoning"
    for scale in ("cpu", "full"):
        cfg = load_config(root / f"pp-table1-authors-{victim_name}.yaml", scale=scale)
        ours = load_config(root / f"pp-table1-{victim_name}.yaml", scale=scale)
        assert cfg.victim == ours.victim and cfg.transfer == ours.transfer
        labels = [a.display for a in cfg.attacks]
        assert labels == ["jbda-authors", "jb-self-authors", "jb-top3-authors", "jb-top3-authors-fixed"]
        for a in cfg.attacks:
            attack = build_attack(a, victim_arch="lenet", transfer=(digits["x_att"], None), seeds=digits["x_att"],
                                  device=torch.device("cpu"))
            assert attack.trim == "first" and attack.normalize is not None and attack.round_train is not None
        jbda, jbself, top, fixed = (build_attack(a, victim_arch="lenet", transfer=(digits["x_att"], None),
                                                 seeds=digits["x_att"], device=torch.device("cpu"))
                                    for a in cfg.attacks)
        assert jbda.replace_parents and jbself.replace_parents and jbself.query_mirror
        assert top.store_parent and not fixed.store_parent and top.clip is None


def test_invalid_authors_options(digits) -> None:
    x = digits["x_att"]
    for bad in ({"trim": "last"}, {"normalize": (0.1,)}, {"normalize": (0.1, 0.0)}, {"period_rounding": "ceil"}):
        with pytest.raises(ValueError):
            JBDA(seed_set=x, **bad)
    with pytest.raises(ValueError):
        JBSelf(seed_set=x, step_class="label")
    for bad in ({"exclude": "victim"}, {"iterations": 0}, {"iterations": 3}, {"iteration_step": -0.1}):
        with pytest.raises(ValueError):
            JBTopK(seed_set=x, **bad)
    with pytest.raises(TypeError):
        JBTopK(seed_set=x, replace_parents=True)  # the authors' top-k does not overwrite its parents
