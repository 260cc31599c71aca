"""Many clones trained in one pass: parameters stacked, one vectorised forward and backward for all.

Clones of one architecture that train on the same inputs ``x`` with their own targets (the clones of one
Knockoff transfer set under several defenses: the same images, other answers) are trained together by
:func:`train_stacked`: their parameters are stacked along a new leading axis (``torch.func.stack_module_state``)
and every step runs one ``vmap``-ed ``functional_call`` over the clones, so the per-step overhead that dominates
small models is paid once for all of them. Each clone's loss is its own mean cross-entropy, the clones' losses
are summed (their gradients do not mix: no parameter is shared), and SGD, momentum, weight decay and Adam act
elementwise, so the update of every clone is the update :func:`~modelsteal.training.train` would make. The
mini-batches come in the order one :func:`~modelsteal.training.train` call draws from the same generator, so with
the same seed each clone sees exactly the batches it would have seen alone; what differs is the arithmetic
(a batched, grouped convolution sums in another order), last-bit differences that training can amplify to the
size of one seed's noise. With ``val`` each clone keeps the weights of its own best validation epoch.

Models with batch normalisation or dropout are not stacked (:func:`can_stack` says so): their training-mode
behaviour (running statistics updated in place, random masks) is not the same under ``vmap``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelsteal.training.loop import ShuffledBatches, TrainConfig, TrainHistory

_UNSTACKABLE = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout)


def can_stack(models: Sequence[nn.Module]) -> bool:
    """Whether ``models`` can train in one stacked pass: at least two, of one type and one parameter layout,
    with no batch normalisation or dropout."""
    if len(models) < 2:
        return False
    first = models[0]
    shapes = {k: v.shape for k, v in first.state_dict().items()}
    for m in models:
        if type(m) is not type(first) or {k: v.shape for k, v in m.state_dict().items()} != shapes:
            return False
        if any(isinstance(sub, _UNSTACKABLE) for sub in m.modules()):
            return False
    return True


def _optimizer(params: list[Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    """``config``'s optimiser over the stacked parameters (elementwise, so equal to one per clone)."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _per_clone_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of each clone, ``(C,)``: logits ``(C, B, K)``, soft targets ``(C, B, K)`` or class
    indices ``(C, B)`` (:func:`~modelsteal.training.losses.soft_cross_entropy` per clone)."""
    if targets.ndim == 2:
        c, b, k = logits.shape
        return F.cross_entropy(logits.reshape(c * b, k), targets.reshape(-1), reduction="none").view(c, b).mean(1)
    return -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean(-1)


def train_stacked(
    models: Sequence[nn.Module],
    x: Tensor,
    targets: Sequence[Tensor],
    *,
    config: TrainConfig | None = None,
    generator: torch.Generator | None = None,
    val: tuple[Tensor, Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool | str = False,
    on_epoch: Callable[[], None] | None = None,
) -> list[TrainHistory]:
    """Train every model of ``models`` in place on ``(x, targets[i])``, all in one stacked pass; returns one
    :class:`~modelsteal.training.TrainHistory` per model.

    ``targets[i]`` are soft labels ``(N, K)`` or class indices ``(N,)`` (all of one kind); ``generator`` draws
    the batch order as :func:`~modelsteal.training.train` would; ``val=(x_val, y_val)`` keeps each model's
    best-validation epoch; ``on_epoch()`` is called after every epoch (a sweep's progress). Equivalent to
    ``[train(m, x, y, config=config, generator=copy_of(generator)) ...]``
    up to floating-point summation order (see the module docstring). Example::

        histories = train_stacked([clone_a, clone_b], x, [answers_a, answers_b], config=TrainConfig(epochs=10))
    """
    from torch.func import functional_call, stack_module_state, vmap

    config = config if config is not None else TrainConfig()
    if not can_stack(models):
        raise ValueError("train_stacked needs two or more models of one architecture without batch norm or dropout")
    if len(targets) != len(models) or any(len(t) != len(x) for t in targets):
        raise ValueError(f"need one target tensor of {len(x)} rows per model ({len(models)} models)")
    if len({t.ndim for t in targets}) != 1:
        raise ValueError("targets must all be soft labels or all class indices")
    if len(x) == 0:
        raise ValueError("cannot train on an empty transfer set")
    device = torch.device(device) if device is not None else next(models[0].parameters()).device
    for m in models:
        m.to(device).train()
    params, buffers = stack_module_state(list(models))
    template = copy.deepcopy(models[0]).to("meta")

    def forward_one(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor) -> Tensor:
        return functional_call(template, (p, b), (xb,))

    forward = vmap(forward_one, in_dims=(0, 0, None))
    stacked_targets = torch.stack([t.to(device) for t in targets])
    opt = _optimizer(list(params.values()), config)
    sched = torch.optim.lr_scheduler.StepLR(opt, config.lr_step, config.lr_gamma) if config.lr_step else None
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    batches = ShuffledBatches(x, torch.arange(len(x)), batch_size=config.batch_size, generator=generator)
    c = len(models)
    histories = [TrainHistory() for _ in models]
    best_acc = torch.full((c,), -1.0)
    best: list[dict[str, Tensor] | None] = [None] * c
    bar = _progress(config.epochs, progress if isinstance(progress, str) else "train stacked") if progress else None
    steps = 0
    try:
        for epoch in range(config.epochs):
            total, seen = torch.zeros(c, device=device), 0
            for xb, idx in batches.epoch(epoch):
                xb, idx = xb.to(device), idx.to(device)
                losses = _per_clone_loss(forward(params, buffers, xb), stacked_targets[:, idx])
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                opt.step()
                total += losses.detach() * len(xb)
                seen += len(xb)
                steps += 1
            if sched is not None:
                sched.step()
            mean = (total / seen).tolist() if seen else [math.nan] * c  # one device sync per epoch
            for i, h in enumerate(histories):
                h.loss.append(mean[i])
                h.steps = steps
            if val is not None:
                accs = _stacked_accuracy(forward, params, buffers, *val, device=device)
                for i, h in enumerate(histories):
                    h.val_accuracy.append(float(accs[i]))
                    if accs[i] > best_acc[i]:
                        best_acc[i], h.best_epoch = accs[i], epoch
                        best[i] = {k: v[i].detach().clone() for k, v in params.items()}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sum(mean) / c:.3f}")
            if on_epoch is not None:
                on_epoch()
    finally:
        if bar is not None:
            bar.close()
    _unstack_into(models, params, buffers, best)
    return histories


def _progress(total: int, desc: str):  # noqa: ANN202
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


@torch.no_grad()
def _stacked_accuracy(forward, params, buffers, x_val: Tensor, y_val: Tensor, *, device,  # noqa: ANN001
                      batch_size: int = 1024) -> Tensor:
    """Top-1 accuracy of every stacked model on ``(x_val, y_val)``, ``(C,)`` on the CPU."""
    correct = None
    for xb, yb in zip(x_val.split(batch_size), y_val.split(batch_size), strict=True):
        hit = (forward(params, buffers, xb.to(device)).argmax(-1) == yb.to(device)).sum(-1)
        correct = hit if correct is None else correct + hit
    return correct.cpu().double() / len(y_val)


@torch.no_grad()
def _unstack_into(models: Sequence[nn.Module], params: dict[str, Tensor], buffers: dict[str, Tensor],
                  best: Sequence[dict[str, Tensor] | None]) -> None:
    """Copy each model's slice of the stacked tensors (or its best-validation weights) back into it."""
    for i, m in enumerate(models):
        chosen = best[i] if best[i] is not None else {k: v[i] for k, v in params.items()}
        state = {**{k: v[i] for k, v in buffers.items()}, **chosen}
        m.load_state_dict({k: t.detach().clone() for k, t in state.items()})
