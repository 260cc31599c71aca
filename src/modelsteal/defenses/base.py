"""Defense base class and the name registry used by the CLI, sweeps and the server.

A :class:`Defense` maps a batch ``(x, probs)`` of inputs and undefended posteriors to defended posteriors.
Rows must stay on the probability simplex; the base class checks that after every call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, final

import torch
from torch import Tensor, nn

from modelsteal._registry import Registry
from modelsteal._simplex import check_simplex
from modelsteal.data.registry import DatasetSplits


class Defense(ABC):
    """A posterior perturbation ``ỹ = D(x, y)``.

    Subclasses implement :meth:`perturb`; class attributes tell the rest of the toolkit about them:

    - ``name``: registry name (``defense: mad`` in YAML, ``--defense mad`` on the CLI);
    - ``strength_param``: the keyword a sweep varies (``epsilon`` for MAD, ``beta`` for reverse sigmoid);
    - ``preserves_argmax``: whether every answer keeps the undefended top-1 label;
    - ``budget_norm``: ``"l1"``/``"l2"`` when the defense promises ``||ỹ - y|| <= strength`` in that norm.
    - ``example_strength``: a valid, non-trivial ``strength`` (the generic tests build each defense with it).
    - ``uses_input``: whether :meth:`perturb` reads the inputs ``x`` (MAD's Jacobian does); ART's postprocessors
      see only posteriors, so :mod:`modelsteal.interop.art` wraps such defenses around the estimator instead.
    - ``needs_fit``: whether :meth:`fit` must run (on the victim and its data) before the first query.
    - ``stateful``: whether an answer depends on, or is recorded for, its client (DAWN's per-client records);
      a server's batcher calls such a defense once per request, any other once per batch of many clients.

    Defenses that need the victim (MAD's default surrogate is a random copy of it) receive it in
    :meth:`bind`, which :class:`~modelsteal.PredictionAPI` calls once. Defenses that must learn something from
    the victim and its training data first (Adaptive Misinformation's misinformation model) set ``needs_fit``
    (instances may override it) and train in :meth:`fit`, which the caller runs once before serving (a sweep
    fits once per defense and options and shares the result across strengths, see :meth:`fitted_options`).
    """

    name: ClassVar[str] = ""
    strength_param: ClassVar[str | None] = None
    preserves_argmax: ClassVar[bool] = False
    example_strength: ClassVar[float | None] = None
    uses_input: ClassVar[bool] = False
    needs_fit: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    @property
    def budget_norm(self) -> str | None:
        return None

    @property
    def strength(self) -> float | None:
        return None if self.strength_param is None else getattr(self, self.strength_param)

    def bind(self, model: nn.Module, *, input_shape: Sequence[int], num_classes: int) -> None:  # noqa: B027
        """Called once with the victim model before the first query; the default ignores it."""

    def fit(self, victim: nn.Module, data: DatasetSplits, *, generator: torch.Generator | None = None) -> None:  # noqa: B027
        """Learn what the defense needs from the victim and its training splits ``data`` (``generator`` seeds
        the training; ``None``: the defense's own seed). Called once, before the first query, when
        ``needs_fit`` is set; the default does nothing."""

    def fitted_options(self) -> dict[str, Any]:
        """Constructor options that carry what :meth:`fit` learned (AM: ``{"misinformation": f̂}``), so that the
        same defense built with them at another strength needs no fit; the default has none."""
        return {}

    def take_new_records(self, client: str) -> dict[str, Any] | None:
        """What answering ``client`` recorded since the last call, JSON-safe, for the server to store with the
        request (DAWN: the watermarked queries and their wrong labels); ``None`` when nothing was recorded —
        always, for a defense that keeps no records (the default)."""
        return None

    def check_classes(self, num_classes: int) -> None:  # noqa: B027
        """A one-line ``ValueError`` when this defense cannot answer for a model with ``num_classes`` classes
        (top-k with ``k`` above it); a sweep asks before it trains the victim. The default accepts any."""

    @final
    def __call__(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        if probs.ndim != 2 or x.shape[0] != probs.shape[0]:
            raise ValueError(
                f"defense expects x with N rows and probs of shape (N, K); "
                f"got {tuple(x.shape)} and {tuple(probs.shape)}"
            )
        out = self.perturb(x, probs, client=client)
        return check_simplex(out, like=probs)

    @abstractmethod
    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        """Return defended posteriors of the same shape as ``probs``."""

    def __repr__(self) -> str:
        s = self.strength
        return f"{type(self).__name__}({self.strength_param}={s})" if s is not None else f"{type(self).__name__}()"


_DEFENSES: Registry[type[Defense]] = Registry("defense", package="modelsteal.defenses")


def register_defense(name: str) -> Callable[[type[Defense]], type[Defense]]:
    """Class decorator adding a defense to the registry under ``name``."""
    return _DEFENSES.register(name)


def available_defenses() -> list[str]:
    """Names of every registered defense."""
    return _DEFENSES.names()


def defense_class(name: str) -> type[Defense]:
    """The defense class registered under ``name`` (``ValueError`` naming the known ones otherwise)."""
    return _DEFENSES.get(name)


def fit_defense(defense: Defense | None, victim: nn.Module, *, dataset: str | None, seed: int = 0) -> None:
    """Fit a defense that needs it (``needs_fit``: Adaptive Misinformation's f̂) on the training split of the
    victim's own dataset, the one its checkpoint names; nothing to do for any other defense. This is what
    ``modelsteal attack --defense am`` and ``modelsteal serve --defense am`` do before the first query."""
    if defense is None or not defense.needs_fit:
        return
    if not dataset:
        raise ValueError(f"defense {defense.name!r} trains on the victim's training data, but the checkpoint does "
                         "not name its dataset; fit it from Python (defense.fit(victim, data))")
    from modelsteal.data import load_dataset

    defense.fit(victim, load_dataset(dataset, seed=seed), generator=torch.Generator().manual_seed(seed))


def strength_hint(cls: type[Defense]) -> str:
    """How to give a defense's strength on the command line: ``pass --strength E (MAD's epsilon)``."""
    param = cls.strength_param or "strength"
    return f"pass --strength {param[0].upper()} ({cls.__name__}'s {param})"


def defense_options(
    name: str, *, strength: float | None = None, options: Mapping[str, Any] | None = None, hint: str | None = None
) -> tuple[type[Defense], dict[str, Any]]:
    """The class registered under ``name`` and the keyword arguments that build it, checked against its
    constructor (nothing is built): ``strength`` fills the class's ``strength_param``; ``hint`` says how to give
    a missing strength (default: :func:`strength_hint`). A ``ValueError`` names a wrong option and the valid ones.
    """
    cls = defense_class(name)
    kwargs = dict(options or {})
    if strength is not None:
        if cls.strength_param is None:
            raise ValueError(f"defense {cls.name!r} has no strength parameter; got strength={strength}")
        if cls.strength_param in kwargs:
            raise ValueError(f"defense {cls.name!r}: give {cls.strength_param} once, as the strength or as an option")
        kwargs[cls.strength_param] = strength
    hints = {cls.strength_param: hint or strength_hint(cls)} if cls.strength_param else None
    _DEFENSES.check_options(cls.name, kwargs, hints=hints)
    return cls, kwargs


def make_defense(name: str, *, strength: float | None = None, **options: Any) -> Defense | None:
    """Build a registered defense by name; ``strength`` fills the class's ``strength_param``.

    ``"none"`` returns ``None`` (no defense). Unknown names and options give a ``ValueError`` listing
    what is accepted (checked before the constructor runs, see :func:`defense_options`).
    """
    if name.strip().lower() in ("none", "undefended"):
        if strength is not None or options:
            given = ", ".join((["strength"] if strength is not None else []) + sorted(options))
            raise ValueError(f"defense {name!r} takes no strength or options, got {given}")
        return None
    cls, kwargs = defense_options(name, strength=strength, options=options)
    return cls(**kwargs)


def as_float(x: Tensor) -> Tensor:
    """Promote half precision to float32 for the defense arithmetic, keep float64 as is."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
