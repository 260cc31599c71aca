"""Shared fixtures: tiny data and models so every test is fast by construction."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_limits

from modelsteal.attacks import TrainConfig
from modelsteal.data import load_dataset
from modelsteal.models import build_model
from modelsteal.training import train

# Two cores shared by many processes: one torch thread and one BLAS thread per test process avoid thrashing.
torch.set_num_threads(1)
threadpool_limits(1)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled digits as (N, 1, 8, 8) splits."""
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_victim(digits):
    """A small MLP trained on digits for a few epochs (test accuracy well above 90%)."""
    model = build_model("mlp", input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std, seed=0)
    train(
        model,
        digits.x_train,
        digits.y_train,
        config=TrainConfig(epochs=8, lr=0.05, momentum=0.9),
        generator=torch.Generator().manual_seed(0),
    )
    return model.eval()


@pytest.fixture
def probs_batch():
    """Random posteriors including exact 0/1 rows (edge cases for every defense)."""
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(32, 10, generator=g), dim=1)
    p[0] = torch.nn.functional.one_hot(torch.tensor(3), 10).float()
    p[1] = torch.full((10,), 0.1)
    return p
