"""The one training loop: victims on labels, clones on soft or hard labels from a transfer set.

Every attack (Knockoff Nets, JBDA and friends, label-only retraining) and ``modelsteal train`` use
:func:`train_classifier`, so optimiser, augmentation, progress reporting and model selection behave the
same everywhere. Targets may be class indices ``(N,)`` or soft labels ``(N, K)``; the loss is the
cross-entropy ``-Σ_k ỹ_k log F(x)_k`` the attacker of Orekondy et al. (ICLR 2020, Sec. 3) minimises.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Augment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults follow the paper: SGD, lr 0.1, momentum 0.5 (Sec. 5.1)."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.5
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    lr_step: int | None = None
    lr_gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"invalid training config {self}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: sgd, adam")


@dataclass
class TrainHistory:
    loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int | None = None


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean of ``-Σ_k t_k log softmax(z)_k`` for soft targets, or the usual CE for class indices."""
    if target.ndim == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: Tensor, *, batch_size: int = 1024, device: torch.device | str | None = None
) -> Tensor:
    """Logits of ``model`` on ``x`` in evaluation mode, batched; returned on ``x``'s device."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(xb.to(device)).to(x.device) for xb in x.split(batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, device: torch.device | str | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` (``y`` class indices)."""
    if len(y) == 0:
        raise ValueError("accuracy on an empty set")
    return float((predict_logits(model, x, device=device).argmax(1).cpu() == y.cpu()).float().mean())


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    config: TrainConfig = TrainConfig(),
    generator: torch.Generator | None = None,
    augment: Augment | None = None,
    val: tuple[Tensor, Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool | str = False,
) -> TrainHistory:
    """Train ``model`` in place on ``(x, y)`` and return the loss history.

    ``y`` holds class indices ``(N,)`` or soft labels ``(N, K)``. ``augment(xb, generator)`` transforms
    each mini-batch. With ``val=(x_val, y_val)`` the weights of the epoch with the best validation
    accuracy are kept (model selection on validation data, never on the test split). ``progress``
    shows a tqdm bar (a string sets its description).
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if len(x) == 0:
        raise ValueError("cannot train on an empty transfer set")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    opt = make_optimizer(model, config)
    sched = torch.optim.lr_scheduler.StepLR(opt, config.lr_step, config.lr_gamma) if config.lr_step else None
    history = TrainHistory()
    best_acc, best_state = -1.0, None
    epochs = range(config.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc=progress if isinstance(progress, str) else "train", leave=False)
    for epoch in epochs:
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total, seen = 0.0, 0
        for idx in order.split(config.batch_size):
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, generator)
            xb, yb = xb.to(device), yb.to(device)
            loss = soft_cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        if sched is not None:
            sched.step()
        history.loss.append(total / seen)
        if val is not None:
            acc = accuracy(model, *val, device=device)
            history.val_accuracy.append(acc)
            if acc > best_acc:
                best_acc, best_state, history.best_epoch = acc, copy.deepcopy(model.state_dict()), epoch
        if progress and hasattr(epochs, "set_postfix"):
            epochs.set_postfix(loss=f"{history.loss[-1]:.3f}")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
