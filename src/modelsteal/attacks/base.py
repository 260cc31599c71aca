"""Attack base class: configured once, aimed at any :class:`~modelsteal.BlackBox`.

The base class does the bookkeeping — budget enforcement through :class:`~modelsteal.QueryBudget`,
seeding, the query loop and result assembly — so an attack file only holds its algorithm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch
from torch import Tensor, nn

from modelsteal._registry import Registry
from modelsteal.blackbox import BlackBox, QueryBudget, QueryRefusedError
from modelsteal.devices import resolve_device
from modelsteal.models import build_model, build_seeded
from modelsteal.training import TrainConfig
from modelsteal.training.loop import Callback

CloneFactory = Callable[[Sequence[int], int], nn.Module]


@dataclass
class CloneJob:
    """An attack's queries done, its clone not yet trained: what :meth:`Attack.collect` returns, so that the
    clones of several points sharing their query inputs can train together (:func:`steal_together`).

    ``x`` and ``targets`` are the clone's training set, ``generator`` the attack's generator in the state in
    which training would draw from it, ``finish(history)`` assembles the :class:`StealResult` once ``clone`` is
    trained (``history`` is ``None`` when nothing was trained)."""

    attack: Attack
    budget: QueryBudget
    clone: nn.Module
    x: Tensor
    targets: Tensor
    generator: torch.Generator
    finish: Callable[[Any], StealResult]

    def train_alone(self, *, on_epoch: Callable[[], None] | None = None) -> Any:
        """Train the clone by itself (:func:`~modelsteal.training.train`); its history, or ``None`` when the
        training set is empty (an untrained clone). ``on_epoch()`` runs after every epoch."""
        from modelsteal import training

        if len(self.x) == 0:
            return None
        a = self.attack
        hooks = [] if on_epoch is None else [_EpochHook(on_epoch)]
        return training.train(self.clone, self.x, self.targets, config=a.train_config, generator=self.generator,
                              device=a.device, progress="train clone" if a.progress else False, callbacks=hooks)

    def result(self, history: Any) -> StealResult:
        result = self.finish(history)
        result.queries = self.budget.used
        return result


@dataclass
class StealResult:
    """What an attack produced: the clone, the transfer set it was trained on and the queries spent."""

    clone: nn.Module
    queries: int
    transfer_x: Tensor | None = None
    transfer_y: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartialResult:
    """What an attack had bought when the API refused it (:class:`~modelsteal.QueryRefusedError` ``.partial``):
    the ``queries`` answered of its ``budget``, their inputs and answers (no clone is trained)."""

    queries: int
    budget: int
    transfer_x: Tensor
    transfer_y: Tensor


def _refused(e: QueryRefusedError, budgeted: QueryBudget) -> QueryRefusedError:
    """``e`` with what was bought through ``budgeted`` attached as ``e.partial``."""
    x, y = budgeted.answered()
    e.partial = PartialResult(queries=budgeted.used, budget=budgeted.budget, transfer_x=x, transfer_y=y)
    return e


class Attack(ABC):
    """Base class for model-stealing attacks.

    Subclasses implement :meth:`run`, which receives the victim wrapped in a :class:`QueryBudget` (so it
    cannot overspend) and a seeded ``torch.Generator``. Options shared by every learning-based attack:

    - ``clone``: an architecture name for :func:`~modelsteal.models.build_model` or a factory
      ``(input_shape, num_classes) -> nn.Module`` (the paper uses the victim's architecture);
    - ``train``: a :class:`TrainConfig` (SGD lr 0.1 momentum 0.5 by default; ``optimizer="adam"`` is one
      of the attacker's countermeasures);
    - ``labels``: ``"soft"`` trains on the returned posteriors, ``"argmax"`` on their top-1 labels only;
    - ``device``: where the clone trains (default ``auto``: CUDA when present, else the CPU).
    """

    name: ClassVar[str] = ""
    #: what the attack queries: ``"images"`` (transfer sets and seed sets, usable in sweeps and
    #: ``modelsteal attack``) or ``"tabular"`` (a feature space; ``modelsteal tramer``).
    modality: ClassVar[str] = "images"
    #: keys of ``StealResult.info`` worth a column of their own in a sweep's ``results.csv`` (e.g. how many
    #: answers a filtering attacker kept)
    reported_info: ClassVar[tuple[str, ...]] = ()
    #: whether the attack's queries are fixed by its data, budget and seed alone (never by the answers), and it
    #: implements :meth:`collect`: then the clones of points that differ only in the defense can train in one
    #: stacked pass (:func:`steal_together`, ``modelsteal sweep --stack-clones``)
    stackable: ClassVar[bool] = False

    def __init__(
        self,
        *,
        clone: str | CloneFactory = "lenet",
        train: TrainConfig | None = None,
        labels: str = "soft",
        query_batch_size: int = 256,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        if labels not in ("soft", "argmax"):
            raise ValueError(f"labels must be 'soft' or 'argmax', got {labels!r}")
        if query_batch_size < 1:
            raise ValueError(f"query_batch_size must be >= 1, got {query_batch_size}")
        self.clone_spec = clone
        self.train_config = train if train is not None else TrainConfig()
        self.labels = labels
        self.query_batch_size = query_batch_size
        self.device = resolve_device(device)  # None or "auto": CUDA when present
        self.progress = progress

    @final
    def __call__(self, victim: BlackBox, *, budget: int, seed: int = 0) -> StealResult:
        """Steal ``victim`` with at most ``budget`` queries; the same seed gives the same clone. When the API
        refuses a batch (a detector's ``refuse`` response), the :class:`~modelsteal.QueryRefusedError` carries
        what was bought so far as ``.partial`` (:class:`PartialResult`)."""
        if budget < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        budgeted = QueryBudget(victim, budget=budget, keep=True)
        generator = torch.Generator().manual_seed(int(seed))
        try:
            result = self.run(budgeted, generator=generator)
        except QueryRefusedError as e:  # the caller learns what was bought before the refusal
            raise _refused(e, budgeted) from None
        result.queries = budgeted.used  # never above budget: QueryBudget refuses a batch that would exceed it
        return result

    @abstractmethod
    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        """The attack itself; ``victim.remaining`` tells how many queries are left."""

    #: ``collect(victim: QueryBudget, *, generator) -> CloneJob``, the attack up to the clone's training; every
    #: :attr:`stackable` attack defines it (checked when the class is made) and its ``run`` is ``collect``
    #: followed by training and ``finish``; the others have none
    collect: Callable[..., CloneJob] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.stackable and cls.collect is None:
            raise TypeError(f"{cls.__name__} is stackable but defines no collect(victim, *, generator) -> CloneJob")

    @final
    def begin(self, victim: BlackBox, *, budget: int, seed: int = 0) -> CloneJob:
        """:meth:`collect` under the same budget and seeding as :meth:`__call__` (stackable attacks only)."""
        if not self.stackable or self.collect is None:
            raise TypeError(f"attack {self.name!r} is not stackable: its clone's training cannot be handed over to a "
                            "stacked pass (see Attack.stackable); call the attack itself")
        if budget < 1:
            raise ValueError(f"budget must be >= 1, got {budget}")
        budgeted = QueryBudget(victim, budget=budget, keep=True)
        try:
            return self.collect(budgeted, generator=torch.Generator().manual_seed(int(seed)))
        except QueryRefusedError as e:
            raise _refused(e, budgeted) from None

    # -- helpers shared by subclasses ----------------------------------------------------------------
    def make_clone(self, victim: BlackBox, *, generator: torch.Generator) -> nn.Module:
        """A fresh clone for ``victim``'s input shape and classes, seeded from ``generator``."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        if callable(self.clone_spec):
            spec = self.clone_spec
            model = build_seeded(lambda: spec(victim.input_shape, victim.num_classes), seed=seed)
        else:
            model = build_model(
                self.clone_spec,
                input_shape=victim.input_shape,
                num_classes=victim.num_classes,
                mean=[0.5] * victim.input_shape[0] if len(victim.input_shape) == 3 else None,
                std=[0.5] * victim.input_shape[0] if len(victim.input_shape) == 3 else None,
                seed=seed,
            )
        return model.to(self.device)

    def query_all(self, victim: QueryBudget, x: Tensor) -> Tensor:
        """Query ``x`` in batches of ``query_batch_size`` and return the answers on the CPU."""
        batches = x.split(self.query_batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="query", leave=False)
        out = [victim.query(xb).detach().cpu() for xb in batches]
        return torch.cat(out) if out else torch.empty(0, victim.num_classes)

    def targets(self, answers: Tensor) -> Tensor:
        """Training targets from API answers: soft posteriors, or argmax class indices."""
        return answers.argmax(dim=1) if self.labels == "argmax" else answers

    def describe(self) -> dict[str, Any]:
        return {"attack": self.name, "labels": self.labels, "clone": str(self.clone_spec)}


def _same_training(jobs: Sequence[CloneJob]) -> bool:
    """Whether ``jobs`` would train identically but for their targets: same inputs, generator state, training
    settings and device, targets of one kind, and clones that :func:`~modelsteal.training.can_stack`."""
    from modelsteal.training.stacked import can_stack

    first = jobs[0]
    return (
        len(first.x) > 0
        and can_stack([j.clone for j in jobs])
        and all(
            j.attack.train_config == first.attack.train_config
            and j.attack.device == first.attack.device
            and j.targets.ndim == first.targets.ndim
            and j.x.shape == first.x.shape
            and torch.equal(j.x, first.x)
            and torch.equal(j.generator.get_state(), first.generator.get_state())
            for j in jobs[1:]
        )
    )


class _EpochHook(Callback):
    """A training callback calling ``fn()`` after each epoch."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, state: Any) -> None:
        self.fn()


def steal_together(jobs: Sequence[CloneJob], *, on_epoch: Callable[[int], None] | None = None
                   ) -> tuple[list[StealResult], bool]:
    """Finish the :class:`CloneJob` s of several points: their clones trained in one stacked pass
    (:func:`~modelsteal.training.train_stacked`) when they share inputs, batch order and settings, else one by
    one; returns the results and whether they were stacked. ``on_epoch(n)`` runs after every epoch, ``n`` the
    clones that epoch trained (all of them when stacked, else 1): a sweep's per-clone progress."""
    from modelsteal.training.stacked import train_stacked

    if len(jobs) > 1 and _same_training(jobs):
        a = jobs[0].attack
        histories = train_stacked([j.clone for j in jobs], jobs[0].x, [j.targets for j in jobs],
                                  config=a.train_config, generator=jobs[0].generator, device=a.device,
                                  progress=f"train {len(jobs)} stacked clones" if a.progress else False,
                                  on_epoch=None if on_epoch is None else (lambda: on_epoch(len(jobs))))
        return [j.result(h) for j, h in zip(jobs, histories, strict=True)], True
    return [j.result(j.train_alone(on_epoch=None if on_epoch is None else (lambda: on_epoch(1)))) for j in jobs], False


_ATTACKS: Registry[type[Attack]] = Registry("attack", package="modelsteal.attacks")


def register_attack(name: str) -> Callable[[type[Attack]], type[Attack]]:
    """Class decorator adding an attack to the registry (``attack: knockoff`` in sweep configs)."""
    return _ATTACKS.register(name)


def available_attacks() -> list[str]:
    """Names of every registered attack."""
    return _ATTACKS.names()


def image_attacks() -> list[str]:
    """Registered attacks that steal image classifiers from transfer or seed sets."""
    return [a for a in available_attacks() if _ATTACKS.get(a).modality == "images"]


def attack_class(name: str) -> type[Attack]:
    """The attack class registered under ``name`` (``ValueError`` naming the known ones otherwise)."""
    return _ATTACKS.get(name)
