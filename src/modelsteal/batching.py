"""Answering a batch in slices: what every black box (in process or over HTTP) and the detectors' feature
extractors share, so a batch size never changes an answer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["answer_in_batches"]


def answer_in_batches(x: Tensor, batch_size: int | None, answer: Callable[[Tensor], Tensor], *,
                      empty: Callable[[], Tensor]) -> Tensor:
    """``answer`` applied to consecutive slices of at most ``batch_size`` rows (all rows at once for
    ``None``), concatenated; ``empty()`` for a batch of no rows."""
    chunks = [x] if batch_size is None else list(x.split(batch_size))
    answers = [answer(xb) for xb in chunks if len(xb)]
    return torch.cat(answers) if answers else empty()
