import math

import pytest
import torch
from torch import Tensor, nn

from modelsteal.metrics import (
    detection_rates,
    fidelity,
    hellinger_distance,
    l1_distance,
    l2_distance,
    perturbation_summary,
)


def test_distances_on_known_values():
    y = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    t = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    assert torch.allclose(l1_distance(y, t), torch.tensor([2.0, 0.0]))
    assert torch.allclose(l2_distance(y, t), torch.tensor([math.sqrt(2), 0.0]))
    assert torch.allclose(hellinger_distance(y, t), torch.tensor([1.0, 0.0]))
    s = perturbation_summary(y, t)
    assert math.isclose(s["l1_mean"], 1.0) and math.isclose(s["hellinger_mean"], 0.5)


def test_detection_rates():
    r = detection_rates(torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 0, 1]))
    assert math.isclose(r["tpr"], 1.0) and math.isclose(r["tnr"], 2 / 3)


def test_angular_deviation_matches_autograd():
    from modelsteal.metrics import angular_deviation
    from modelsteal.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=5, seed=1).double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    y = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1)
    t = torch.softmax(torch.randn(6, 5, dtype=torch.float64), 1)
    got = angular_deviation(model, x, y, t)
    params = list(model.parameters())
    for i in range(6):

        def grad(target, i=i):
            loss = -(target[i] * torch.log_softmax(model(x[i : i + 1]), 1)[0]).sum()
            return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

        u, a = grad(y), grad(t)
        ref = torch.rad2deg(torch.arccos(u @ a / (u.norm() * a.norm())))
        assert abs(float(got[i]) - float(ref)) < 1e-6
    assert float(angular_deviation(model, x, y, y).abs().max()) < 1e-3


class _FixedAPI:
    """A duck-typed defended API with known answers: two undefended rows, their defended answers."""

    def __init__(self) -> None:
        self.clean = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
        self.defended = torch.tensor([[0.3, 0.6, 0.1], [0.1, 0.6, 0.3]])
        self.clients: list[str] = []

    def posteriors(self, x):
        return self.clean

    def query(self, x, *, client="default"):
        self.clients.append(client)
        return self.defended


def test_defense_cost_on_known_values():
    from modelsteal.metrics import EVALUATION_CLIENT, defense_cost

    api = _FixedAPI()
    cost = defense_cost(api, torch.zeros(2, 1), torch.tensor([0, 1]))
    assert cost["victim_accuracy"] == 1.0 and cost["defender_accuracy"] == 0.5  # row 0's label flipped
    assert cost["label_agreement"] == 0.5
    assert math.isclose(cost["l1_mean"], 0.4, rel_tol=1e-6)  # (0.8 + 0) / 2
    assert math.isclose(cost["l1_std"], math.sqrt(0.32), rel_tol=1e-6)
    assert math.isclose(cost["l2_mean"], math.sqrt(0.32) / 2, rel_tol=1e-6)
    assert api.clients == [EVALUATION_CLIENT]  # measured as its own client, never as an attacker's


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
