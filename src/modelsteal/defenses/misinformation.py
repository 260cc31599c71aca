"""Adaptive Misinformation (AM): answer out-of-distribution queries with a misinformation model.

Kariyappa and Qureshi, *Defending Against Model Stealing Attacks with Adaptive Misinformation*, CVPR 2020,
Sec. 4. Three parts:

1. the OOD detector is the victim's own maximum softmax probability ``y_max = max_i f(x)_i`` (Eq. 5, 8); the
   victim is trained with outlier exposure (Eq. 6) so that OOD inputs get low ``y_max``;
2. the misinformation model ``f̂`` has the victim's architecture and is trained on the victim's training data to
   put little mass on the true class, ``loss = E[−log(1 − f̂(x)_y)]`` (Eq. 7,
   :class:`~modelsteal.training.ReverseCrossEntropy`), by :meth:`AdaptiveMisinformation.fit` through the one
   training loop;
3. every answer mixes the two with a reverse sigmoid of the MSP (Eq. 9–11):

       y' = (1 − α) f(x) + α f̂(x),      α = S(y_max − τ) = 1 / (1 + exp(ν (y_max − τ)))

   (ν = 1000 in the paper), computed as ``sigmoid(−ν (y_max − τ))``, which saturates to exactly 0 or 1 instead
   of overflowing ``exp``.

τ is the trade-off knob (the sweep's strength). Confident queries (``y_max > τ``) get ``α < 1/2`` and, for large
ν, ``y' → f(x)``; the others get ``f̂(x)``. *Lowering* τ misinforms fewer queries: defender accuracy goes up and
security down (Sec. 4.3, "Security vs Accuracy Trade-off"); τ → 0 is the undefended victim, τ = 1 misinforms
every query whose MSP is below 1. The cost is one extra forward pass of ``f̂`` per batch.

Ablations (of the components this module implements; not the paper's own appendix study):

- ``gate="hard"``: a hard switch at τ instead of the sigmoid, ``α = 1`` when ``y_max ≤ τ`` (Eq. 5's OOD side),
  else ``α = 0``;
- ``misinformation_kind="untrained"``: ``f̂`` a fixed random initialisation of the victim's architecture (no
  Eq. 7 training); ``"uniform"``: ``f̂(x) = 1/K`` for every class;
- *no outlier exposure* is a property of the victim, not of this defense: train the sweep's victim with the
  ``plain`` recipe instead of ``outlier-exposure`` (``victim: {recipe: plain}``).

Example::

    am = AdaptiveMisinformation(tau=0.9, train={"epochs": 10})
    am.fit(victim, data)                   # trains f̂ with Eq. 7 on data.x_train, data.y_train
    api = PredictionAPI(victim, defense=am)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from modelsteal._registry import check_options
from modelsteal.data.registry import DatasetSplits
from modelsteal.defenses.base import Defense, as_float, register_defense
from modelsteal.defenses.mad import random_copy_or_arch
from modelsteal.models import model_device
from modelsteal.models.builders import cpu_fast_layout, is_channels_last
from modelsteal.models.gram import model_dtype
from modelsteal.training import ReverseCrossEntropy, TrainConfig, TrainHistory, train

Gate = Literal["sigmoid", "hard"]
Kind = Literal["trained", "untrained", "uniform"]

GATES = ("sigmoid", "hard")
KINDS = ("trained", "untrained", "uniform")


def reverse_sigmoid_gate(top: Tensor, *, tau: float, nu: float) -> Tensor:
    """Eq. 10–11: ``α = 1 / (1 + exp(ν (top − τ)))`` as ``sigmoid(−ν (top − τ))`` (saturates, never overflows)."""
    return torch.sigmoid(-nu * (top - tau))


def hard_gate(top: Tensor, *, tau: float) -> Tensor:
    """Eq. 5 as a switch: ``α = 1`` for rows the detector calls OOD (``top ≤ τ``), ``0`` for the others."""
    return (top <= tau).to(top.dtype)


def train_config(spec: dict[str, Any] | TrainConfig | None) -> TrainConfig:
    """``f̂``'s optimisation settings: a :class:`TrainConfig`, a mapping of its fields (keys and values checked,
    one-line ``ValueError``), or ``None`` for the defaults every victim gets (SGD, lr 0.1, momentum 0.5, 30
    epochs, batch 64)."""
    if spec is None:
        return TrainConfig()
    if isinstance(spec, TrainConfig):
        return spec
    if not isinstance(spec, dict):
        raise ValueError(f"am: train must be a mapping of training settings, got {spec!r}")
    check_options(TrainConfig, spec, kind="training", label="am's train settings", noun="key")
    return TrainConfig(**spec)


@register_defense("am")
class AdaptiveMisinformation(Defense):
    """Adaptive Misinformation (Kariyappa & Qureshi, CVPR 2020, Eq. 9–11) with MSP threshold ``tau``.

    Args:
        tau: the threshold τ of the MSP detector, in (0, 1] (the sweep's strength).
        nu: the growth rate ν of the reverse sigmoid (Eq. 11; 1000 in the paper), > 0.
        misinformation: a ready misinformation model ``f̂`` (a Python object: same input shape and classes as
            the victim), used as is (its mode and device are not changed; inputs are moved to it); then
            :meth:`fit` has nothing to do. ``None`` (default): :meth:`fit` trains one.
        train: ``f̂``'s training settings (a :class:`~modelsteal.training.TrainConfig` or a mapping of its
            fields, ``train: {epochs: 10}`` in YAML); default those of a victim (see :func:`train_config`).
        gate: ``"sigmoid"`` (Eq. 10–11) or ``"hard"`` (ablation: switch at τ, ``y_max ≤ τ`` is misinformed).
        misinformation_kind: ``"trained"`` (Eq. 7), or the ablations ``"untrained"`` (a fixed random copy of the
            victim, built in :meth:`bind`) and ``"uniform"`` (``f̂(x) = 1/K``).
        seed: seeds ``f̂``'s initialisation (:func:`~modelsteal.defenses.mad.random_surrogate`) and, unless
            :meth:`fit` is given a generator, its training order.

    The victim should be trained with outlier exposure (recipe ``outlier-exposure``); the paper's "no outlier
    exposure" ablation is a victim trained with ``plain``, not an option here.
    """

    strength_param = "tau"
    example_strength = 0.9
    uses_input = True
    needs_fit = True

    def __init__(
        self,
        *,
        tau: float,
        nu: float = 1000.0,
        misinformation: nn.Module | None = None,
        train: dict[str, Any] | TrainConfig | None = None,
        gate: Gate = "sigmoid",
        misinformation_kind: Kind = "trained",
        seed: int = 0,
    ) -> None:
        tau, nu = float(tau), float(nu)
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"am needs tau (the MSP threshold) in (0, 1], got {tau}")
        if not (nu > 0 and math.isfinite(nu)):
            raise ValueError(f"am needs a finite nu > 0 (the reverse sigmoid's growth rate), got {nu}")
        gate = str(gate).lower()  # type: ignore[assignment]
        if gate not in GATES:
            raise ValueError(f"am: gate must be 'sigmoid' or 'hard', got {gate!r}")
        kind = str(misinformation_kind).lower()
        if kind not in KINDS:
            raise ValueError(f"am: misinformation_kind must be 'trained', 'untrained' or 'uniform', got {kind!r}")
        if misinformation is not None and not isinstance(misinformation, nn.Module):
            raise ValueError(f"am: misinformation must be an nn.Module or None, got {type(misinformation).__name__}")
        if misinformation is not None and kind != "trained":
            raise ValueError(f"am: misinformation_kind={kind!r} builds its own answers; do not pass misinformation=")
        self.tau, self.nu = tau, nu
        self.gate: Gate = gate
        self.misinformation_kind: Kind = kind  # type: ignore[assignment]
        self.train_config = train_config(train)
        self.seed = int(seed)
        self.misinformation: nn.Module | None = misinformation
        self.history: TrainHistory | None = None
        # instance-level answers: a given f̂, or the ablations, need no fit; the uniform answer ignores x
        self.needs_fit = kind == "trained" and misinformation is None
        self.uses_input = kind != "uniform"

    def __repr__(self) -> str:
        opts = [f"tau={self.tau}"]
        if self.gate == "sigmoid":
            opts.append(f"nu={self.nu}")
        else:
            opts.append("gate='hard'")
        if self.misinformation_kind != "trained":
            opts.append(f"misinformation_kind={self.misinformation_kind!r}")
        return f"AdaptiveMisinformation({', '.join(opts)})"

    # -- the misinformation model -----------------------------------------------------------------------
    def bind(self, model: nn.Module, *, input_shape: Sequence[int], num_classes: int) -> None:
        """The ``untrained`` ablation's ``f̂``: a fixed random re-initialisation of a copy of the victim."""
        if self.misinformation_kind == "untrained":
            self.misinformation = cpu_fast_layout(random_copy_or_arch(
                model, input_shape=input_shape, num_classes=num_classes, seed=self.seed,
                who="AM's untrained misinformation model is", option="--defense-option misinformation_kind=uniform"))

    def fit(self, victim: nn.Module, data: DatasetSplits, *, generator: torch.Generator | None = None) -> None:
        """Train ``f̂`` with Eq. 7 on ``data``'s training split: a random copy of ``victim``'s architecture
        (:func:`~modelsteal.defenses.mad.random_surrogate` seeded with ``seed``), on the victim's device, through
        :func:`~modelsteal.training.train` with :class:`~modelsteal.training.ReverseCrossEntropy`. Nothing to do
        for a given ``misinformation`` model or the ``untrained``/``uniform`` ablations."""
        if not self.needs_fit:
            return
        if data.y_train.ndim != 1:
            raise ValueError("am: the misinformation model is trained on class labels; data.y_train is not (N,)")
        net = random_copy_or_arch(victim, input_shape=data.input_shape, num_classes=int(data.num_classes),
                                  seed=self.seed, who="AM's misinformation model f-hat is trained from",
                                  option="a torch victim").requires_grad_(True)
        gen = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        self.history = train(net, data.x_train, data.y_train, config=self.train_config, loss=ReverseCrossEntropy(),
                             generator=gen, device=model_device(victim))
        # channels-last on the CPU: AM's one extra forward pass then costs what MAD's surrogate pass does
        self.misinformation = cpu_fast_layout(net.eval().requires_grad_(False))

    def fitted_options(self) -> dict[str, Any]:
        """``{"misinformation": f̂}`` once :meth:`fit` has trained it (``f̂`` does not depend on τ)."""
        return {} if self.misinformation_kind != "trained" or self.misinformation is None else {
            "misinformation": self.misinformation}

    @torch.no_grad()
    def misinformation_probs(self, x: Tensor, probs: Tensor) -> Tensor:
        """``f̂(x)`` (N, K) on ``probs``' device and dtype: the softmax of the misinformation model, or ``1/K``."""
        if self.misinformation_kind == "uniform":
            return torch.full_like(probs, 1.0 / probs.shape[1])
        net = self.misinformation
        if net is None:
            fix = ("call fit(victim, data) first, or pass misinformation=<nn.Module>"
                   if self.misinformation_kind == "trained" else "let PredictionAPI call bind(victim, ...) first")
            raise ValueError(f"am has no misinformation model: {fix}")
        xs = x.detach().to(device=model_device(net), dtype=model_dtype(net))
        if xs.ndim == 4 and is_channels_last(net):
            xs = xs.contiguous(memory_format=torch.channels_last)
        logits = net(xs)
        if logits.ndim != 2 or logits.shape[1] != probs.shape[1]:
            raise ValueError(f"am: the misinformation model answers shape {tuple(logits.shape)}; the victim "
                             f"answers {probs.shape[1]} classes")
        return torch.softmax(logits.to(device=probs.device, dtype=probs.dtype), dim=1)

    # -- Eq. 9–11 ---------------------------------------------------------------------------------------
    def alpha(self, probs: Tensor) -> Tensor:
        """The weight ``α`` (N,) of ``f̂`` per row: the reverse sigmoid of ``max_i probs_i − τ``, or the hard gate."""
        top = probs.amax(dim=1)
        if self.gate == "hard":
            return hard_gate(top, tau=self.tau)
        return reverse_sigmoid_gate(top, tau=self.tau, nu=self.nu)

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        """Eq. 9: ``y' = (1 − α) f(x) + α f̂(x)`` (``f̂`` runs on the whole batch: one extra forward pass)."""
        if probs.shape[0] == 0:
            return probs
        y = as_float(probs.detach())
        a = self.alpha(y)[:, None]
        out = (1 - a) * y + a * self.misinformation_probs(x, y)
        return out.to(probs.dtype)


__all__ = ["AdaptiveMisinformation", "hard_gate", "reverse_sigmoid_gate", "train_config"]
