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
    assert result.queries == api.queries() == d + 1  # no answer saturates here: no probe is spent
    assert result.info["saturated"] == result.info["probes"] == 0
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
    result = EquationSolving(space=data.space, method="exact", design="axis")(api, budget=200)
    assert result.queries == api.queries() == 65 and result.info["probes"] == 0
    coef, intercept = raw_linear_parameters(est)
    w, b = result.info["weights"].numpy(), result.info["bias"].numpy()
    np.testing.assert_allclose(w - w[0], coef - coef[0], rtol=0, atol=1e-6)  # what softmax identifies
    np.testing.assert_allclose(b - b[0], intercept - intercept[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(w, coef, rtol=0, atol=1e-6)  # centred, like scikit-learn's own layout
    np.testing.assert_allclose(b, intercept, rtol=0, atol=1e-6)


class CountingVictim(torch.nn.Module):
    """Counts the rows the oracle itself evaluates, whichever path a query takes to reach it."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, 0
        self.input_shape, self.num_classes = inner.input_shape, inner.num_classes

    def forward(self, x):
        self.rows += len(x)
        return self.inner(x)


def steep(est, factor):
    """The same decision function times ``factor``: a weakly regularised, saturating model."""
    lr = est[-1] if hasattr(est, "steps") else est
    lr.coef_, lr.intercept_ = lr.coef_ * factor, lr.intercept_ * factor
    return est


def assert_relative(actual, expected, rtol=1e-6):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert np.abs(actual - expected).max() <= rtol * np.abs(expected).max()


def steal_saturated(est, space, *, budget=2000, seed=0, design="random"):
    oracle = CountingVictim(SklearnVictim(est))
    api = PredictionAPI(oracle)
    result = EquationSolving(space=space, method="exact", design=design)(api, budget=budget, seed=seed)
    d = space.dim
    assert result.info["saturated"] > 0 and result.info["probes"] > 0  # the case this is about
    # every query spent is reported: the design's d + 1 plus every probe, as the oracle and the API saw them
    assert result.queries == api.queries() == oracle.rows == d + 1 + result.info["probes"]
    assert len(result.transfer_x) == len(result.transfer_y) == result.queries
    return result


@pytest.mark.parametrize("design", ["random", "axis"])
def test_saturating_binary_victim_is_recovered_exactly_by_moving_saturated_queries(design):
    """Trained on standardised features, queried over the raw ranges: some answers are exact zeros."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_tabular("breast-cancer")
    est = make_pipeline(StandardScaler(), LogisticRegression(C=1e4, max_iter=20_000))
    est.fit(data.x_train, data.y_train)
    c, h = data.space.box()
    x = c + (2 * torch.rand(31, 30, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 1) * h
    assert (PredictionAPI(SklearnVictim(est)).query(x) == 0).any()  # the old code's "strictly positive" error
    result = steal_saturated(est, data.space, design=design)
    coef, intercept = raw_linear_parameters(est)
    assert_relative(result.info["weights"], coef)
    assert_relative(result.info["bias"], intercept)


def test_saturating_softmax_victim_is_recovered_exactly():
    data = load_tabular("wine")
    est = steep(fit_victim("lr-scaled", data.x_train, data.y_train), 100.0)
    result = steal_saturated(est, data.space)
    coef, intercept = raw_linear_parameters(est)
    assert_relative(result.info["weights"], coef)
    assert_relative(result.info["bias"], intercept)


def test_an_interior_anchor_is_found_by_bisection_when_every_answer_saturates():
    """A steep boundary far from every random query and from the centre: only bisection reaches it."""
    from sklearn.linear_model import LogisticRegression

    from modelsteal.data.tabular import FeatureSpace

    space = FeatureSpace.continuous(np.zeros(3), np.full(3, 10.0))
    est = LogisticRegression().fit(np.array([[0.0, 0, 0], [10, 10, 10]]), [0, 1])
    est.coef_, est.intercept_ = np.array([[2e4, -7e3, 3e3]]), np.array([-6.2e4])  # boundary near x0 = 3.1
    api = PredictionAPI(SklearnVictim(est))
    p = api.query(space.sample(4, generator=torch.Generator().manual_seed(0)))
    assert bool((p.min(dim=1).values == 0).all())  # every design answer saturates (checked for this seed)
    result = steal_saturated(est, space)
    assert result.info["probes"] > 20  # the centre, then bisection steps, then the moved queries
    assert_relative(result.info["weights"], est.coef_)
    assert_relative(result.info["bias"], est.intercept_)


def test_moving_saturated_queries_needs_budget_and_unrounded_answers():
    data = load_tabular("breast-cancer")
    est = fit_victim("lr-scaled", data.x_train, data.y_train)
    rounded = PredictionAPI(SklearnVictim(est), output="rounded-3")
    with pytest.raises(ValueError, match="do not fit one logistic model"):  # probes found interior answers
        EquationSolving(space=data.space, method="exact")(rounded, budget=2000)
    label = PredictionAPI(SklearnVictim(est), output="label")
    with pytest.raises(ValueError, match="saturate on class"):
        EquationSolving(space=data.space, method="exact")(label, budget=2000)
    assert EquationSolving(space=data.space, method="exact").min_queries() == 31
    assert EquationSolving(space=data.space, method="optimize", num_queries=50).min_queries() == 50


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
