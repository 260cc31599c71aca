"""Stacked clone training (``train_stacked``): many clones in one pass equal to one clone at a time, each
keeping its own best validation epoch; models with batch norm are not stacked."""

from __future__ import annotations

import copy

import pytest
import torch

from modelsteal.models import build_model
from modelsteal.training import TrainConfig, train
from modelsteal.training.stacked import can_stack, train_stacked


# -- stacked training ----------------------------------------------------------------------------------------------
def _clones(n, arch="lenet", shape=(1, 8, 8)):
    base = build_model(arch, input_shape=shape, num_classes=10, seed=3)
    return [copy.deepcopy(base) for _ in range(n)]


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_stacked_training_equals_one_clone_at_a_time(kind):
    # bugs caught: the clones' losses averaged instead of summed (every gradient scaled by 1/C), another batch
    # order than train() draws, labels of one clone leaking into another, momentum or weight decay not applied
    torch.manual_seed(0)
    x = torch.rand(150, 1, 8, 8)
    ys = [torch.softmax(3 * torch.randn(150, 10), 1) for _ in range(3)]
    if kind == "hard":
        ys = [y.argmax(1) for y in ys]
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-3)
    alone, stacked = _clones(3), _clones(3)
    for m, y in zip(alone, ys, strict=True):
        train(m, x, y, config=cfg, generator=torch.Generator().manual_seed(5))
    histories = train_stacked(stacked, x, ys, config=cfg, generator=torch.Generator().manual_seed(5))
    for a, s in zip(alone, stacked, strict=True):
        for (name, pa), ps in zip(a.state_dict().items(), s.state_dict().values(), strict=True):
            assert torch.allclose(pa, ps, atol=1e-3), (name, (pa - ps).abs().max())
    moved = max((p - q).abs().max() for p, q in zip(stacked[0].parameters(), stacked[1].parameters(), strict=True))
    assert moved > 1e-3  # different labels gave different clones
    assert len(histories) == 3 and all(len(h.loss) == 2 for h in histories)


def test_stacked_training_keeps_each_clones_own_best_validation_epoch():
    # bug caught: one best epoch chosen for all clones (e.g. by the mean accuracy), or the last epoch kept
    torch.manual_seed(1)
    x, x_val = torch.rand(120, 1, 8, 8), torch.rand(60, 1, 8, 8)
    y_val = torch.randint(0, 10, (60,))
    ys = [torch.randint(0, 10, (120,)) for _ in range(3)]
    cfg = TrainConfig(epochs=6, batch_size=16, lr=0.2, momentum=0.9)
    alone, stacked = _clones(3, arch="mlp", shape=(1, 8, 8)), _clones(3, arch="mlp", shape=(1, 8, 8))
    want = [train(m, x, y, config=cfg, generator=torch.Generator().manual_seed(2), val=(x_val, y_val))
            for m, y in zip(alone, ys, strict=True)]
    got = train_stacked(stacked, x, ys, config=cfg, generator=torch.Generator().manual_seed(2), val=(x_val, y_val))
    assert [h.best_epoch for h in got] == [h.best_epoch for h in want]
    assert len({h.best_epoch for h in got}) > 1  # the clones' best epochs differ here, so a shared choice fails
    for g, w in zip(got, want, strict=True):
        assert g.val_accuracy == pytest.approx(w.val_accuracy, abs=1e-6)
    for a, s in zip(alone, stacked, strict=True):
        for pa, ps in zip(a.state_dict().values(), s.state_dict().values(), strict=True):
            assert torch.allclose(pa, ps, atol=2e-5)


def test_models_with_batch_norm_are_not_stacked():
    # bug caught: stacking a ResNet, whose running statistics vmap cannot update in place
    resnets = [build_model("resnet18", input_shape=(3, 8, 8), num_classes=10, seed=0) for _ in range(2)]
    assert not can_stack(resnets) and not can_stack(_clones(1)) and can_stack(_clones(2))
    with pytest.raises(ValueError, match="batch norm"):
        train_stacked(resnets, torch.rand(4, 3, 8, 8), [torch.zeros(4, dtype=torch.long)] * 2)
