"""Equation solving (Tramèr et al., Sec. 4.1): exact recovery of logistic models, loss minimisation."""

import numpy as np
import pytest
import torch

from modelsteal import BudgetExceededError, PredictionAPI
from modelsteal.attacks import TrainConfig, attack_class
from modelsteal.attacks.tramer import (
    EquationSolving,
    SklearnVictim,
    TabularLinear,
    fit_victim,
    raw_linear_parameters,
)
from modelsteal.attacks.tramer.equation_solving import logistic_unknowns, mlp_unknowns
from modelsteal.data.tabular import available_tabular, load_tabular
from modelsteal.metrics.extraction import r_test, r_unif
from modelsteal.training import train


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Tiny tabular models: one BLAS thread is much faster on the shared machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


BINARY_SETS = [n for n in available_tabular()
               if not n.endswith(("-cat", "-onehot")) and load_tabular(n).num_classes == 2]


def probs_of(model):
    def f(x):
        with torch.no_grad():
            return torch.softmax(model(x), dim=1)

    return f


def test_every_bundled_binary_set_is_listed():
    assert {"breast-cancer", "circles", "moons", "iris-binary", "digits-binary", "wine-binary", "blobs-binary",
            "five-class-binary"} <= set(BINARY_SETS)


@pytest.mark.parametrize("name", BINARY_SETS)
@pytest.mark.parametrize("kind", ["lr", "lr-scaled"])
def test_binary_logistic_regression_is_recovered_exactly_from_d_plus_1_queries(name, kind):
    data = load_tabular(name)
    est = fit_victim(kind, data.x_train, data.y_train)
    api = PredictionAPI(SklearnVictim(est))
    d = data.num_features
    result = EquationSolving(space=data.space, method="exact")(api, budget=10 * d, seed=1)
    assert result.queries == api.queries() == d + 1
    coef, intercept = raw_linear_parameters(est)  # a pipeline's scaler folded in: the raw-input weights
    if kind == "lr":
        coef, intercept = est.coef_, est.intercept_  # a bare model: its own layout
    assert result.info["weights"].shape == coef.shape and result.info["bias"].shape == intercept.shape
    np.testing.assert_allclose(result.info["weights"].numpy(), coef, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.info["bias"].numpy(), intercept, rtol=0, atol=1e-6)


def test_exact_solving_needs_d_plus_1_queries_and_unrounded_answers():
    data = load_tabular("breast-cancer")
    est = fit_victim("lr-scaled", data.x_train, data.y_train)
    with pytest.raises(BudgetExceededError):
        EquationSolving(space=data.space, method="exact")(PredictionAPI(SklearnVictim(est)), budget=30)
    rounded = PredictionAPI(SklearnVictim(est), output="rounded-2")
    with pytest.raises(ValueError, match="strictly positive probabilities"):
        EquationSolving(space=data.space, method="exact")(rounded, budget=31)
    with pytest.raises(ValueError, match="needs a logistic model"):
        EquationSolving(space=data.space, model="mlp", method="exact")


@pytest.fixture(scope="module")
def digits_softmax():
    data = load_tabular("digits")
    return data, fit_victim("lr-scaled", data.x_train, data.y_train)


def test_softmax_logit_differences_are_recovered_exactly_from_d_plus_1_queries(digits_softmax):
    data, est = digits_softmax
    api = PredictionAPI(SklearnVictim(est))
    result = EquationSolving(space=data.space, method="exact", design="axis")(api, budget=65)
    assert result.queries == api.queries() == 65
    coef, intercept = raw_linear_parameters(est)
    w, b = result.info["weights"].numpy(), result.info["bias"].numpy()
    np.testing.assert_allclose(w - w[0], coef - coef[0], rtol=0, atol=1e-6)  # what softmax identifies
    np.testing.assert_allclose(b - b[0], intercept - intercept[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(w, coef, rtol=0, atol=1e-6)  # centred, like scikit-learn's own layout
    np.testing.assert_allclose(b, intercept, rtol=0, atol=1e-6)


def test_softmax_on_digits_by_loss_minimisation_with_fewer_queries_than_unknowns(digits_softmax):
    data, est = digits_softmax
    victim = SklearnVictim(est)
    api = PredictionAPI(victim)
    attack = EquationSolving(space=data.space, method="optimize", max_iter=100)
    unknowns = attack.unknowns(10)
    assert unknowns == logistic_unknowns(64, 10) == 650
    result = attack(api, budget=unknowns // 2)
    assert result.queries == api.queries() == 325 and result.info["unknowns"] == 650
    x = torch.from_numpy(data.x_test)
    truth, clone = probs_of(victim), probs_of(result.clone)
    assert 1 - r_test(truth, clone, x) >= 0.999  # total variation
    assert 1 - r_test(truth, clone, x, labels=True) >= 0.999
    assert 1 - r_unif(truth, clone, sampler=data.space.sample, n=2000) >= 0.999
    assert result.info["time_s"] > 0


def test_one_vs_rest_regression_by_loss_minimisation():
    data = load_tabular("iris")
    est = fit_victim("ovr-scaled", data.x_train, data.y_train)
    victim = SklearnVictim(est)
    api = PredictionAPI(victim)
    attack = EquationSolving(space=data.space, model="ovr")
    assert attack.method == "optimize"
    result = attack(api, budget=attack.unknowns(3))
    assert result.queries == 15
    coef, intercept = raw_linear_parameters(est)
    np.testing.assert_allclose(result.info["weights"].numpy(), coef, rtol=0, atol=1e-4)
    np.testing.assert_allclose(result.info["bias"].numpy(), intercept, rtol=0, atol=1e-4)
    assert 1 - r_test(probs_of(victim), probs_of(result.clone), torch.from_numpy(data.x_test)) > 0.9999


def test_mlp_by_loss_minimisation():
    data = load_tabular("iris")
    est = fit_victim("mlp", data.x_train, data.y_train, hidden=4)
    victim = SklearnVictim(est)
    attack = EquationSolving(space=data.space, model="mlp", hidden=(4,), activation="tanh", max_iter=1500)
    assert attack.unknowns(3) == mlp_unknowns(4, 3, (4,)) == 4 * 4 + 4 + 4 * 3 + 3
    api = PredictionAPI(victim)
    result = attack(api, budget=5 * attack.unknowns(3), seed=0)
    assert result.queries == 175
    x = torch.from_numpy(data.x_test)
    assert 1 - r_test(probs_of(victim), probs_of(result.clone), x) > 0.99
    assert 1 - r_test(probs_of(victim), probs_of(result.clone), x, labels=True) > 0.97


def test_pytorch_victims_are_extracted_exactly_too():
    data = load_tabular("wine")
    center, half = data.space.box()
    victim = TabularLinear(13, 3, mode="softmax", center=center, scale=half)
    train(victim, torch.from_numpy(data.x_train), torch.from_numpy(data.y_train),
                     config=TrainConfig(epochs=20, lr=0.05, optimizer="adam"))
    api = PredictionAPI(victim)
    result = EquationSolving(space=data.space)(api, budget=14)
    w, b = victim.raw_parameters()
    w, b = w - w.mean(0), b - b.mean()  # softmax identifies the centred parameters
    assert result.queries == 14
    torch.testing.assert_close(result.info["weights"], w, rtol=0, atol=1e-6)
    torch.testing.assert_close(result.info["bias"], b, rtol=0, atol=1e-6)


def test_registered_and_validated():
    assert attack_class("equation-solving") is EquationSolving
    space = load_tabular("iris").space
    with pytest.raises(ValueError, match="unknown model"):
        EquationSolving(space=space, model="svm")
    with pytest.raises(ValueError, match="unknown method"):
        EquationSolving(space=space, method="guess")
