"""One property test over every registered defense, plus a specific test per baseline defense."""

import inspect
import math
from dataclasses import replace

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.defenses import available_defenses, defense_class, make_defense
from modelsteal.defenses.noise import project_l1_ball, project_l2_ball
from modelsteal.defenses.reverse_sigmoid import ReverseSigmoid
from modelsteal.defenses.truncation import LabelOnly, Rounding, TopK


def _strength(cls: type) -> float | None:
    """The class's own example strength (no table kept here): required of every defense with a strength."""
    if cls.strength_param is None:
        return None
    assert cls.example_strength is not None, f"{cls.__name__} declares no example_strength"
    return cls.example_strength


def fit_if_needed(defense, victim, data):
    """A defense that ``needs_fit`` (AM's misinformation model) fitted on a tiny slice of the victim's data."""
    if defense is not None and defense.needs_fit:
        defense.fit(victim, replace(data, x_train=data.x_train[:256], y_train=data.y_train[:256]))
    return defense


def _cases() -> list[tuple[str, str | None]]:
    """Every registered defense; those promising a distance budget also under each norm they accept."""
    cases: list[tuple[str, str | None]] = []
    for name in available_defenses():
        cls = defense_class(name)
        accepts_norm = "norm" in inspect.signature(cls.__init__).parameters
        probe = make_defense(name, strength=_strength(cls))
        norms = ("l1", "l2") if accepts_norm and probe.budget_norm is not None else (None,)
        cases += [(name, n) for n in norms]
    return cases


@pytest.mark.parametrize(("name", "norm"), _cases())
def test_every_defense_keeps_the_contract(name, norm, digits_victim, digits):
    cls = defense_class(name)
    strength = _strength(cls)
    defense = make_defense(name, strength=strength, **({} if norm is None else {"norm": norm}))
    fit_if_needed(defense, digits_victim, digits)
    api = PredictionAPI(digits_victim, defense=defense)
    x = digits.x_test[:64]
    clean = api.posteriors(x)
    out = api.query(x)
    assert out.shape == clean.shape
    assert (out >= -1e-6).all() and torch.allclose(out.sum(1), torch.ones(len(x)), atol=1e-5)
    if cls.preserves_argmax:
        assert torch.equal(out.argmax(1), clean.argmax(1)), f"{name} promised to keep the top-1 label"
    budget_norm = defense.budget_norm
    if budget_norm is not None:
        assert norm is None or budget_norm == norm
        d = (out - clean).abs().sum(1) if budget_norm == "l1" else (out - clean).norm(dim=1)
        assert (d <= strength + 1e-5).all(), f"{name} exceeded its {budget_norm} budget {strength}: {d.max()}"
        # the step meets the budget exactly where the target lies farther away than epsilon
        assert float(d.max()) >= strength - 1e-5, f"{name} left its {budget_norm} budget unused: {d.max()}"
    assert not torch.allclose(out, clean) or name == "identity", f"{name} changed nothing"


def test_unknown_defense_lists_known():
    with pytest.raises(ValueError, match="known defenses: .*reverse-sigmoid"):
        make_defense("nope")
    with pytest.raises(ValueError, match="unknown option banana for defense 'reverse-sigmoid'; valid: beta, gamma"):
        make_defense("reverse-sigmoid", strength=0.5, banana=1)


def test_reverse_sigmoid_matches_formula_and_is_safe(probs_batch):
    beta, gamma = 0.7, 0.4
    d = ReverseSigmoid(beta=beta, gamma=gamma)
    out = d(torch.zeros(len(probs_batch), 1), probs_batch.double())
    p = probs_batch.double()[2:].clamp(1e-12, 1 - 1e-12)  # interior rows: direct formula
    inv = torch.log(p / (1 - p))
    raw = p - beta * (torch.sigmoid(gamma * inv) - 0.5)
    ref = raw / raw.sum(1, keepdim=True)
    assert torch.allclose(out[2:], ref, atol=1e-9)
    assert torch.isfinite(out).all()
    # at an exact one-hot row: r(1) = beta/2, r(0) = -beta/2 -> (1 - b/2, b/2, ...) normalised
    row = out[0]
    expect_top = (1 - beta / 2) / (1 - beta / 2 + 9 * beta / 2)
    assert math.isclose(float(row[3]), expect_top, rel_tol=1e-9)
    assert torch.allclose(ReverseSigmoid(beta=0.0, gamma=gamma)(torch.zeros(32, 1), probs_batch), probs_batch)


def test_l1_projection_is_the_euclidean_projection():
    g = torch.Generator().manual_seed(1)
    v = 4 * torch.randn(20, 7, generator=g, dtype=torch.float64)
    w = project_l1_ball(v, 2.5)
    assert torch.allclose(w.abs().sum(1), torch.full((20,), 2.5, dtype=torch.float64))
    # optimality: w = soft-threshold(v, theta) for a single theta per row (KKT of the projection)
    for vi, wi in zip(v, w, strict=True):
        nz = wi != 0
        theta = (vi.abs() - wi.abs())[nz]
        assert torch.allclose(theta, theta[0].expand_as(theta), atol=1e-9)
        assert (vi.abs()[~nz] <= theta[0] + 1e-9).all()
    inside = torch.tensor([[0.5, -0.5, 0.2]], dtype=torch.float64)
    assert torch.equal(project_l1_ball(inside, 2.0), inside)
    assert torch.allclose(project_l2_ball(v, 1.0).norm(dim=1), torch.ones(20, dtype=torch.float64))


def test_random_noise_is_projected_logit_noise(probs_batch):
    p = probs_batch.double()
    for norm in ("l1", "l2"):
        drawn = make_defense("random-noise", strength=3.0, seed=5, norm=norm).noise(p)
        size = drawn.abs().sum(1) if norm == "l1" else drawn.norm(dim=1)
        assert (size <= 3.0 + 1e-9).all() and size.max() > 2.9
        out = make_defense("random-noise", strength=3.0, seed=5, norm=norm)(torch.zeros(len(p), 1), p)
        z = torch.log(p.clamp(1e-7, 1 - 1e-7)) - torch.log1p(-p.clamp(1e-7, 1 - 1e-7))
        ref = torch.sigmoid(z + drawn)
        assert torch.allclose(out, ref / ref.sum(1, keepdim=True), atol=1e-12)


def test_truncations(probs_batch):
    x = torch.zeros(len(probs_batch), 1)
    t = TopK(k=3)(x, probs_batch)
    assert ((t > 0).sum(1) <= 3).all()
    top = probs_batch[5].topk(3)
    assert torch.allclose(t[5][top.indices], top.values / top.values.sum())
    r = Rounding(decimals=1)(x, probs_batch)
    assert torch.allclose(r.sum(1), torch.ones(len(x)), atol=1e-6)
    lab = LabelOnly()(x, probs_batch)
    assert torch.equal(lab.argmax(1), probs_batch.argmax(1)) and torch.equal(lab.max(1).values, torch.ones(len(x)))


def test_top_k_refuses_more_classes_than_the_model_has(digits_victim):
    assert PredictionAPI(digits_victim, defense=TopK(k=10)).query(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(ValueError, match=r"^top-k defense keeps k=11 classes, more than the model has \(10\); "
                                         r"use k from 1 to 10$"):
        PredictionAPI(digits_victim, defense=TopK(k=11))
