"""What attacks promise, on numbers a wrong implementation would change: the clone trains on the soft
posteriors (or their argmax only when asked), Knockoff samples its pool without replacement, ``nquery``
averages the n answers of each image under a random defense, and the adaptive policy's rewards are the
sum of the three standardised rewards with the mean of earlier rewards as the bandit's baseline."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import modelsteal.training
from modelsteal import PredictionAPI
from modelsteal.attacks import AdaptiveKnockoff, KnockoffNets, TrainConfig
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


# ------------------------------------------------------------------------------------------------
# adaptive Knockoff: reward composition and baseline, recomputed from the queries
# ------------------------------------------------------------------------------------------------
K, PIXELS = 5, 4
_W = torch.randn(K, PIXELS, generator=torch.Generator().manual_seed(11))
_A = torch.randn(K, PIXELS, generator=torch.Generator().manual_seed(12))


class _SoftBox:
    """Deterministic soft answers ``softmax(3 W x)``: every image gets its own margin and spread."""

    num_classes, input_shape = K, (1, 2, 2)

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        return torch.softmax(3 * x.flatten(1) @ _W.T, dim=1)


class _FixedLogits(nn.Module):
    """A knockoff whose logits ``A x`` do not move under training (its one parameter has zero gradient), so
    the loss reward ``−Σ y log F_A(x)`` can be recomputed after the run."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("a", _A.clone())
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.a.T + 0 * self.p


def _standardised(values: list[Tensor]) -> Tensor:
    """The last batch standardised by the mean and population std of every value so far."""
    allv = torch.cat(values).double()
    std = float(allv.std(unbiased=False))
    if std < 1e-8:
        return torch.zeros_like(values[-1], dtype=torch.float64)
    return (values[-1].double() - allv.mean()) / std


@pytest.mark.parametrize("reward", ["all", "certainty", "diversity", "loss"])
def test_adaptive_rewards_and_baseline_match_the_paper(reward):
    per_class, classes, b, steps, window, lr = 30, 4, 8, 6, 12, 0.7
    labels = torch.arange(classes).repeat_interleave(per_class)
    x = torch.rand(len(labels), 1, 2, 2, generator=torch.Generator().manual_seed(3))
    attack = AdaptiveKnockoff(transfer_set=x, transfer_labels=labels, reward=reward, policy_lr=lr,
                              policy_batch_size=b, diversity_window=window, clone=lambda s, k: _FixedLogits(),
                              train=TrainConfig(epochs=1))
    result = attack(_SoftBox(), budget=b * steps, seed=0)
    idx = result.info["indices"]
    assert len(idx) == b * steps
    box, knockoff = _SoftBox(), _FixedLogits()
    names = ("certainty", "diversity", "loss") if reward == "all" else (reward,)
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    history = torch.empty(0, K)
    h = torch.zeros(classes, dtype=torch.float64)
    earlier: list[Tensor] = []
    for t in range(steps):
        batch = idx[t * b:(t + 1) * b]
        y = box.query(x[batch])
        logits = knockoff(x[batch]).detach()
        top2 = y.topk(2, dim=1).values
        ybar = history.mean(0) if len(history) else y.mean(0)  # the previous Δ answers
        raw = {"certainty": top2[:, 0] - top2[:, 1], "diversity": (y - ybar).clamp_min(0).sum(1),
               "loss": -(y * torch.log_softmax(logits, 1)).sum(1)}
        r = torch.zeros(b, dtype=torch.float64)
        for n in names:  # each reward standardised by its own running statistics, then summed
            seen[n].append(raw[n])
            r += _standardised(seen[n])
        assert abs(result.info["mean_reward"][t] - float(r.mean())) < 1e-6, (t, reward)
        baseline = float(torch.cat(earlier).mean()) if earlier else float(r.mean())  # earlier rewards only
        pi = torch.softmax(h, 0)
        leaves = labels[batch]
        adv = r - baseline
        h = h + lr / b * (torch.zeros(classes, dtype=torch.float64).index_add_(0, leaves, adv) - adv.sum() * pi)
        earlier.append(r)
        history = torch.cat([history, y])[-window:]
    got = result.info["preferences"]["<root>"]
    assert torch.allclose(got, h, rtol=0, atol=1e-6), (got, h)
    assert float(h.abs().max()) > 0.05  # the preferences moved: the comparison means something


@pytest.mark.parametrize("labels", ["soft", "argmax"])
def test_adaptive_final_clone_trains_on_the_collected_answers(train_calls, labels):
    y_labels = torch.arange(3).repeat_interleave(10)
    x = torch.rand(len(y_labels), 1, 2, 2, generator=torch.Generator().manual_seed(5))
    attack = AdaptiveKnockoff(transfer_set=x, transfer_labels=y_labels, policy_batch_size=4, labels=labels,
                              clone=lambda s, k: _FixedLogits(), train=TrainConfig(epochs=1))
    result = attack(_SoftBox(), budget=12, seed=0)
    final = train_calls[-1]
    answers = _SoftBox().query(x[result.info["indices"]])
    assert torch.equal(final["x"], x[result.info["indices"]]) and torch.allclose(result.transfer_y, answers)
    if labels == "soft":
        assert final["y"].dtype.is_floating_point and torch.equal(final["y"], result.transfer_y)
    else:
        assert final["y"].dtype == torch.long and torch.equal(final["y"], answers.argmax(1))
