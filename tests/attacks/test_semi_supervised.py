"""Semi-supervised clone: the queried sample is Knockoff's, the unlabelled stream is the unqueried rest, and the
consistency term is a KL between two augmented views with the first held fixed."""

import pytest
import torch
from torch import nn

from modelsteal import PredictionAPI
from modelsteal.attacks import KnockoffNets
from modelsteal.attacks.adaptive import ConsistencyLoss, RotationLoss, SemiSupervisedClone, rotation_batch
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


# S4L-Rotation (self_supervised="rotation")


def test_rotation_batch_labels_name_the_rotation_each_image_got():
    u = torch.arange(2 * 9, dtype=torch.float32).view(2, 1, 3, 3)  # no symmetry: the 4 rotations all differ
    images, k = rotation_batch(u)
    assert images.shape == (8, 1, 3, 3) and k.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i in range(8):  # undoing the labelled rotation gives back the original image
        assert torch.equal(torch.rot90(images[i], -int(k[i]), dims=(-2, -1)), u[i % 2])
    assert torch.equal(images[2, 0], torch.tensor([[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]))  # 90° counter-clockwise


def test_rotation_loss_is_ce_plus_weighted_rotation_ce_and_trains_the_head(digits):
    from modelsteal.models import build_model

    model = build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=0)
    head = nn.Linear(model.head.in_features, 4)
    x, y, u = digits.x_train[:5], digits.y_train[:5], digits.x_train[5:12]
    got = RotationLoss(head=head, weight=0.7, entropy_weight=0.0)(model, x, y, {"unlabelled": u})
    rot_ce = sum(nn.functional.cross_entropy(head(model.penultimate(torch.rot90(u, r, dims=(-2, -1)))),
                                             torch.full((len(u),), r)) for r in range(4)) / 4
    ref = nn.functional.cross_entropy(model(x), y) + 0.7 * rot_ce
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    got.backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_rotation_head_learns_the_rotation_of_held_out_images(digits):
    """The promise of the pretext task: trained through the one loop on unlabelled digits, the head names the
    rotation of digits it never saw (labels misaligned with the images would leave it at chance, 25%)."""
    from modelsteal.models import build_model
    from modelsteal.training import make_optimizer, train

    model = build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=0)
    head = nn.Linear(model.head.in_features, 4)
    cfg = TrainConfig(epochs=10, lr=0.05, momentum=0.9, batch_size=32)
    x, y = digits.x_train[:256], digits.y_train[:256]
    train(model, x, y, config=cfg, loss=RotationLoss(head=head, weight=1.0, entropy_weight=0.0),
          optimizer=lambda _p: make_optimizer(nn.ModuleList([model, head]), cfg),
          streams={"unlabelled": digits.x_train[256:]}, generator=torch.Generator().manual_seed(0))
    images, k = rotation_batch(digits.x_test)
    with torch.no_grad():
        acc = (head(model.penultimate(images)).argmax(1) == k).float().mean().item()
    assert acc > 0.8


def test_rotation_attack_drops_the_head_and_weight_zero_is_knockoff(digits_victim, digits):
    api = PredictionAPI(digits_victim)
    common = {"transfer_set": digits.x_train, "clone": "mlp", "train": TRAIN, "device": "cpu"}
    k = KnockoffNets(**common)(api, budget=60, seed=4)
    r = SemiSupervisedClone(self_supervised="rotation", rotation_weight=1.0, unlabelled=500, **common)(
        PredictionAPI(digits_victim), budget=60, seed=4)
    z = SemiSupervisedClone(self_supervised="rotation", rotation_weight=0.0, **common)(api, budget=60, seed=4)
    assert r.queries == 60 and torch.equal(r.transfer_x, k.transfer_x) and r.info["unlabelled"] == 500
    assert r.clone.state_dict().keys() == k.clone.state_dict().keys()  # the rotation head is not part of the clone
    assert any(not torch.equal(a, b) for a, b in zip(r.clone.state_dict().values(), k.clone.state_dict().values(),
                                                     strict=True))  # the rotation term did change the training
    for a, b in zip(z.clone.state_dict().values(), k.clone.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_rotation_refuses_non_square_inputs_and_unknown_tasks():
    with pytest.raises(ValueError, match="square"):
        SemiSupervisedClone(transfer_set=torch.rand(10, 1, 8, 6), self_supervised="rotation", clone="mlp")
    with pytest.raises(ValueError, match="self_supervised must be one of"):
        SemiSupervisedClone(transfer_set=torch.rand(10, 1, 8, 8), self_supervised="jigsaw", clone="mlp")
