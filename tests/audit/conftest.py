"""Fixtures of the audit tests: a small digits victim saved as a checkpoint, and one audit of it, run once."""

from __future__ import annotations

import pytest
import torch

from modelsteal.attacks import TrainConfig
from modelsteal.models import build_model, save_checkpoint
from modelsteal.training import train

#: the audit every report test reads: two rungs (100, 316), two attackers, MAD at two strengths
AUDIT = {"pool": ["sample-patches"], "test": "digits", "budget": 316, "price_per_query": 0.25,
         "attacks": ["knockoff-random", "knockoff-argmax"], "defenses": ["mad:0.2,1.0"], "progress": False,
         "backend": "serial"}


def save_victim(digits, path):
    """A small MLP trained on digits (test accuracy above 90%), saved as a modelsteal checkpoint."""
    model = build_model("mlp", input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std,
                        seed=0)
    train(model, digits.x_train, digits.y_train, config=TrainConfig(epochs=8, lr=0.05, momentum=0.9),
          generator=torch.Generator().manual_seed(0))
    return save_checkpoint(model, path, dataset="digits")


@pytest.fixture(scope="session")
def victim_path(digits, tmp_path_factory):
    return save_victim(digits, tmp_path_factory.mktemp("victim") / "digits-mlp.pt")


@pytest.fixture(scope="session")
def audited(victim_path, tmp_path_factory):
    """``(report, out_dir)`` of :data:`AUDIT` on the victim (the one audit the report tests share)."""
    from modelsteal import audit

    out = tmp_path_factory.mktemp("audit")
    return audit(victim_path, out=out, **AUDIT), out
