"""Tabular registry (modelsteal.data.tabular) and the extraction metrics R_test / R_unif."""

import math

import numpy as np
import pytest
import torch

from modelsteal.data.tabular import Feature, FeatureSpace, available_tabular, load_tabular
from modelsteal.metrics.extraction import (
    extraction_accuracy,
    extraction_error,
    r_test,
    r_unif,
    total_variation,
    zero_one,
)

BASES = ["iris", "digits", "wine", "breast-cancer", "circles", "moons", "blobs", "five-class"]
SHAPES = {"iris": (150, 4, 3), "digits": (1797, 64, 10), "wine": (178, 13, 3), "breast-cancer": (569, 30, 2),
          "circles": (5000, 2, 2), "moons": (5000, 2, 2), "blobs": (5000, 2, 3), "five-class": (1000, 20, 5)}


@pytest.mark.parametrize("name", BASES)
def test_registered_sets_have_explicit_splits_and_train_ranges(name):
    data = load_tabular(name)
    n, d, k = SHAPES[name]
    assert len(data.x_train) + len(data.x_test) == n and data.num_features == d and data.num_classes == k
    assert data.x_train.dtype == np.float64 and data.y_train.dtype == np.int64
    low, high = data.feature_ranges
    np.testing.assert_array_equal(low, data.x_train.min(0))  # ranges come from the training split only
    np.testing.assert_array_equal(high, data.x_train.max(0))
    assert data.categorical_columns == []
    again = load_tabular(name)
    np.testing.assert_array_equal(again.x_test, data.x_test)  # the split is fixed by the seed
    assert not np.array_equal(load_tabular(name, seed=1).y_test, data.y_test)


def test_original_units_are_kept():
    data = load_tabular("breast-cancer")
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer().data
    assert data.x_train.max() == pytest.approx(raw.max())  # no scaling: it belongs to the model


def test_binary_variants_and_unknown_names():
    data = load_tabular("digits-binary")
    assert data.num_classes == 2 and set(np.unique(data.y_train)) == {0, 1}
    assert "digits-binary" in available_tabular() and "circles-binary" not in available_tabular()
    with pytest.raises(ValueError, match="known: .*breast-cancer.*iris"):
        load_tabular("adult")


def test_categorical_variants_codes_and_onehot():
    codes = load_tabular("iris-cat")
    onehot = load_tabular("iris-onehot")
    assert codes.categorical_columns == [1, 3] and codes.num_features == 4
    for f in codes.space.features:
        if f.categorical:
            col = codes.x_train[:, f.columns[0]]
            assert set(np.unique(col)) <= set(range(f.categories))
    groups = [f for f in onehot.space.features if f.kind == "onehot"]
    assert len(groups) == 2 and onehot.num_features == 2 + sum(f.categories for f in groups)
    for f in groups:
        np.testing.assert_array_equal(onehot.x_test[:, list(f.columns)].sum(1), 1.0)
        original = int(f.name[1:])  # one-hot groups hold the same bins as the codes
        np.testing.assert_array_equal(onehot.x_train[:, list(f.columns)].argmax(1), codes.x_train[:, original])


def test_feature_space_sampling_respects_ranges_and_categories():
    space = load_tabular("wine-onehot").space
    x = space.sample(500, generator=torch.Generator().manual_seed(0))
    assert x.shape == (500, space.dim) and x.dtype == torch.float64
    for f in space.features:
        if f.kind == "continuous":
            v = x[:, f.columns[0]]
            assert f.low <= float(v.min()) and float(v.max()) <= f.high
        else:
            block = x[:, list(f.columns)]
            assert torch.equal(block.sum(1), torch.ones(500, dtype=torch.float64))
    const = FeatureSpace.continuous(np.array([0.0, 1.0]), np.array([0.0, 3.0]))
    assert float(const.sample(50).abs()[:, 0].max()) == 0.0
    assert float(const.sample(50, widen=1.0)[:, 0].abs().max()) > 0.0
    center, half = const.box(widen=2.0)
    assert torch.equal(center, torch.tensor([0.0, 2.0], dtype=torch.float64))
    assert torch.equal(half, torch.tensor([2.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="columns"):
        FeatureSpace((Feature("a", "continuous", (1,), 0.0, 1.0),))


def test_total_variation_zero_one_and_r_values():
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.75, 0.25, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(total_variation(p, q), torch.tensor([0.25, 1.0], dtype=torch.float64))
    assert torch.equal(zero_one(p, q), torch.tensor([0.0, 1.0], dtype=torch.float64))  # argmax 0 vs 0, 0 vs 1
    assert extraction_error(p, q) == pytest.approx(0.625)
    assert extraction_error(p, q, labels=True) == pytest.approx(0.5)
    assert extraction_error(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 0])) == pytest.approx(1 / 3)
    assert extraction_accuracy(0.25) == 0.75
    with pytest.raises(ValueError):
        extraction_error(p[:0], q[:0])

    def f(x):
        return torch.softmax(torch.stack([x[:, 0], -x[:, 0]], 1), 1)

    def g(x):
        return torch.softmax(torch.stack([x[:, 0], x[:, 0]], 1), 1)

    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    expected = abs(f(x)[1, 0] - 0.5) / 2  # TV is 0 at x=0 and |f_0 - 0.5| at x=1
    assert r_test(f, g, x) == pytest.approx(float(expected))
    space = FeatureSpace.continuous(np.array([-1.0]), np.array([1.0]))
    ru = r_unif(f, g, sampler=space.sample, n=4000, seed=0, labels=True)
    assert ru == pytest.approx(0.5, abs=0.05)  # f's label flips at 0, g is a tie (argmax 0) everywhere
    assert math.isclose(r_unif(f, f, sampler=space.sample, n=100), 0.0)
