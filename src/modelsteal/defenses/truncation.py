"""Information-truncation defenses: top-k, rounding and label-only (argmax).

These preserve the top-1 label and only withhold information (Tramèr et al. 2016 Sec. 7; Orekondy et al.
2019 Sec. 6). They share their arithmetic with the API output formats in :mod:`modelsteal.outputs`; as
defenses their rows are renormalised so they stay on the simplex.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from modelsteal._simplex import renormalize
from modelsteal.defenses.base import Defense, register_defense
from modelsteal.outputs import one_hot_argmax, round_probs, top_k


@register_defense("top-k")
class TopK(Defense):
    """Keep the ``k`` most probable classes, zero the rest and renormalise."""

    strength_param = "k"
    example_strength = 2
    preserves_argmax = True

    def __init__(self, *, k: int = 1) -> None:
        if int(k) != k or k < 1:
            raise ValueError(f"top-k needs an integer k >= 1, got {k}")
        self.k = int(k)

    def bind(self, model: nn.Module, *, input_shape: Sequence[int], num_classes: int) -> None:
        """Refuse a ``k`` above the victim's number of classes (see :meth:`check_classes`)."""
        self.check_classes(num_classes)

    def check_classes(self, num_classes: int) -> None:
        """A ``k`` above the model's number of classes is a mistake (the defense would withhold nothing)."""
        if self.k > num_classes:
            raise ValueError(f"top-k defense keeps k={self.k} classes, more than the model has ({num_classes}); "
                             f"use k from 1 to {num_classes}")

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        return top_k(probs, self.k)


@register_defense("rounding")
class Rounding(Defense):
    """Round posteriors to ``decimals`` places, then renormalise (Tramèr et al. 2016, Sec. 7)."""

    strength_param = "decimals"
    example_strength = 1

    def __init__(self, *, decimals: int = 2) -> None:
        if int(decimals) != decimals or decimals < 0:
            raise ValueError(f"rounding needs an integer decimals >= 0, got {decimals}")
        self.decimals = int(decimals)

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        return renormalize(round_probs(probs, self.decimals))


@register_defense("label-only")
class LabelOnly(Defense):
    """Answer the one-hot top-1 label only: the extreme of information truncation (PP paper, Sec. 5.2)."""

    preserves_argmax = True

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        return one_hot_argmax(probs)
