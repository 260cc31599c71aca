"""Metrics and sweeps: fidelity is agreement with the *undefended* victim (not accuracy against labels, not
agreement with the defended answers), on known values and in a sweep row; and model selection never
touches the test split, for every training recipe."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import modelsteal.experiment.points as points
import modelsteal.experiment.victims as victims
from modelsteal import PredictionAPI
from modelsteal.experiment.config import AttackConfig, DefenseConfig, SweepConfig, TransferConfig, VictimConfig
from modelsteal.experiment.plan import plan
from modelsteal.metrics import fidelity
from modelsteal.models import save_checkpoint
from modelsteal.training import TrainConfig, available_recipes, make_recipe, predict_logits, recipe_class


class _Fixed(nn.Module):
    """A 'clone' answering fixed logits, one row per input (the input holds the row index)."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits[x[:, 0].long()]


def test_fidelity_on_known_values():
    clone = _Fixed(torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [0, 0, 5.0], [5.0, 0, 0]]))
    x = torch.arange(5, dtype=torch.float32)[:, None]
    reference = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8], [0.1, 0.5, 0.4]])
    assert fidelity(clone, x, reference) == pytest.approx(3 / 5)  # rows 0, 1, 3 agree
    assert fidelity(clone, x, torch.eye(3)[[0, 1, 2, 2, 0]]) == 1.0
    assert fidelity(clone, x, torch.eye(3)[[1, 2, 0, 0, 1]]) == 0.0


def test_a_sweep_rows_fidelity_is_agreement_with_the_undefended_victim(digits_victim, digits, monkeypatch, tmp_path):
    """MAD at ε = 2 moves every answer to a vertex, so the clone learns a poisoned labelling: its agreement with
    the clean victim, its test accuracy and its agreement with the defended answers are three different
    numbers, and the row that :func:`~modelsteal.experiment.points.run_point` makes must report the first."""
    clones = []
    real_build = points.build_attack

    def keep_clone(*args, **kwargs):
        attack = real_build(*args, **kwargs)

        def run(api, *, budget, seed):
            result = attack(api, budget=budget, seed=seed)
            clones.append(result.clone)
            return result

        return run

    monkeypatch.setattr(points, "build_attack", keep_clone)
    checkpoint = tmp_path / "victim.pt"
    save_checkpoint(digits_victim, checkpoint, dataset="digits")
    cfg = SweepConfig(
        victim=VictimConfig(dataset="digits", arch="mlp", checkpoint=str(checkpoint)), transfer=TransferConfig(),
        defenses=[DefenseConfig(name="mad", strengths=[2.0])],
        attacks=[AttackConfig(name="knockoff", clone="mlp", train={"epochs": 4, "lr": 0.05, "momentum": 0.9})],
        budgets=[300], device="cpu",
    )
    (point,) = plan(cfg)
    rec = points.run_point(point, cache=points.PointCache(out_dir=tmp_path, device="cpu"))
    (clone,) = clones
    pred = predict_logits(clone, digits.x_test).argmax(1)
    clean = PredictionAPI(digits_victim).posteriors(digits.x_test).argmax(1)
    defended = PredictionAPI(digits_victim, defense=points.point_defense(cfg.defenses[0], 2.0)).query(
        digits.x_test).argmax(1)
    agree_clean = float((pred == clean).float().mean())
    accuracy = float((pred == digits.y_test).float().mean())
    agree_defended = float((pred == defended).float().mean())
    assert rec["fidelity"] == agree_clean
    assert rec["attacker_accuracy"] == accuracy
    assert len({round(agree_clean, 6), round(accuracy, 6), round(agree_defended, 6)}) == 3, (
        agree_clean, accuracy, agree_defended)


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
