"""Path finding honours its line-search granularity: every located threshold lies within ``ε · (high − low)``
of the tree's own threshold on that feature, on the correct side, for features of very different widths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.tree import DecisionTreeClassifier

from modelsteal.attacks.tramer import PathFinding, TreeOracle
from modelsteal.attacks.tramer.path_finding import Interval
from modelsteal.data.tabular import FeatureSpace


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
