"""What Knockoff Nets promises, on numbers a wrong implementation would change: the clone trains on the soft
posteriors (or their argmax only when asked), the pool is sampled without replacement, and ``nquery``
averages the n answers of each image under a random defense."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import modelsteal.training
from modelsteal import PredictionAPI
from modelsteal.attacks import KnockoffNets, TrainConfig
from modelsteal.defenses import make_defense

FAST = TrainConfig(epochs=2, lr=0.05, momentum=0.9)


class Recorder:
    """A black box that forwards to ``inner`` and keeps every query batch and its answers."""

    def __init__(self, inner) -> None:
        self.inner, self.x, self.y = inner, [], []
        self.num_classes, self.input_shape = inner.num_classes, tuple(inner.input_shape)

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        out = self.inner.query(x, client=client)
        self.x.append(x.detach().clone())
        self.y.append(out.detach().clone())
        return out

    def all(self) -> tuple[Tensor, Tensor]:
        return torch.cat(self.x), torch.cat(self.y)


@pytest.fixture
def train_calls(monkeypatch):
    """Every call of the one training loop made by an attack: the targets ``y`` it was given."""
    calls: list[dict] = []
    real = modelsteal.training.train

    def spy(model, x, y, **kw):
        calls.append({"x": x.detach().clone(), "y": y.detach().clone()})
        return real(model, x, y, **kw)

    monkeypatch.setattr(modelsteal.training, "train", spy)
    return calls


@pytest.fixture(scope="module")
def pool(digits):
    return digits.x_train[:120]


@pytest.mark.parametrize("labels", ["soft", "argmax"])
def test_knockoff_clone_trains_on_the_answers_it_received(digits_victim, pool, train_calls, labels):
    rec = Recorder(PredictionAPI(digits_victim, defense=make_defense("reverse-sigmoid", strength=0.6)))
    result = KnockoffNets(transfer_set=pool, clone="mlp", train=FAST, labels=labels)(rec, budget=50, seed=0)
    qx, qy = rec.all()
    assert len(train_calls) == 1
    (call,) = train_calls
    assert torch.equal(call["x"], qx) and torch.equal(result.transfer_y, qy)
    if labels == "soft":  # the very posteriors, not silently their argmax
        assert call["y"].dtype.is_floating_point and torch.equal(call["y"], qy)
        assert float(qy.max(1).values.mean()) < 0.99  # soft answers: argmax would lose information
    else:
        assert call["y"].dtype == torch.long and torch.equal(call["y"], qy.argmax(1))


def test_knockoff_samples_its_pool_without_replacement(digits_victim, pool):
    keys = {tuple(r.flatten().tolist()) for r in pool}
    assert len(keys) == len(pool)  # distinct rows, so repeats are visible
    for budget in (60, len(pool)):
        rec = Recorder(PredictionAPI(digits_victim))
        result = KnockoffNets(transfer_set=pool, clone="mlp", train=FAST)(rec, budget=budget, seed=1)
        seen = [tuple(r.flatten().tolist()) for r in rec.all()[0]]
        assert len(seen) == budget and len(set(seen)) == budget, f"{budget - len(set(seen))} images queried twice"
        assert set(seen) <= keys and result.info["pool_exhausted"] is False
    rec = Recorder(PredictionAPI(digits_victim))
    result = KnockoffNets(transfer_set=pool, clone="mlp", train=FAST)(rec, budget=150, seed=1)
    seen = [tuple(r.flatten().tolist()) for r in rec.all()[0]]
    assert sorted(seen) == sorted(keys)  # the whole pool once, then it stops
    assert result.queries == len(pool) and result.info["pool_exhausted"] is True


def test_nquery_averages_the_n_answers_of_each_image_under_a_random_defense(digits_victim, pool, train_calls):
    q = 3
    rec = Recorder(PredictionAPI(digits_victim, defense=make_defense("random-noise", strength=5.0, seed=2)))
    result = KnockoffNets(transfer_set=pool, clone="mlp", train=FAST, queries_per_image=q)(rec, budget=61, seed=0)
    qx, qy = rec.all()
    n = 61 // q
    assert result.queries == len(qx) == n * q and len(result.transfer_x) == n
    per_image = qy.view(n, q, -1)
    assert torch.equal(qx.view(n, q, *qx.shape[1:]), result.transfer_x[:, None].expand(-1, q, -1, -1, -1))
    assert (per_image[:, 1:] != per_image[:, :1]).any(dim=2).all()  # the defense answered each repeat anew
    assert float((per_image.mean(dim=1) - per_image[:, 0]).abs().max()) > 1e-2  # averaging matters here
    assert torch.allclose(result.transfer_y, per_image.mean(dim=1), rtol=0, atol=1e-7)
    assert torch.allclose(train_calls[-1]["y"], per_image.mean(dim=1), rtol=0, atol=1e-7)
