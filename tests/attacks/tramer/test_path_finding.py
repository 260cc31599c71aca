"""Decision-tree path finding (Tramèr et al., Sec. 4.2, Algorithm 1 and its top-down variant)."""

import math

import numpy as np
import pytest
import torch
from sklearn.tree import DecisionTreeClassifier

from modelsteal.attacks import attack_class
from modelsteal.attacks.tramer import ExtractedTree, PathFinding, TreeOracle, fit_victim
from modelsteal.attacks.tramer.path_finding import Interval, _shortest_decimal
from modelsteal.data.tabular import FeatureSpace, load_tabular


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Tiny tabular models: one BLAS thread is much faster on the shared machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def extract(name, *, incomplete, tree=None, epsilon=1e-3, **oracle_options):
    data = load_tabular(name)
    tree = tree if tree is not None else fit_victim("tree", data.x_train, data.y_train)
    oracle = TreeOracle(tree, incomplete=incomplete, **oracle_options)
    result = PathFinding(space=data.space, epsilon=epsilon, incomplete=incomplete)(oracle, budget=200_000, seed=3)
    return data, tree, oracle, result


@pytest.mark.parametrize("incomplete", [False, True], ids=["algorithm1", "top-down"])
@pytest.mark.parametrize("name", ["iris", "wine", "breast-cancer", "iris-cat", "iris-onehot", "wine-cat"])
def test_every_leaf_is_found_and_the_test_set_agrees_fully(name, incomplete):
    data, tree, oracle, result = extract(name, incomplete=incomplete)
    clone = result.clone
    assert isinstance(clone, ExtractedTree)
    assert result.info["complete"] and result.info["leaves"] == tree.get_n_leaves() == len(clone.leaves)
    assert result.queries == oracle.queries() > 0
    x = torch.from_numpy(data.x_test)
    assert torch.equal(clone.predict(x), torch.from_numpy(tree.predict(data.x_test)))  # R_test = 0
    assert torch.equal(clone.leaf_ids(x).long(), torch.from_numpy(tree.apply(data.x_test)))  # the very leaves
    assert torch.equal(clone(x).argmax(1), clone.predict(x))


@pytest.mark.parametrize("incomplete", [False, True], ids=["algorithm1", "top-down"])
def test_digits_tree_and_uniform_agreement(incomplete):
    data = load_tabular("digits")
    tree = DecisionTreeClassifier(max_depth=6, random_state=0).fit(data.x_train, data.y_train)
    _, _, oracle, result = extract("digits", incomplete=incomplete, tree=tree)
    assert result.info["leaves"] == tree.get_n_leaves()
    x = torch.from_numpy(data.x_test)
    assert torch.equal(result.clone.predict(x), oracle.predict(x))
    u = data.space.sample(3000, generator=torch.Generator().manual_seed(0))
    assert float((result.clone.predict(u) == oracle.predict(u)).double().mean()) > 0.999


def test_continuous_generated_set_at_a_fine_granularity():
    data, tree, oracle, result = extract("blobs", incomplete=True, epsilon=1e-6)
    x = torch.from_numpy(data.x_test)
    assert result.info["leaves"] == tree.get_n_leaves()
    assert torch.equal(result.clone.predict(x), oracle.predict(x))


def test_incomplete_queries_take_fewer_queries():
    *_, full = extract("breast-cancer", incomplete=False)
    *_, top_down = extract("breast-cancer", incomplete=True)
    assert top_down.queries < 0.75 * full.queries  # the paper's Table 6: incomplete queries are cheaper


def test_a_small_budget_stops_with_the_leaves_found_so_far():
    data = load_tabular("wine")
    oracle = TreeOracle(fit_victim("tree", data.x_train, data.y_train))
    result = PathFinding(space=data.space)(oracle, budget=40)
    assert not result.info["complete"] and 1 <= result.info["leaves"] < oracle.n_leaves
    assert result.queries == oracle.queries() <= 40


def test_duplicate_identifiers_hide_leaves():
    data, tree, oracle, result = extract("iris", incomplete=False, identity="output")
    assert oracle.unique_leaf_ids == 3 < oracle.n_leaves  # pure leaves answer (label, 1.0): one id per class
    assert result.info["leaves"] <= oracle.unique_leaf_ids < tree.get_n_leaves()  # the paper's caveat
    x = torch.from_numpy(data.x_test)
    assert not torch.equal(result.clone.predict(x), oracle.predict(x))


def test_shortest_decimal_and_options():
    assert _shortest_decimal(5.998, 6.0005) == 6.0
    assert _shortest_decimal(2.4468, 2.4521) == 2.45
    assert _shortest_decimal(1.0, 1.0) is None
    assert attack_class("path-finding") is PathFinding
    space = load_tabular("iris").space
    with pytest.raises(ValueError, match="epsilon"):
        PathFinding(space=space, epsilon=0.0)
    wine = load_tabular("wine")
    wine_oracle = TreeOracle(fit_victim("tree", wine.x_train, wine.y_train))
    with pytest.raises(ValueError, match="feature space has 4 columns"):
        PathFinding(space=space)(wine_oracle, budget=10)


@pytest.mark.parametrize("epsilon", [1e-2, 1e-3])
def test_located_thresholds_are_within_epsilon_of_the_trees(epsilon):
    low, high = np.array([0.0, -50.0]), np.array([0.01, 50.0])  # widths 0.01 and 100
    rng = np.random.default_rng(0)
    x = low + (high - low) * rng.random((500, 2))
    y = ((x[:, 0] > 0.0037) ^ (x[:, 1] > 12.3)).astype(int) + (x[:, 1] > 31.7)
    tree = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, y)
    space = FeatureSpace.continuous(low, high)
    attack = PathFinding(space=space, epsilon=epsilon, snap=False)  # no snapping: the bisection alone
    result = attack(TreeOracle(tree, incomplete=False), budget=100_000, seed=0)
    assert result.info["complete"] and result.info["leaves"] == tree.get_n_leaves()
    t = tree.tree_
    truth = {f: sorted(float(v) for v, g in zip(t.threshold, t.feature, strict=True) if g == f) for f in (0, 1)}
    assert truth[0] and truth[1]
    checked = 0
    for leaf in result.clone.leaves:
        for fi, pred in leaf.predicates.items():
            assert isinstance(pred, Interval)
            tol = epsilon * (high[fi] - low[fi])
            for bound, side in ((pred.lo, "lo"), (pred.hi, "hi")):
                if math.isinf(bound):
                    continue
                nearest = min(truth[fi], key=lambda v: abs(v - bound))
                # the bound is the last queried value on the left of the threshold (x <= t goes left)
                assert nearest - tol <= bound <= nearest + 1e-9 * tol, (fi, side, bound, nearest, tol)
                checked += 1
    assert checked >= 4
    # the extracted tree agrees with the victim away from the thresholds
    u = space.sample(2000, generator=torch.Generator().manual_seed(1))
    far = torch.ones(len(u), dtype=torch.bool)
    for fi in (0, 1):
        for v in truth[fi]:
            far &= (u[:, fi] - v).abs() > epsilon * (high[fi] - low[fi])
    assert torch.equal(result.clone.predict(u[far]), torch.from_numpy(tree.predict(u[far].numpy())))
