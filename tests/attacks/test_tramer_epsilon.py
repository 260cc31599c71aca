"""Path finding's ``epsilon`` is the user's accuracy/queries trade-off (Tramèr et al., USENIX Security 2016,
Algorithm 1's LINE_SEARCH granularity): a finer epsilon locates every threshold more closely and costs more
queries, a coarser one fewer (issue 29: a planted fixed 1e-3 of the feature width survived every test)."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.tree import DecisionTreeClassifier

from modelsteal.attacks.tramer import PathFinding, TreeOracle
from modelsteal.data.tabular import FeatureSpace

LOW, HIGH = np.array([0.0, -50.0]), np.array([0.01, 50.0])  # widths 0.01 and 100


def _tree() -> DecisionTreeClassifier:
    rng = np.random.default_rng(0)
    x = LOW + (HIGH - LOW) * rng.random((500, 2))
    y = ((x[:, 0] > 0.0037) ^ (x[:, 1] > 12.3)).astype(int) + (x[:, 1] > 31.7)
    return DecisionTreeClassifier(max_depth=4, random_state=0).fit(x, y)


def _worst_error(tree: DecisionTreeClassifier, epsilon: float) -> tuple[float, int]:
    """The largest located-bound error relative to its feature's width, and the queries spent."""
    space = FeatureSpace.continuous(LOW, HIGH)
    result = PathFinding(space=space, epsilon=epsilon, snap=False)(TreeOracle(tree, incomplete=False),
                                                                    budget=200_000, seed=0)
    assert result.info["complete"] and result.info["leaves"] == tree.get_n_leaves()
    assert result.info["epsilon"] == epsilon
    t = tree.tree_
    truth = {f: [float(v) for v, g in zip(t.threshold, t.feature, strict=True) if g == f] for f in (0, 1)}
    worst = 0.0
    for leaf in result.clone.leaves:
        for fi, pred in leaf.predicates.items():
            for bound in (pred.lo, pred.hi):
                if not math.isinf(bound):
                    err = min(abs(v - bound) for v in truth[fi]) / (HIGH[fi] - LOW[fi])
                    worst = max(worst, err)
    return worst, result.queries


def test_epsilon_sets_the_precision_and_the_cost():
    tree = _tree()
    runs = {eps: _worst_error(tree, eps) for eps in (1e-2, 1e-3, 1e-5)}
    for eps, (worst, _) in runs.items():
        assert 0 < worst <= eps, (eps, worst)
    # each threshold's bisection takes about log2(1/eps) steps: finer costs more, by ~log2(100) per threshold
    q = {eps: queries for eps, (_, queries) in runs.items()}
    assert q[1e-2] < q[1e-3] < q[1e-5]
    assert q[1e-5] - q[1e-3] >= 4 * math.floor(math.log2(100))  # >= 4 thresholds located, each ~6.6 steps more
    # and at 1e-5 the bounds sit far closer than a 1e-3 search could place them
    assert runs[1e-5][0] < 1e-4


def test_a_coarse_epsilon_still_classifies_away_from_the_thresholds():
    tree = _tree()
    space = FeatureSpace.continuous(LOW, HIGH)
    result = PathFinding(space=space, epsilon=0.05, snap=False)(TreeOracle(tree, incomplete=False),
                                                                 budget=200_000, seed=0)
    u = space.sample(2000, generator=torch.Generator().manual_seed(1))
    t = tree.tree_
    far = torch.ones(len(u), dtype=torch.bool)
    for v, g in zip(t.threshold, t.feature, strict=True):
        if g >= 0:
            far &= (u[:, g] - v).abs() > 0.05 * (HIGH[g] - LOW[g])
    assert far.sum() > 200
    assert torch.equal(result.clone.predict(u[far]), torch.from_numpy(tree.predict(u[far].numpy())))
