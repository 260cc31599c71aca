"""Label-only extraction (Tramèr et al., Sec. 5): Lowd-Meek, retraining strategies; rounding (Sec. 7)."""

import math

import numpy as np
import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import TrainConfig, attack_class
from modelsteal.attacks.tramer import (
    LowdMeek,
    Retraining,
    SklearnVictim,
    bisect_segments,
    fit_victim,
    raw_linear_parameters,
    rounding_study,
)
from modelsteal.data.tabular import load_tabular


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Tiny tabular models: one BLAS thread is much faster on the shared machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


@pytest.mark.parametrize("name,kind", [("breast-cancer", "lr-scaled"), ("breast-cancer", "lr"), ("moons", "lr"),
                                       ("digits-binary", "lr-scaled")])
def test_lowd_meek_recovers_the_hyperplane_from_labels(name, kind):
    data = load_tabular(name)
    est = fit_victim(kind, data.x_train, data.y_train)
    api = PredictionAPI(SklearnVictim(est), output="label")
    attack = LowdMeek(space=data.space, epsilon=1e-10)
    result = attack(api, budget=100_000, seed=0)
    d = data.num_features
    assert attack.steps == 34 and result.info["initial_queries"] >= d + 3
    assert result.queries == api.queries() == result.info["initial_queries"] + (d + 1) * attack.steps
    coef, intercept = raw_linear_parameters(est)
    norm = np.linalg.norm(coef)
    w, b = result.info["weights"].numpy(), result.info["bias"].numpy()
    assert w.shape == (1, d) and b.shape == (1,)
    assert float(np.linalg.norm(w)) == pytest.approx(1.0)
    np.testing.assert_allclose(w, coef / norm, rtol=0, atol=1e-6)  # direction and sign, scale fixed to 1
    np.testing.assert_allclose(b, intercept / norm, rtol=0, atol=1e-5)
    x = torch.from_numpy(data.x_test)
    assert torch.equal(result.clone(x).argmax(1), torch.from_numpy(est.predict(data.x_test)))


def test_lowd_meek_rejects_multiclass_victims():
    data = load_tabular("iris")
    api = PredictionAPI(SklearnVictim(fit_victim("lr", data.x_train, data.y_train)), output="label")
    with pytest.raises(ValueError, match="binary linear models; this victim has 3 classes"):
        LowdMeek(space=data.space)(api, budget=1000)
    assert attack_class("lowd-meek") is LowdMeek


def test_bisect_segments_keeps_a_label_change_inside_each_bracket():
    def labels_of(x):
        return (x[:, 0] + x[:, 1] > 0.3).long()

    a = torch.tensor([[-1.0, -1.0], [0.0, -2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    la = labels_of(a)
    lo, hi, xs, ys = bisect_segments(labels_of, a, b, la, steps=20)
    assert torch.equal(labels_of(lo), la) and torch.all(labels_of(hi) != la)
    assert torch.allclose((hi - lo).norm(dim=1), (b - a).norm(dim=1) / 2**20)
    assert torch.allclose(lo.sum(1), torch.full((2,), 0.3, dtype=torch.float64), atol=1e-5)
    assert xs.shape == (40, 2) and torch.equal(ys, labels_of(xs))


FAST = TrainConfig(epochs=60, batch_size=32, lr=0.05, optimizer="adam")


@pytest.fixture(scope="module")
def moons_lr():
    data = load_tabular("moons")
    return data, fit_victim("lr", data.x_train, data.y_train)


@pytest.mark.parametrize("strategy", ["uniform", "line-search", "adaptive"])
def test_retraining_spends_exactly_its_budget_and_learns_the_boundary(strategy, moons_lr):
    data, est = moons_lr
    api = PredictionAPI(SklearnVictim(est), output="label")
    result = Retraining(space=data.space, strategy=strategy, rounds=4, train=FAST)(api, budget=90, seed=0)
    assert result.queries == api.queries() == 90 == len(result.transfer_y)
    x = torch.from_numpy(data.x_test)
    agreement = float((result.clone(x).argmax(1) == torch.from_numpy(est.predict(data.x_test))).double().mean())
    assert agreement > 0.97


def test_adaptive_rounds_query_near_the_boundary(moons_lr):
    data, est = moons_lr
    coef, intercept = raw_linear_parameters(est)

    def distance(x):
        return np.abs(x.numpy() @ coef.T + intercept).ravel() / np.linalg.norm(coef)

    runs = {}
    for strategy in ("uniform", "adaptive"):
        api = PredictionAPI(SklearnVictim(est), output="label")
        runs[strategy] = Retraining(space=data.space, strategy=strategy, rounds=3, train=FAST)(api, budget=60)
    later = runs["adaptive"].transfer_x[20:]  # the rounds after the first, uniform one
    assert np.median(distance(later)) < 0.5 * np.median(distance(runs["uniform"].transfer_x))


def test_line_search_queries_crowd_the_boundary(moons_lr):
    data, est = moons_lr
    coef, intercept = raw_linear_parameters(est)
    api = PredictionAPI(SklearnVictim(est), output="label")
    result = Retraining(space=data.space, strategy="line-search", line_search_steps=8, train=FAST)(api, budget=80)
    dist = np.abs(result.transfer_x.numpy() @ coef.T + intercept).ravel() / np.linalg.norm(coef)
    assert (dist < 0.05).sum() >= 20  # the last bisection steps of each segment end near the boundary


def test_retraining_validates_options():
    space = load_tabular("iris").space
    with pytest.raises(ValueError, match="unknown strategy"):
        Retraining(space=space, strategy="random")
    with pytest.raises(ValueError, match="unknown clone model"):
        Retraining(space=space, model="tree")
    assert attack_class("retraining") is Retraining


def test_rounding_study_error_grows_as_fewer_decimals_are_reported():
    data = load_tabular("iris")
    victim = SklearnVictim(fit_victim("lr-scaled", data.x_train, data.y_train))
    records = rounding_study(victim, data, decimals=(1, 3, 5), rounds=3, n_unif=2000)
    by = {r["output"]: r for r in records}
    assert [r["output"] for r in records] == ["probs", "rounded-1", "rounded-3", "rounded-5", "label"]
    assert all(r["queries"] == 15 for r in records)  # the unknowns of a 3-class softmax model on 4 features
    assert by["probs"]["r_test"] < 1e-6
    assert by["probs"]["r_test"] < by["rounded-5"]["r_test"] < by["rounded-3"]["r_test"] < by["rounded-1"]["r_test"]
    assert by["rounded-5"]["r_test"] < 1e-4 and by["rounded-1"]["r_test"] > 1e-3
    assert by["label"]["r_test"] is None and by["label"]["r_unif_labels"] > by["rounded-3"]["r_unif_labels"]
    assert all(math.isfinite(r["r_unif_labels"]) for r in records)
