"""Tabular victims: scikit-learn estimators behind PredictionAPI, PyTorch equivalents, the tree oracle."""

import numpy as np
import pytest
import torch

from modelsteal import BudgetExceededError, PredictionAPI, QueryBudget
from modelsteal.data.tabular import load_tabular
from modelsteal.tabular import (
    SklearnVictim,
    TabularTree,
    TreeOracle,
    fit_victim,
    raw_linear_parameters,
    torch_equivalent,
    victim_kind,
)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Tiny tabular models: one BLAS thread is much faster on the shared machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


KINDS = {"lr": "softmax-lr", "lr-scaled": "softmax-lr", "ovr": "ovr-lr", "mlp": "mlp", "tree": "tree"}


@pytest.fixture(scope="module")
def wine():
    return load_tabular("wine")


@pytest.mark.parametrize("kind", list(KINDS))
def test_victims_answer_predict_proba_and_torch_equivalents_match(kind, wine):
    est = fit_victim(kind, wine.x_train, wine.y_train)
    assert victim_kind(est) == KINDS[kind]
    x = torch.from_numpy(wine.x_test)
    api = PredictionAPI(SklearnVictim(est))
    assert api.input_shape == (13,) and api.num_classes == 3
    probs = api.query(x)
    np.testing.assert_allclose(probs.numpy(), est.predict_proba(wine.x_test), rtol=0, atol=1e-12)
    assert api.queries() == len(x)
    twin = torch_equivalent(est)
    np.testing.assert_allclose(torch.softmax(twin(x), 1).detach().numpy(), est.predict_proba(wine.x_test),
                               rtol=0, atol=1e-12)


def test_binary_logits_keep_the_small_probability_precise():
    data = load_tabular("breast-cancer")
    est = fit_victim("lr", data.x_train, data.y_train)
    x = torch.from_numpy(data.x_test)
    z = est.decision_function(data.x_test)
    p = PredictionAPI(SklearnVictim(est)).query(x)
    # log(p1/p0) recovers the decision function even where p0 is far below float64's epsilon of 1
    np.testing.assert_allclose((p[:, 1].log() - p[:, 0].log()).numpy(), z, rtol=1e-12, atol=1e-9)
    assert float(p.min()) < 1e-17


def test_raw_linear_parameters_fold_the_scaler_in():
    data = load_tabular("iris")
    est = fit_victim("lr-scaled", data.x_train, data.y_train)
    w, b = raw_linear_parameters(est)
    np.testing.assert_allclose(data.x_test @ w.T + b, est.decision_function(data.x_test), atol=1e-10)
    with pytest.raises(ValueError, match="DecisionTreeClassifier is not a linear model"):
        raw_linear_parameters(fit_victim("tree", data.x_train, data.y_train))


def test_unsupported_victims_are_named():
    from sklearn.svm import LinearSVC

    data = load_tabular("iris")
    with pytest.raises(ValueError, match="LinearSVC"):
        SklearnVictim(LinearSVC().fit(data.x_train, data.y_train))
    with pytest.raises(ValueError, match="str is not a fitted"):
        victim_kind("not a model")
    with pytest.raises(ValueError, match="needs a bare DecisionTreeClassifier, not a LogisticRegression"):
        TreeOracle(fit_victim("lr", data.x_train, data.y_train))


def test_tabular_tree_walks_like_scikit_learn():
    data = load_tabular("digits")
    est = fit_victim("tree", data.x_train, data.y_train)
    tree = TabularTree.from_sklearn(est)
    for x in (data.x_test, data.x_test[:3]):  # the batched walk and the few-rows walk
        np.testing.assert_array_equal(tree.apply(torch.from_numpy(x)).numpy(), est.apply(x))
    assert tree.n_leaves == est.get_n_leaves() and tree.depth == est.get_depth()


def test_tree_oracle_answers_ids_and_stops_at_missing_features():
    data = load_tabular("iris")
    est = fit_victim("tree", data.x_train, data.y_train)
    oracle = TreeOracle(est)
    x = torch.from_numpy(data.x_test)
    out = oracle.query(x)
    assert out.shape == (len(x), 3)
    np.testing.assert_array_equal(out[:, 0].numpy(), est.apply(data.x_test))
    np.testing.assert_array_equal(out[:, 1].numpy(), est.predict(data.x_test))
    np.testing.assert_allclose(out[:, 2].numpy(), est.predict_proba(data.x_test).max(1))
    root = oracle.query(torch.full((1, 4), float("nan")))
    assert float(root[0, 0]) == 0.0  # nothing known: the walk stops at the root
    f = est.tree_.feature[0]
    partial = torch.full((1, 4), float("nan"))
    partial[0, f] = float(data.x_test[0, f])
    child = int(oracle.query(partial)[0, 0])
    assert child in (est.tree_.children_left[0], est.tree_.children_right[0]) or est.tree_.feature[child] != f
    assert oracle.queries() == len(x) + 2
    with pytest.raises(ValueError, match="incomplete queries are not accepted"):
        TreeOracle(est, incomplete=False).query(torch.full((1, 4), float("nan")))
    with pytest.raises(BudgetExceededError):
        QueryBudget(oracle, budget=1).query(x[:2])


def test_output_identities_collide_for_leaves_with_the_same_answer():
    data = load_tabular("iris")
    est = fit_victim("tree", data.x_train, data.y_train)
    by_output = TreeOracle(est, identity="output")
    assert by_output.unique_leaf_ids == 3 < by_output.n_leaves  # pure leaves: one identifier per class
    assert TreeOracle(est).unique_leaf_ids == by_output.n_leaves
