"""The identity defense: answers are the undefended posteriors (the baseline of every sweep)."""

from __future__ import annotations

from torch import Tensor

from modelsteal.defenses.base import Defense, register_defense


@register_defense("identity")
class Identity(Defense):
    """``ỹ = y``."""

    preserves_argmax = True

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        return probs
