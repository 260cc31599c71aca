"""Promises of the training loop: a fresh order of the rows every epoch, and the returned weights are those
of the epoch with the best validation accuracy (not the last epoch's)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from modelsteal.training import Callback, CrossEntropy, Loss, TrainConfig, TrainState, train


class _RecordingLoss(Loss):
    """Cross-entropy that records the batch labels it sees (the rows' identities, below)."""

    def __init__(self) -> None:
        self.batches: list[Tensor] = []
        self.inner = CrossEntropy()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        self.batches.append(x[:, 0].detach().clone())
        return self.inner(model, x, y, extra)


def test_every_epoch_visits_every_row_once_in_a_new_order():
    n, epochs, bs = 40, 4, 8
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)  # column 0 = row id
    y = torch.arange(n) % 2
    rec = _RecordingLoss()
    model = nn.Linear(3, 2)
    train(model, x, y, config=TrainConfig(epochs=epochs, batch_size=bs), loss=rec,
          generator=torch.Generator().manual_seed(0))
    per_epoch = n // bs
    assert len(rec.batches) == epochs * per_epoch
    orders = [torch.cat(rec.batches[e * per_epoch:(e + 1) * per_epoch]).long() for e in range(epochs)]
    for order in orders:
        assert torch.equal(order.sort().values, torch.arange(n))  # a permutation: each row exactly once
        assert not torch.equal(order, torch.arange(n))  # shuffled
    assert len({tuple(o.tolist()) for o in orders}) == epochs  # a different order in every epoch
    # shuffle=False keeps the rows in order, every epoch
    rec = _RecordingLoss()
    train(nn.Linear(3, 2), x, y, config=TrainConfig(epochs=2, batch_size=bs), loss=rec, shuffle=False)
    assert torch.equal(torch.cat(rec.batches).long(), torch.arange(n).repeat(2))


class _Snapshots(Callback):
    """Keeps a copy of the weights at the end of every epoch; wrecks them during the last epoch."""

    def __init__(self, wreck_epoch: int) -> None:
        self.wreck_epoch = wreck_epoch
        self.states: list[dict[str, Tensor]] = []

    def on_step(self, state: TrainState) -> None:
        if state.epoch == self.wreck_epoch:
            with torch.no_grad():
                for p in state.model.parameters():
                    p.normal_(0, 5, generator=torch.Generator().manual_seed(state.step))

    def on_epoch_end(self, state: TrainState) -> None:
        self.states.append(copy.deepcopy(state.model.state_dict()))


def test_the_returned_weights_are_the_best_validation_epochs(digits):
    from modelsteal.models import build_model

    epochs = 5
    model = build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=0)
    snaps = _Snapshots(wreck_epoch=epochs - 1)  # the last epoch ends with random weights: poor accuracy
    hist = train(model, digits.x_train, digits.y_train, config=TrainConfig(epochs=epochs, lr=0.05, momentum=0.9),
                 val=(digits.x_val, digits.y_val), callbacks=[snaps], generator=torch.Generator().manual_seed(0))
    acc = hist.val_accuracy
    assert len(acc) == epochs and acc[-1] < max(acc) - 0.3
    best = max(range(epochs), key=lambda e: (acc[e], -e))  # the first epoch reaching the maximum
    assert hist.best_epoch == best < epochs - 1
    final = model.state_dict()
    for name, value in snaps.states[best].items():
        assert torch.equal(final[name], value), f"{name} is not the best epoch's"
    assert any(not torch.equal(final[k], v) for k, v in snaps.states[-1].items())
