"""The one training loop: victims, clones, attack substitutes and defense models all train here.

:func:`train` takes a loss object (:mod:`~modelsteal.training.losses`; soft/hard cross-entropy by default),
an optimiser and scheduler as objects, factories or today's names (:class:`TrainConfig`), extra batch
streams the loss reads (an outlier set for outlier exposure), a source of mini-batches (shuffled tensors by
default; the Poisson-sampled loader of DP-SGD), callbacks per step and per epoch, and keeps the epoch with
the best validation accuracy. With the defaults it is the plain mini-batch SGD of Orekondy et al. (ICLR
2020, Sec. 5.1): SGD, lr 0.1, momentum 0.5, cross-entropy on soft or hard labels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from modelsteal.models.builders import model_device
from modelsteal.training.losses import CrossEntropy, Loss

Augment = Callable[[Tensor, torch.Generator], Tensor]
OptimizerSpec = str | torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerSpec = Any  # an LRScheduler, or a factory ``optimizer -> LRScheduler``
OPTIMIZERS = ("sgd", "adam")


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
        checks = [
            ("epochs", self.epochs >= 0, "an integer >= 0"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("lr", self.lr > 0, "a number > 0"),
            ("momentum", self.momentum >= 0, "a number >= 0"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("lr_step", self.lr_step is None or self.lr_step >= 1, "an integer >= 1 or none"),
            ("lr_gamma", self.lr_gamma > 0, "a number > 0"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"training option {name}={getattr(self, name)!r} is invalid; it must be {want}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")


@dataclass
class TrainHistory:
    """Mean training loss and validation accuracy per epoch, the selected epoch, and recipe facts."""

    loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    steps: int = 0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainState:
    """What callbacks see: the model, the position in training, the last step's loss; set ``stop`` to end."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: TrainHistory
    epochs: int
    epoch: int = 0
    step: int = 0
    #: the last step's loss as a detached tensor on the training device (read through :attr:`batch_loss`, so a
    #: GPU is synchronised only when a callback asks for it)
    last_loss: Tensor | None = None
    stop: bool = False

    @property
    def batch_loss(self) -> float:
        """The last step's loss as a float (NaN before the first non-empty step)."""
        return math.nan if self.last_loss is None else float(self.last_loss)


class Callback:
    """Hooks of :func:`train`; override the ones you need. ``on_step`` runs after each optimiser step."""

    def on_train_begin(self, state: TrainState) -> None: ...

    def on_step(self, state: TrainState) -> None: ...

    def on_epoch_end(self, state: TrainState) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...


class ProgressBar(Callback):
    """A tqdm bar over epochs showing the mean training loss (closed before anything else is printed)."""

    def __init__(self, desc: str = "train") -> None:
        self.desc, self.bar = desc, None

    def on_train_begin(self, state: TrainState) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.epochs, desc=self.desc, leave=False)

    def on_epoch_end(self, state: TrainState) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{state.history.loss[-1]:.3f}")

    def on_train_end(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()


class EarlyStopping(Callback):
    """Stop when validation accuracy has not improved for ``patience`` epochs (needs ``val`` in :func:`train`)."""

    def __init__(self, *, patience: int = 5) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience

    def on_epoch_end(self, state: TrainState) -> None:
        h = state.history
        if h.best_epoch is not None and state.epoch - h.best_epoch >= self.patience:
            state.stop = True


class Batches(Protocol):
    """A source of mini-batches: ``epoch(e)`` yields the ``(x, y)`` batches of epoch ``e``, or ``(x, y, extra)``
    where ``extra`` maps names to tensors the loss reads in that step's ``extra`` (beside the streams' batches)."""

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Mapping[str, Tensor]]]: ...


class ShuffledBatches:
    """Mini-batches of ``batch_size`` rows in a fresh random order each epoch (``randperm`` on ``generator``),
    each transformed by ``augment(xb, generator)``; ``shuffle=False`` keeps the rows in order."""

    def __init__(
        self, x: Tensor, y: Tensor, *, batch_size: int, generator: torch.Generator, augment: Augment | None = None,
        shuffle: bool = True,
    ) -> None:
        self.x, self.y, self.batch_size, self.generator = x, y, batch_size, generator
        self.augment, self.shuffle = augment, shuffle

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for idx in order.split(self.batch_size):
            xb, yb = self.x[idx], self.y[idx]
            if self.augment is not None:
                xb = self.augment(xb, self.generator)
            yield xb, yb


class LoaderBatches:
    """Batches from any iterable of ``(x, y)`` pairs, e.g. a ``DataLoader`` (Opacus' Poisson-sampled one)."""

    def __init__(self, loader: Iterable[tuple[Tensor, Tensor]]) -> None:
        self.loader = loader

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        yield from self.loader


class _Stream:
    """Endless batches of one extra stream: a fresh permutation of its rows each time it runs out."""

    def __init__(self, x: Tensor, *, batch_size: int, generator: torch.Generator) -> None:
        if len(x) == 0:
            raise ValueError("an extra batch stream is empty")
        self.x, self.batch_size, self.generator = x, batch_size, generator
        self.order, self.pos = torch.randperm(len(x), generator=generator), 0

    def next(self) -> Tensor:
        parts, need = [], self.batch_size
        while need:
            if self.pos == len(self.order):
                self.order, self.pos = torch.randperm(len(self.x), generator=self.generator), 0
            take = self.order[self.pos : self.pos + need]
            self.pos += len(take)
            need -= len(take)
            parts.append(take)
        return self.x[torch.cat(parts)]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a wrapper that keeps it as ``_module`` (Opacus' ``GradSampleModule``)."""
    while hasattr(model, "_module") and isinstance(model._module, nn.Module):
        model = model._module
    return model


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``cfg.optimizer`` with ``cfg``'s learning rate, momentum and weight decay."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _optimizer(model: nn.Module, spec: OptimizerSpec | None, cfg: TrainConfig) -> torch.optim.Optimizer:
    if spec is None:
        return make_optimizer(model, cfg)
    if isinstance(spec, str):
        return make_optimizer(model, replace(cfg, optimizer=spec))
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    return spec(model.parameters())


def _scheduler(opt: torch.optim.Optimizer, spec: SchedulerSpec | None, cfg: TrainConfig) -> Any:
    if spec is None:
        return torch.optim.lr_scheduler.StepLR(opt, cfg.lr_step, cfg.lr_gamma) if cfg.lr_step else None
    if isinstance(spec, torch.optim.lr_scheduler.LRScheduler):
        return spec
    return spec(opt)


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: Tensor, *, batch_size: int = 1024, device: torch.device | str | None = None
) -> Tensor:
    """Logits of ``model`` on ``x`` in evaluation mode, batched; returned on ``x``'s device."""
    device = torch.device(device) if device is not None else model_device(model)
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


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    config: TrainConfig = TrainConfig(),
    loss: Loss | None = None,
    optimizer: OptimizerSpec | None = None,
    scheduler: SchedulerSpec | None = None,
    streams: Mapping[str, Tensor] | None = None,
    stream_batch_size: int | None = None,
    batches: Batches | None = None,
    generator: torch.Generator | None = None,
    augment: Augment | None = None,
    shuffle: bool = True,
    val: tuple[Tensor, Tensor] | None = None,
    device: torch.device | str | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool | str = False,
) -> TrainHistory:
    """Train ``model`` in place on ``(x, y)`` for ``config.epochs`` epochs and return its history.

    - ``y``: class indices ``(N,)`` or soft labels ``(N, K)``; ``loss`` defaults to :class:`CrossEntropy`.
    - ``optimizer``: ``None`` (``config.optimizer`` with ``config``'s lr, momentum, weight decay), a name,
      an optimiser object or a factory ``params -> optimizer``; ``scheduler``: ``None`` (``StepLR`` when
      ``config.lr_step``), a scheduler or a factory ``optimizer -> scheduler``.
    - ``streams``: extra tensors the loss reads by name (``loss.streams``); each step draws a batch of
      ``stream_batch_size`` (default ``config.batch_size``) rows of each, cycling through fresh permutations
      on a generator split off ``generator``.
    - ``batches``: where the mini-batches come from (default :class:`ShuffledBatches` of ``(x, y)`` with
      ``augment`` and ``shuffle``; Opacus' Poisson-sampled loader for DP-SGD).
    - ``val=(x_val, y_val)``: the weights of the epoch with the best validation accuracy are kept (model
      selection on validation data, never on the test split).
    - ``callbacks``: :class:`Callback` hooks; ``progress`` adds a :class:`ProgressBar` (a string names it).

    Example::

        history = train(model, x, y, config=TrainConfig(epochs=10), val=(x_val, y_val), progress=True)
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    if len(x) == 0:
        raise ValueError("cannot train on an empty transfer set")
    loss = loss if loss is not None else CrossEntropy()
    streams = dict(streams or {})
    missing = [s for s in loss.streams if s not in streams]
    if missing:
        raise ValueError(f"the loss {loss!r} reads batch stream(s) {', '.join(missing)}, which were not given")
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    samplers: dict[str, _Stream] = {}
    if loss.streams:
        stream_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        sbs = stream_batch_size or config.batch_size
        samplers = {s: _Stream(streams[s], batch_size=sbs, generator=stream_gen) for s in loss.streams}
    opt = _optimizer(model, optimizer, config)
    sched = _scheduler(opt, scheduler, config)
    if batches is None:
        batches = ShuffledBatches(x, y, batch_size=config.batch_size, generator=generator, augment=augment,
                                  shuffle=shuffle)
    callbacks = list(callbacks)
    if progress:
        callbacks.append(ProgressBar(progress if isinstance(progress, str) else "train"))
    history = TrainHistory()
    state = TrainState(model=model, optimizer=opt, history=history, epochs=config.epochs)
    selected = unwrap(model)
    best_acc, best_state = -1.0, None
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    for cb in callbacks:
        cb.on_train_begin(state)
    try:
        for epoch in range(config.epochs):
            state.epoch = epoch
            model.train()
            total, seen = torch.zeros((), dtype=acc_dtype, device=device), 0
            for batch in batches.epoch(epoch):
                xb, yb = batch[0].to(device), batch[1].to(device)
                extra = {name: s.next().to(device) for name, s in samplers.items()}
                if len(batch) > 2:  # the batch's own extras (EWE marks its watermark batches this way)
                    extra.update({name: t.to(device) for name, t in batch[2].items()})
                value = loss(model, xb, yb, extra)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                if len(xb):  # summed on the device: no host round trip per step (one per epoch, below)
                    state.last_loss = value.detach()
                    total = total + state.last_loss.to(acc_dtype) * len(xb)
                    seen += len(xb)
                state.step += 1
                for cb in callbacks:
                    cb.on_step(state)
            if sched is not None:
                sched.step()
            history.loss.append(float(total) / seen if seen else math.nan)
            history.steps = state.step
            if val is not None:
                acc = accuracy(selected, *val, device=device)
                history.val_accuracy.append(acc)
                if acc > best_acc:
                    best_acc, best_state, history.best_epoch = acc, copy.deepcopy(selected.state_dict()), epoch
            for cb in callbacks:
                cb.on_epoch_end(state)
            if state.stop:
                break
    finally:
        for cb in callbacks:
            cb.on_train_end(state)
    if best_state is not None:
        selected.load_state_dict(best_state)
    model.eval()
    return history
