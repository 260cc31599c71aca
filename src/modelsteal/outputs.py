"""Output formats of a prediction API: what a caller sees of the (possibly defended) posterior.

A format is applied after the defense. ``probs`` returns rows on the simplex, ``top-k`` keeps the k largest
probabilities and zeroes the rest (renormalised, as in Orekondy et al. 2019), ``label`` returns the one-hot
argmax (label-only APIs), ``rounded`` rounds to a number of decimals (Tramèr et al. 2016, Sec. 7) without
renormalising, which is what a rounding API actually reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from modelsteal._registry import Registry
from modelsteal._simplex import renormalize


def top_k(probs: Tensor, k: int) -> Tensor:
    """Keep the k largest entries of each row, zero the others and renormalise."""
    if k < 1:
        raise ValueError(f"top-k needs k >= 1, got {k}")
    k = min(k, probs.shape[1])
    values, idx = probs.topk(k, dim=1)
    out = torch.zeros_like(probs).scatter_(1, idx, values)
    return renormalize(out)


def one_hot_argmax(probs: Tensor) -> Tensor:
    """The one-hot vector of each row's argmax (a label-only answer)."""
    return torch.zeros_like(probs).scatter_(1, probs.argmax(dim=1, keepdim=True), 1.0)


def round_probs(probs: Tensor, decimals: int) -> Tensor:
    """Round every probability to ``decimals`` decimal places (no renormalisation)."""
    if decimals < 0:
        raise ValueError(f"rounding needs decimals >= 0, got {decimals}")
    return torch.round(probs, decimals=decimals)


# what each format answers, given the posteriors and the format's options
_FORMATS: Registry[Any] = Registry("output format", package="modelsteal.outputs")


@_FORMATS.register("probs")
def _probs(probs: Tensor, fmt: OutputFormat) -> Tensor:
    return probs


@_FORMATS.register("top-k")
def _top_k(probs: Tensor, fmt: OutputFormat) -> Tensor:
    return top_k(probs, fmt.k)


@_FORMATS.register("label")
def _label(probs: Tensor, fmt: OutputFormat) -> Tensor:
    return one_hot_argmax(probs)


@_FORMATS.register("rounded")
def _rounded(probs: Tensor, fmt: OutputFormat) -> Tensor:
    return round_probs(probs, fmt.decimals)


@dataclass(frozen=True)
class OutputFormat:
    """How the API reports a posterior. Build with :func:`make_output`."""

    kind: str = "probs"
    k: int = 1
    decimals: int = 2

    def __call__(self, probs: Tensor) -> Tensor:
        return _FORMATS.get(self.kind)(probs, self)  # ValueError naming the known formats

    def describe(self) -> str:
        if self.kind == "top-k":
            return f"top-{self.k}"
        if self.kind == "rounded":
            return f"rounded-{self.decimals}"
        return self.kind


OUTPUT_FORMATS = tuple(_FORMATS.as_dict())  # ("probs", "top-k", "label", "rounded"), in registration order


def make_output(
    spec: str | OutputFormat = "probs", *, k: int | None = None, decimals: int | None = None
) -> OutputFormat:
    """Parse an output format: ``probs``, ``label``, ``top-k`` (or ``top-3``), ``rounded`` (or ``rounded-2``)."""
    if isinstance(spec, OutputFormat):
        return spec
    name = spec.strip().lower().replace("_", "-")
    if name in ("label-only", "argmax", "labels"):
        name = "label"
    for prefix, kind, option, given in (("top-", "top-k", "k", k), ("rounded-", "rounded", "decimals", decimals)):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            value = int(name[len(prefix):])
            if given is not None and given != value:
                raise ValueError(f"output {spec!r} already sets {option}={value}; {option}={given} contradicts it")
            name = kind
            k, decimals = (value, decimals) if option == "k" else (k, value)
    if name not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {spec!r}; known: {', '.join(OUTPUT_FORMATS)} (or top-N, rounded-N)")
    for option, value, owner in (("k", k, "top-k"), ("decimals", decimals, "rounded")):
        if value is not None and name != owner:
            raise ValueError(f"output option {option} applies to {owner} only, not to output {spec!r}")
    for option, value, low in (("k", k, 1), ("decimals", decimals, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"output {spec!r}: {option} must be an integer >= {low}, got {value!r}")
    return OutputFormat(kind=name, k=1 if k is None else k, decimals=2 if decimals is None else decimals)
