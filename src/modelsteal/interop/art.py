"""Adversarial Robustness Toolbox (ART) interoperability, both ways (``pip install 'modelsteal[interop]'``).

Our defenses in front of ART estimators:

- :class:`DefensePostprocessor`: any :class:`~modelsteal.defenses.Defense` that reads only the posteriors
  (reverse sigmoid, top-k, rounding, label-only, random noise, MAD's ``identity``/``random`` ablations) as an
  ART ``Postprocessor``, for ``postprocessing_defences=`` of any ART estimator.
- :class:`DefendedClassifier`: any defense, including those that read the inputs ``x`` (MAD takes the
  surrogate's Jacobian at ``x``), around an ART classifier: ``predict(x) = defense(x, estimator.predict(x))``.

Why two shapes: ART calls a postprocessor as ``defence(preds)`` with the predictions only
(``BaseEstimator._apply_postprocessing`` in ``art/estimators/estimator.py``); the inputs never reach it, so a
defense with ``uses_input`` is refused there (running it on anything but ``x`` would silently answer wrong
posteriors) and has to wrap the estimator instead.

Our black boxes under ART's attacks:

- :class:`BlackBoxAdapter`: any :class:`~modelsteal.BlackBox` (an in-process
  :class:`~modelsteal.PredictionAPI`, a :class:`~modelsteal.serve.client.HTTPBlackBox`) as an ART
  ``BlackBoxClassifierNeuralNetwork``, so ``KnockoffNets``, ``CopycatCNN`` and
  ``FunctionallyEquivalentExtraction`` run against our APIs and servers. Every row ART asks for is one query
  of the black box (its own budget and ledger count it), and ``budget=`` adds a :class:`~modelsteal.QueryBudget`
  that refuses a ``predict`` call that would exceed it before anything is sent.

Example::

    from art.attacks.extraction import KnockoffNets
    from modelsteal.interop.art import BlackBoxAdapter

    victim = BlackBoxAdapter(PredictionAPI(model, defense=MAD(epsilon=0.5)), budget=1000)
    thief = KnockoffNets(victim, nb_stolen=1000, batch_size_query=256, use_probability=True)
    clone = thief.extract(pool, thieved_classifier=art_clone)       # victim.queries == 1000
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from modelsteal._extras import require_extra
from modelsteal._simplex import SimplexError, check_simplex
from modelsteal.blackbox import BlackBox, BudgetExceededError, QueryBudget
from modelsteal.defenses.base import Defense

_PURPOSE = "modelsteal.interop.art (ART adapters)"
_postprocessor = require_extra("art.defences.postprocessor", extra="interop", purpose=_PURPOSE)
_blackbox = require_extra("art.estimators.classification.blackbox", extra="interop", purpose=_PURPOSE)

__all__ = ["BlackBoxAdapter", "DefendedClassifier", "DefensePostprocessor", "EstimatorBlackBox"]


def _as_probs(preds: np.ndarray, *, from_logits: bool) -> Tensor:
    """An ART prediction array as posteriors: softmax of logits, or checked to lie on the simplex."""
    t = torch.from_numpy(np.ascontiguousarray(preds))
    if not t.is_floating_point():
        t = t.float()
    if from_logits:
        return torch.softmax(t, dim=1)
    try:
        return check_simplex(t)
    except SimplexError as e:
        raise ValueError(
            f"the estimator's outputs are not probabilities ({e}); ART's PyTorchClassifier returns the model's raw "
            "outputs (logits for modelsteal models): pass from_logits=True"
        ) from None


def _check_defense(defense: object) -> Defense:
    if not isinstance(defense, Defense):
        raise ValueError(f"expected a modelsteal Defense, got {type(defense).__name__}")
    return defense


class DefensePostprocessor(_postprocessor.Postprocessor):
    """A modelsteal defense that reads only posteriors, as an ART postprocessor.

    ``from_logits``: apply softmax to the estimator's outputs first (ART's ``PyTorchClassifier`` hands
    postprocessors the model's raw outputs, logits for every modelsteal model); without it the outputs must
    already be rows of probabilities. ``client`` names the caller for defenses with per-client state.
    The answers are the defended posteriors, in the dtype of ART's predictions.

    Defenses that read the inputs (``defense.uses_input``, e.g. :class:`~modelsteal.defenses.MAD`) raise
    ``ValueError``: ART never passes the inputs to a postprocessor; use :class:`DefendedClassifier`.

    Example::

        art_victim = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                       postprocessing_defences=DefensePostprocessor(ReverseSigmoid(beta=0.5),
                                                                                    from_logits=True))
    """

    params = ["from_logits", "client"]

    def __init__(
        self,
        defense: Defense,
        *,
        from_logits: bool = False,
        client: str = "default",
        apply_fit: bool = False,
        apply_predict: bool = True,
    ) -> None:
        defense = _check_defense(defense)
        if getattr(defense, "uses_input", False):
            raise ValueError(
                f"{defense!r} reads the inputs x, which ART never passes to a postprocessor (it sees the predictions "
                "only): wrap the estimator instead, DefendedClassifier(estimator, defense)"
            )
        super().__init__(is_fitted=True, apply_fit=apply_fit, apply_predict=apply_predict)
        self.defense = defense
        self.from_logits = bool(from_logits)
        self.client = client

    def __call__(self, preds: np.ndarray) -> np.ndarray:
        probs = _as_probs(preds, from_logits=self.from_logits)
        no_inputs = probs.new_empty((probs.shape[0], 0))  # the defense does not read x (uses_input is False)
        out = self.defense(no_inputs, probs, client=self.client)
        return out.detach().cpu().numpy().astype(preds.dtype, copy=False)

    def __repr__(self) -> str:
        return f"DefensePostprocessor({self.defense!r}, from_logits={self.from_logits})"


class BlackBoxAdapter(_blackbox.BlackBoxClassifierNeuralNetwork):
    """Any modelsteal :class:`~modelsteal.BlackBox` as an ART classifier (numpy in, posteriors out).

    Args:
        blackbox: a :class:`~modelsteal.PredictionAPI`, :class:`~modelsteal.serve.client.HTTPBlackBox`,
            :class:`~modelsteal.QueryBudget` or any object with ``input_shape``, ``num_classes`` and ``query``.
        budget: if given, the adapter's own :class:`~modelsteal.QueryBudget`: a ``predict`` call asking for
            more rows than are left raises :class:`~modelsteal.BudgetExceededError` before any query is sent.
        client: the client name passed to ``query`` (per-client budgets and detector state of a
            ``PredictionAPI``; an ``HTTPBlackBox`` identifies the client by its key instead).
        clip_values: ART's ``(min, max)`` feature range; by default the server's ``input_range`` for an
            ``HTTPBlackBox`` (from ``/v1/info``), else none.
        channels_first: ``False`` presents an image black box ``(C, H, W)`` to ART as ``(H, W, C)``: ART's
            arrays ``(N, H, W, C)`` are transposed to ``(N, C, H, W)`` before each query.

    ``nb_classes`` and ``input_shape`` come from the black box; ``queries`` counts the rows answered through
    this adapter. ``predict(x, batch_size)`` sends ``batch_size`` rows per ``query`` call (the black box may
    split them further: ``PredictionAPI.batch_size``, ``HTTPBlackBox.batch_size``), so give ART attacks a large
    ``batch_size_query`` (its default is 1: one HTTP request per row).
    """

    def __init__(
        self,
        blackbox: BlackBox,
        *,
        budget: int | None = None,
        client: str = "default",
        clip_values: tuple[float, float] | np.ndarray | None = None,
        channels_first: bool = True,
        preprocessing_defences: Any = None,
        postprocessing_defences: Any = None,
    ) -> None:
        if not all(hasattr(blackbox, a) for a in ("input_shape", "num_classes", "query")):
            raise ValueError(f"expected a modelsteal BlackBox (input_shape, num_classes, query), got "
                             f"{type(blackbox).__name__}")
        shape = tuple(int(s) for s in blackbox.input_shape)
        if not channels_first and len(shape) != 3:
            raise ValueError(f"channels_first=False needs images (C, H, W); the black box takes {shape}")
        if clip_values is None:
            clip_values = _input_range(blackbox)
        self.source = blackbox
        self._budget = None if budget is None else QueryBudget(blackbox, budget=budget, client=client)
        self.blackbox: BlackBox = self._budget or blackbox
        self.client = client
        self.queries = 0
        self._transpose = not channels_first
        super().__init__(
            predict_fn=self._answer,
            input_shape=shape if channels_first else shape[1:] + shape[:1],
            nb_classes=int(blackbox.num_classes),
            channels_first=channels_first,
            clip_values=clip_values,
            preprocessing_defences=preprocessing_defences,
            postprocessing_defences=postprocessing_defences,
        )

    def predict(self, x: np.ndarray, batch_size: int = 128, **kwargs: Any) -> np.ndarray:
        """Answers ``(N, nb_classes)`` for ``x`` ``(N, *input_shape)``: ``N`` queries of the black box."""
        x = np.asarray(x)
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"predict got shape {x.shape}; expected (N, {', '.join(map(str, self.input_shape))})")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError("ART asked to predict non-finite inputs (NaN or Inf); nothing was sent")
        b = self._budget
        if b is not None and x.shape[0] > b.budget - b.used:
            raise BudgetExceededError(
                f"ART asked for {x.shape[0]} queries with {b.budget - b.used} of the adapter's budget of "
                f"{b.budget} left"
            )
        return super().predict(x, batch_size=batch_size, **kwargs)

    @property
    def budget(self) -> int | None:
        """The adapter's own query budget (``None``: only the black box's own limits apply)."""
        return None if self._budget is None else self._budget.budget

    def _answer(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self._transpose:
            t = t.permute(0, 3, 1, 2).contiguous()
        out = self.blackbox.query(t, client=self.client)
        self.queries += int(t.shape[0])
        return out.detach().to("cpu", torch.float32).numpy()

    def __repr__(self) -> str:
        return f"BlackBoxAdapter({self.source!r}, budget={self.budget}, channels_first={not self._transpose})"


def _input_range(blackbox: object) -> tuple[float, float] | None:
    """The ``input_range`` an ``HTTPBlackBox`` read from ``/v1/info`` (also through a ``QueryBudget``)."""
    inner = getattr(blackbox, "blackbox", blackbox)
    info = getattr(blackbox, "info", None) or getattr(inner, "info", None)
    if isinstance(info, dict) and info.get("input_range") is not None:
        lo, hi = info["input_range"]
        return float(lo), float(hi)
    return None


class EstimatorBlackBox:
    """An ART classifier behind a modelsteal defense, as a modelsteal :class:`~modelsteal.BlackBox`.

    ``query(x)`` answers ``defense(x, p)`` with ``p`` the estimator's predictions on the same ``x`` (softmax
    first when ``from_logits``), so defenses that read the inputs get them. When the estimator holds a torch
    module (ART's ``PyTorchClassifier``), the defense is bound to it once (MAD's default surrogate is a random
    copy of it, fed the raw inputs: ART's ``preprocessing`` is not part of the module). Not counted: the
    adapter or the API in front of it counts.
    """

    def __init__(self, estimator: Any, defense: Defense, *, from_logits: bool = False, batch_size: int = 128) -> None:
        if not hasattr(estimator, "predict") or not hasattr(estimator, "nb_classes"):
            raise ValueError(f"expected an ART classifier, got {type(estimator).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.estimator = estimator
        self.defense = _check_defense(defense)
        self.from_logits = bool(from_logits)
        self.batch_size = int(batch_size)
        self.input_shape: tuple[int, ...] = tuple(int(s) for s in estimator.input_shape)
        self.num_classes = int(estimator.nb_classes)
        model = getattr(estimator, "model", None)
        if isinstance(model, nn.Module):
            defense.bind(model, input_shape=self.input_shape, num_classes=self.num_classes)

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        x = torch.as_tensor(x).detach().cpu()
        preds = self.estimator.predict(x.numpy(), batch_size=self.batch_size)
        probs = _as_probs(preds, from_logits=self.from_logits)
        return self.defense(x, probs, client=client)


class DefendedClassifier(BlackBoxAdapter):
    """An ART classifier answering ``defense(x, estimator.predict(x))``: any defense, including those that
    read ``x`` (MAD), in front of any ART classifier, for ART's attacks or users.

    ``from_logits``: softmax the estimator's outputs first (``PyTorchClassifier`` returns logits);
    ``clip_values`` and the channel layout are the estimator's. ``budget`` and ``client`` as in
    :class:`BlackBoxAdapter`.

    Example::

        defended = DefendedClassifier(PyTorchClassifier(model, ...), MAD(epsilon=0.5), from_logits=True)
        defended.predict(x)            # MAD's answers, ||ỹ − y||₁ ≤ 0.5 per row
    """

    def __init__(
        self,
        estimator: Any,
        defense: Defense,
        *,
        from_logits: bool = False,
        budget: int | None = None,
        client: str = "default",
        batch_size: int = 128,
    ) -> None:
        inner = EstimatorBlackBox(estimator, defense, from_logits=from_logits, batch_size=batch_size)
        super().__init__(inner, budget=budget, client=client, clip_values=getattr(estimator, "clip_values", None))
        self._channels_first = bool(getattr(estimator, "channels_first", True))  # the estimator's layout, as is
        self.estimator = estimator
        self.defense = inner.defense

    def __repr__(self) -> str:
        return f"DefendedClassifier({type(self.estimator).__name__}, {self.defense!r})"
