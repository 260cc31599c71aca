"""Semi-supervised clone: the queried sample is Knockoff's, the unlabelled stream is the unqueried rest, and the
consistency term is a KL between two augmented views with the first held fixed."""

import pytest
import torch
from torch import nn

from modelsteal import PredictionAPI
from modelsteal.attacks import KnockoffNets
from modelsteal.attacks.adaptive import ConsistencyLoss, SemiSupervisedClone
from modelsteal.training import TrainConfig

TRAIN = TrainConfig(epochs=2, lr=0.05, momentum=0.9, batch_size=16)


def test_lambda_zero_is_knockoff(digits_victim, digits):
    api = PredictionAPI(digits_victim)
    common = {"transfer_set": digits.x_train, "clone": "mlp", "train": TRAIN, "device": "cpu"}
    s = SemiSupervisedClone(consistency=0.0, **common)(api, budget=60, seed=4)
    k = KnockoffNets(**common)(api, budget=60, seed=4)
    assert torch.equal(s.transfer_x, k.transfer_x)
    for a, b in zip(s.clone.state_dict().values(), k.clone.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_unlabelled_stream_is_the_unqueried_pool(digits_victim, digits, monkeypatch):
    from modelsteal import training

    seen = {}
    real = training.train

    def spy(model, x, y, **kw):
        seen["streams"] = kw.get("streams")
        return real(model, x, y, **kw)

    monkeypatch.setattr(training, "train", spy)
    api = PredictionAPI(digits_victim)
    r = SemiSupervisedClone(transfer_set=digits.x_train, unlabelled=None, clone="mlp", train=TRAIN,
                            device="cpu")(api, budget=50, seed=0)
    u = seen["streams"]["unlabelled"]
    assert r.queries == api.total_queries == 50
    assert len(u) == len(digits.x_train) - 50 == r.info["unlabelled"]
    both = torch.cat([u.flatten(1), r.transfer_x.flatten(1)])
    assert len(torch.unique(both, dim=0)) == len(torch.unique(digits.x_train.flatten(1), dim=0))


def test_consistency_term_is_the_kl_of_two_views_with_the_first_fixed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 2])
    u = torch.rand(5, 1, 2, 2)
    same = ConsistencyLoss(weight=2.0, entropy_weight=0.0, shift=0, noise=0.0, rampup_steps=0,
                           generator=torch.Generator().manual_seed(0))
    sup = nn.functional.cross_entropy(model(x), y)
    assert same(model, x, y, {"unlabelled": u}).item() == pytest.approx(sup.item(), abs=1e-6)  # views equal: KL 0
    noisy = ConsistencyLoss(weight=2.0, entropy_weight=0.0, shift=0, noise=0.3, rampup_steps=0,
                            generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    from modelsteal.attacks.augment import gaussian_noise

    u1, u2 = gaussian_noise(u, g, sigma=0.3), gaussian_noise(u, g, sigma=0.3)
    p1 = model(u1).softmax(1)
    kl = (p1 * (p1.log() - model(u2).log_softmax(1))).sum(1).mean()
    got = noisy(model, x, y, {"unlabelled": u})
    assert got.item() == pytest.approx(sup.item() + 2.0 * kl.item(), rel=1e-5)
    # the first view is a fixed target: no gradient flows through it
    model.zero_grad()
    got.backward()
    model2 = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    model2.load_state_dict(model.state_dict())
    target = model2(u1).softmax(1).detach()
    ref = nn.functional.cross_entropy(model2(x), y) + 2.0 * nn.functional.kl_div(
        model2(u2).log_softmax(1), target, reduction="batchmean")
    ref.backward()
    assert torch.allclose(model[1].weight.grad, model2[1].weight.grad, atol=1e-6)


def test_rampup_starts_small():
    loss = ConsistencyLoss(weight=1.0, entropy_weight=0.0, shift=0, noise=0.0, rampup_steps=10,
                           generator=torch.Generator())
    assert loss.ramp() == pytest.approx(torch.exp(torch.tensor(-5.0)).item())
    loss.step = 10
    assert loss.ramp() == 1.0
