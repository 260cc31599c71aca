"""The ownership contract: a :class:`Verifier` asks a suspect model questions and returns a :class:`Verdict`.

A verifier is built with its options (keyword-only, ``alpha`` the test's level), learns what it needs from the
victim in :meth:`Verifier.fit` (DAWN: the recorded watermarked queries; EWE: the trigger set; dataset
inference: the confidence regressor), then :meth:`Verifier.verify` queries a suspect — anything that answers
queries: an in-process clone, a checkpoint wrapped in a :class:`~modelsteal.PredictionAPI`, a URL through
:class:`~modelsteal.serve.client.HTTPBlackBox` — within a query budget and returns the p-value of a test whose
null hypothesis is "the suspect is independent of the victim". ``stolen`` is ``p_value < alpha``.

The base class does the bookkeeping: the level, the victim's shape (:meth:`Verifier.bind`, also done by
:meth:`Verifier.fit`), the suspect's shape check, the budget check (a budget too small for the test ever to
reach ``alpha`` is a one-line ``ValueError`` before any query), the counting of queries
(:meth:`Verifier.budgeted`) and the assembly of the :class:`Verdict` (:meth:`Verifier.verdict`). Subclasses
hold the algorithm. ``modelsteal verify`` builds a verifier from its options (or, for one whose secret lives in
the victim's checkpoint, such as EWE's triggers, with its classmethod ``from_checkpoint(path, device=…,
**options)``, which returns it fitted), binds it, checks the suspect and the budget, and only then fits and
verifies.

Example (a subclass)::

    @register_verifier("my-test")
    class MyVerifier(Verifier):
        example_options = {"alpha": 0.05}

        def min_queries(self):
            return binomial_min_queries(0.1, alpha=self.alpha)   # n agreements of n must beat alpha

        def verify(self, suspect, *, budget, seed=0):
            box = self.check_suspect(suspect)                      # refuses another task, or no fit
            box = self.budgeted(box, budget=self.check_budget(budget))
            agree = (box.query(x_key).argmax(1) == y_key).float()  # box.used counts the queries
            p = float(binom.sf(int(agree.sum()) - 1, len(agree), 0.1))
            return self.verdict(p_value=p, queries=box.used, evidence=agree)

    v = make_verifier("my-test", alpha=0.01).fit(victim)
    verdict = v.verify(suspect, budget=1000, seed=0)
    verdict.p_value, verdict.stolen, verdict.queries, verdict.to_dict()
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from modelsteal._registry import Registry
from modelsteal.blackbox import BlackBox, PredictionAPI, QueryBudget
from modelsteal.data.registry import DatasetSplits


class NotFittedError(ValueError):
    """A verifier was asked to verify before :meth:`Verifier.fit` (its watermark, records or regressor are
    missing)."""


def check_alpha(value: float) -> float:
    """``value`` as a float in the open interval (0, 1); a one-line ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"alpha must be a number in (0, 1), got {value!r}")
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {value}")
    return v


def binomial_min_queries(p0: float, *, alpha: float) -> int:
    """The fewest trials ``n`` for which an exact one-sided binomial test with chance rate ``p0`` can reach
    ``alpha``: even ``n`` successes out of ``n`` have probability ``p0**n`` under the null, so ``n`` is the
    smallest integer with ``p0**n < alpha``."""
    if not 0.0 < p0 < 1.0:
        raise ValueError(f"chance rate must be in (0, 1), got {p0}")
    return max(1, math.floor(math.log(alpha) / math.log(p0)) + 1)


def _json_safe(value: Any) -> Any:
    """Tensors, NumPy values and tuples as plain lists and numbers; non-finite floats as ``None``."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().tolist()
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # NumPy arrays and scalars
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def _as_list(evidence: Any) -> list[float]:
    if isinstance(evidence, Tensor):
        return evidence.detach().double().cpu().flatten().tolist()
    return list(evidence)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one verification.

    ``method``: the verifier's name; ``p_value``: the test's p-value (or exact bound) under the null "the
    suspect is independent of the victim"; ``alpha``: the level; ``stolen``: ``p_value < alpha`` (computed);
    ``queries``: the queries spent on the suspect; ``evidence``: per-sample scores (DAWN: agreement with each
    wrong label; dataset inference: each sample's regressor score); ``details``: the test's other numbers.
    """

    method: str
    p_value: float
    alpha: float
    queries: int
    evidence: tuple[float, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)
    stolen: bool = field(init=False)

    def __post_init__(self) -> None:
        p = float(self.p_value)
        if not (0.0 <= p <= 1.0 or math.isnan(p)):
            raise ValueError(f"p_value must be in [0, 1], got {self.p_value}")
        object.__setattr__(self, "p_value", p)
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        object.__setattr__(self, "queries", int(self.queries))
        object.__setattr__(self, "evidence", tuple(float(e) for e in _as_list(self.evidence)))
        object.__setattr__(self, "details", dict(self.details))
        object.__setattr__(self, "stolen", bool(p < self.alpha))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dictionary (``json.dumps`` takes it as is; NaN becomes ``None``)."""
        return _json_safe({"method": self.method, "p_value": self.p_value, "alpha": self.alpha,
                           "stolen": self.stolen, "queries": self.queries, "evidence": list(self.evidence),
                           "details": dict(self.details)})

    def summary(self) -> str:
        """One line: ``dawn: p = 1.2e-09 < alpha = 0.05 -> stolen (200 queries)``."""
        rel, word = ("<", "stolen") if self.stolen else (">=", "not shown stolen")
        return f"{self.method}: p = {self.p_value:.3g} {rel} alpha = {self.alpha:g} -> {word} ({self.queries} queries)"


def as_suspect(suspect: BlackBox | nn.Module) -> BlackBox:
    """A suspect as a :class:`BlackBox`: a model becomes a :class:`PredictionAPI` answering posteriors."""
    if isinstance(suspect, nn.Module):
        return PredictionAPI(suspect)
    if not isinstance(suspect, BlackBox):
        raise ValueError(f"a suspect must answer queries (a BlackBox or an nn.Module), got {type(suspect).__name__}")
    return suspect


class Verifier(ABC):
    """Decides whether a suspect model was derived from the victim, by a test at level ``alpha``.

    Class attributes: ``name`` (registry name, ``--method dawn``), ``example_options`` (valid constructor
    options the generic tests build the verifier with), ``needs_data`` (whether :meth:`fit` needs the victim's
    data splits: dataset inference's regressor does).
    """

    name: ClassVar[str] = ""
    #: the test's null hypothesis in words (printed by ``modelsteal verify`` and recorded in each verdict)
    null_hypothesis: ClassVar[str] = "the suspect is independent of the victim"
    example_options: ClassVar[dict[str, Any]] = {}
    needs_data: ClassVar[bool] = False

    def __init__(self, *, alpha: float = 0.05) -> None:
        self.alpha = check_alpha(alpha)
        self.victim: nn.Module | BlackBox | None = None
        self.input_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = None
        self._fitted = False
        self.commitments: dict[str, str] | None = None
        self.commitment_checked = False

    def commit(self, commitments: Mapping[str, str] | None) -> Verifier:
        """The victim's commitments (its checkpoint's ``meta["commitments"]``,
        :mod:`modelsteal.ownership.commitments`): :meth:`fit` then refuses evidence that does not match them.
        Returns ``self``."""
        self.commitments = None if commitments is None else {str(k): str(v) for k, v in commitments.items()}
        return self

    # -- fitting -------------------------------------------------------------------------------------
    def bind(self, victim: nn.Module | BlackBox) -> None:
        """Record the victim and its shape (``input_shape``, ``num_classes``) without learning anything, so
        that :meth:`check_suspect` (with ``fitted=False``) and :meth:`check_budget` can run before an
        expensive :meth:`fit`."""
        shape = tuple(getattr(victim, "input_shape", ()) or ())
        classes = int(getattr(victim, "num_classes", 0) or 0)
        if not shape or not classes:
            raise ValueError(f"verifier {self.name!r} needs a victim with input_shape and num_classes "
                             "(a model from build_model or a BlackBox)")
        self.victim, self.input_shape, self.num_classes = victim, shape, classes

    def fit(self, victim: nn.Module | BlackBox, *, data: DatasetSplits | None = None,
            generator: torch.Generator | None = None) -> Verifier:
        """Learn what the test needs from the victim (and its ``data`` for verifiers with ``needs_data``);
        returns ``self``. A failed fit leaves the verifier unfitted."""
        if self.needs_data and data is None:
            raise ValueError(f"verifier {self.name!r} learns from the victim's data splits: pass data=")
        self.bind(victim)
        self._fitted = False
        try:
            self._fit(victim, data=data, generator=generator)
        except BaseException:
            self.victim = self.input_shape = self.num_classes = None
            raise
        self._fitted = True
        return self

    def _fit(self, victim: nn.Module | BlackBox, *, data: DatasetSplits | None,  # noqa: B027
             generator: torch.Generator | None) -> None:
        """What the subclass learns; the default learns nothing."""

    @property
    def fitted(self) -> bool:
        return self._fitted

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError(f"verifier {self.name!r} is used before it was fitted: call fit(victim)")

    def calibrate(self, references: Sequence[BlackBox | nn.Module]) -> float:
        """Estimate the test's null from independent reference models (each verifier's own statistic, an
        upper bound: :mod:`modelsteal.ownership.null`); returns the null parameter. The default refuses."""
        raise ValueError(f"verifier {self.name!r} has no null estimated from reference models")

    # -- checks --------------------------------------------------------------------------------------
    def check_suspect(self, suspect: BlackBox | nn.Module, *, fitted: bool = True) -> BlackBox:
        """The suspect as a :class:`BlackBox`, refused in one line when its classes or input shape differ
        from the victim's, or when the verifier is not fitted (with ``fitted=False``: not bound, see
        :meth:`bind`)."""
        if fitted or self.input_shape is None:
            self._require_fitted()
        box = as_suspect(suspect)
        if int(box.num_classes) != self.num_classes or tuple(box.input_shape) != self.input_shape:
            raise ValueError(
                f"suspect answers {box.num_classes} classes for inputs {tuple(box.input_shape)}, but the victim "
                f"has {self.num_classes} classes for inputs {self.input_shape}: a suspect must solve the same task")
        return box

    def min_queries(self) -> int:
        """The fewest queries for which the test can reach ``alpha`` (even with the strongest evidence); it may
        depend on the victim's shape (:meth:`bind`) but not on :meth:`fit`. Subclasses with a known bound
        override it (the default, 1, checks nothing)."""
        return 1

    def budget_breakdown(self) -> str:
        """What :meth:`min_queries` is made of, in words, for the budget message (default: nothing)."""
        return ""

    def check_budget(self, budget: int) -> int:
        """``budget`` as an int, refused in one line when it is below :meth:`min_queries`."""
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be a positive integer, got {budget!r}")
        need = self.min_queries()
        if budget < need:
            why = self.budget_breakdown()
            raise ValueError(f"verifier {self.name!r} needs a budget of at least {need} queries for its test to "
                             f"reach alpha={self.alpha:g}{f' ({why})' if why else ''}; got {budget}")
        return int(budget)

    def budgeted(self, suspect: BlackBox, *, budget: int) -> QueryBudget:
        """``suspect`` behind a :class:`QueryBudget`: refuses to exceed ``budget``; ``.used`` counts queries."""
        return QueryBudget(suspect, budget=budget, client=f"verify-{self.name or 'ownership'}")

    # -- the test ------------------------------------------------------------------------------------
    @abstractmethod
    def verify(self, suspect: BlackBox, *, budget: int, seed: int = 0) -> Verdict:
        """Query ``suspect`` (at most ``budget`` queries, randomness from ``seed``) and return the verdict."""

    def verdict(self, *, p_value: float, queries: int, evidence: Tensor | Sequence[float] = (),
                **details: Any) -> Verdict:
        """A :class:`Verdict` for this verifier's name and level."""
        details.setdefault("commitment", "checked" if self.commitment_checked else "none (the claim is unbound)")
        return Verdict(method=self.name or type(self).__name__, p_value=p_value, alpha=self.alpha,
                       queries=queries, evidence=evidence, details=details)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha:g}{'' if self.fitted else ', unfitted'})"


_VERIFIERS: Registry[type[Verifier]] = Registry("verifier", package="modelsteal.ownership")


def register_verifier(name: str) -> Callable[[type[Verifier]], type[Verifier]]:
    """Class decorator adding a verifier to the registry under ``name``."""
    return _VERIFIERS.register(name)


def available_verifiers() -> list[str]:
    """Names of every registered verifier."""
    return _VERIFIERS.names()


def verifier_class(name: str) -> type[Verifier]:
    """The verifier class registered under ``name`` (``ValueError`` naming the known ones otherwise)."""
    return _VERIFIERS.get(name)


def make_verifier(name: str, **options: Any) -> Verifier:
    """Build the verifier ``name`` with ``options`` (checked against its constructor: a wrong one is a one-line
    ``ValueError`` listing the valid ones)."""
    return _VERIFIERS.build(name, **options)
