"""Loss objects for :func:`~modelsteal.training.train`: cross-entropy by default, composable with extra terms.

A :class:`Loss` maps ``(model, x, y, extra)`` to a scalar, where ``extra`` holds one batch of every extra
batch stream the loss names in :attr:`Loss.streams` (an outlier set, watermark triggers, …). Terms add up
(``CrossEntropy() + UniformCrossEntropy(weight=0.5)``) and scale (``0.5 * term``); the sum reads the union
of its terms' streams, so the loop knows which streams to draw.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Mean of ``-Σ_k t_k log softmax(z)_k`` for soft targets ``(N, K)``, or the usual CE for indices ``(N,)``.

    The attacker's loss of Orekondy et al. (ICLR 2020, Sec. 3): a clone trained on posteriors keeps them
    soft; class indices give the ordinary cross-entropy.
    """
    if target.ndim == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class Loss(ABC):
    """One training objective; ``streams`` names the extra batch streams it reads from ``extra``."""

    streams: tuple[str, ...] = ()

    @abstractmethod
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        """The scalar loss of one step: ``(x, y)`` the main batch, ``extra[name]`` a batch of each stream."""

    def __add__(self, other: Loss) -> Loss:
        return SumLoss(self, other)

    def __rmul__(self, weight: float) -> Loss:
        return ScaledLoss(self, float(weight))


class SumLoss(Loss):
    """``Σ_i term_i``; reads every stream any term reads."""

    def __init__(self, *terms: Loss) -> None:
        flat: list[Loss] = []
        for t in terms:
            flat.extend(t.terms if isinstance(t, SumLoss) else [t])
        self.terms = tuple(flat)
        self.streams = tuple(dict.fromkeys(s for t in self.terms for s in t.streams))

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        total = self.terms[0](model, x, y, extra)
        for t in self.terms[1:]:
            total = total + t(model, x, y, extra)
        return total

    def __repr__(self) -> str:
        return " + ".join(map(repr, self.terms))


class ScaledLoss(Loss):
    """``weight · term``."""

    def __init__(self, term: Loss, weight: float) -> None:
        self.term, self.weight, self.streams = term, weight, term.streams

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        return self.weight * self.term(model, x, y, extra)

    def __repr__(self) -> str:
        return f"{self.weight:g}*{self.term!r}"


class CrossEntropy(Loss):
    """:func:`soft_cross_entropy` of ``model(x)`` against ``y`` (indices or posteriors): the default loss."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        return soft_cross_entropy(model(x), y)

    def __repr__(self) -> str:
        return "CrossEntropy()"


class UniformCrossEntropy(Loss):
    """Outlier exposure's term (Hendrycks et al., ICLR 2019; Kariyappa & Qureshi, CVPR 2020, Eq. 6):

        λ · E_{x̃ ∼ D_out} [ CE(f(x̃), U) ] = λ · E [ −(1/K) Σ_k log softmax(f(x̃))_k ]

    the cross-entropy from the model's posterior on an outlier batch to the uniform distribution ``U`` over
    the ``K`` classes. Reads the batch stream ``stream`` (default ``"outliers"``).
    """

    def __init__(self, *, weight: float = 0.5, stream: str = "outliers") -> None:
        if not weight >= 0:
            raise ValueError(f"the outlier-exposure weight λ must be >= 0, got {weight}")
        self.weight, self.stream, self.streams = float(weight), stream, (stream,)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        out = extra[self.stream]
        if len(out) == 0:
            return torch.zeros((), device=x.device)
        return -self.weight * F.log_softmax(model(out), dim=1).mean(dim=1).mean()

    def __repr__(self) -> str:
        return f"UniformCrossEntropy(weight={self.weight:g}, stream={self.stream!r})"


class ReverseCrossEntropy(Loss):
    """The misinformation model's loss of Adaptive Misinformation (Kariyappa & Qureshi, CVPR 2020, Eq. 7):

        L(x, y) = −log(1 − f̂(x)_y)

    which pushes the probability of the true class ``y`` (indices ``(N,)``) to zero. Computed as
    ``logsumexp_{k≠y} z_k − logsumexp_k z_k`` (the log of ``1 − f̂(x)_y`` without forming ``1 − p``), so it
    stays finite when ``f̂(x)_y`` rounds to 1.
    """

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        if y.ndim != 1:
            raise ValueError("ReverseCrossEntropy needs class indices (N,), not soft labels")
        z = model(x)
        others = z.scatter(1, y.view(-1, 1), float("-inf"))
        return -(torch.logsumexp(others, dim=1) - torch.logsumexp(z, dim=1)).mean()

    def __repr__(self) -> str:
        return "ReverseCrossEntropy()"
