"""A chain of defenses: each answers the previous one's answer.

``Chain(MAD(epsilon=0.5), DAWN(rate=0.1))`` perturbs the victim's posteriors with MAD, then lets DAWN
watermark (and record) MAD's answers: the composition a model owner deploys when one defense poisons the
attacker's training signal and another proves theft afterwards. The chain is a :class:`Defense` itself, so a
:class:`~modelsteal.PredictionAPI`, a sweep's Python caller or the server takes it like any other.

Example::

    api = PredictionAPI(victim, defense=Chain(make_defense("mad", strength=0.5), DAWN(rate=0.1, key="k")))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal.data.registry import DatasetSplits
from modelsteal.defenses.base import Defense

__all__ = ["Chain"]


class Chain(Defense):
    """Defenses applied in turn: ``stages[0]`` answers the victim's posteriors, each next stage the answer
    before it. ``None`` stages (``make_defense("none")``) are dropped; at least one stage must remain.

    The chain binds and fits every stage, reads the inputs when any stage does (``uses_input``), accepts a
    number of classes only when every stage does, and hands the server the records of every stage that keeps
    them (:meth:`take_new_records`, keyed by stage position and class name).
    """

    def __init__(self, *stages: Defense | None) -> None:
        self.stages = [s for s in stages if s is not None]
        if not self.stages:
            raise ValueError("a defense chain needs at least one defense")
        bad = [type(s).__name__ for s in self.stages if not isinstance(s, Defense)]
        if bad:
            raise TypeError(f"every stage of a defense chain must be a Defense, got {', '.join(bad)}")
        self.uses_input = any(s.uses_input for s in self.stages)
        self.needs_fit = any(s.needs_fit for s in self.stages)

    def bind(self, model: nn.Module, *, input_shape: Sequence[int], num_classes: int) -> None:
        for s in self.stages:
            s.bind(model, input_shape=input_shape, num_classes=num_classes)

    def fit(self, victim: nn.Module, data: DatasetSplits, *, generator: torch.Generator | None = None) -> None:
        for s in self.stages:
            if s.needs_fit:
                s.fit(victim, data, generator=generator)

    def check_classes(self, num_classes: int) -> None:
        for s in self.stages:
            s.check_classes(num_classes)

    def take_new_records(self, client: str) -> dict[str, Any] | None:
        records = {f"{i}:{type(s).__name__}": r for i, s in enumerate(self.stages)
                   if (r := s.take_new_records(client)) is not None}
        return records or None

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        for s in self.stages:
            probs = s(x, probs, client=client)
        return probs

    def __repr__(self) -> str:
        return f"Chain({', '.join(repr(s) for s in self.stages)})"
