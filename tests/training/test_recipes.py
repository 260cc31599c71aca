"""Training recipes, for every registered one: model selection never touches the test split (a poisoned test
split leaves the selected epoch and weights unchanged)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import modelsteal.experiment.victims as victims
from modelsteal.training import TrainConfig, available_recipes, make_recipe, recipe_class


def _poisoned(data):
    """The same splits with a test split of noise and random labels: selecting on it changes the weights."""
    g = torch.Generator().manual_seed(123)
    return dataclasses.replace(
        data, x_test=torch.rand(data.x_test.shape, generator=g),
        y_test=torch.randint(0, data.num_classes, data.y_test.shape, generator=g))


@pytest.fixture(scope="module")
def noise_outliers() -> str:
    """A registered outlier set of 300 noise images (the recipes' example outliers may be the victim's own)."""
    from modelsteal.data import available_datasets, register_dataset
    from modelsteal.data.registry import RawImages

    name = "test-promises-noise"
    if name not in available_datasets():
        images = np.random.default_rng(0).random((300, 1, 8, 8)).astype(np.float32)

        @register_dataset(name)
        def _load(*, data_dir=None, download=False):
            return RawImages(x_train=images.copy(), y_train=np.arange(300, dtype=np.int64) % 2)

    return name


@pytest.mark.parametrize("recipe", available_recipes())
def test_model_selection_never_touches_the_test_split(digits, recipe, noise_outliers):
    options = dict(recipe_class(recipe).example_options)
    if "outliers" in options:
        options["outliers"] = noise_outliers
    make = lambda: make_recipe(recipe, **options)  # noqa: E731
    config = TrainConfig(epochs=4, lr=0.05, momentum=0.9)
    runs = []
    for data in (digits, _poisoned(digits)):
        model, history = victims.train_victim(data, arch="mlp", config=config, recipe=make(), seed=0, device="cpu",
                                            progress=False)
        runs.append((model, history))
    (m1, h1), (m2, h2) = runs
    assert h1.val_accuracy and h1.best_epoch is not None
    assert h1.val_accuracy == h2.val_accuracy and h1.best_epoch == h2.best_epoch
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
