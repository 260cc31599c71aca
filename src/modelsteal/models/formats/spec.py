"""The model spec: what a model file does not say about itself, given as flags or a YAML file beside it.

A model file (ONNX, TorchScript, a scikit-learn pickle, ...) holds a function, not the facts around it that the
toolkit needs: which input shape it takes, in which dtype, value range and channel layout, whether it expects
normalised inputs, what its classes are called and whether it answers logits or probabilities. A
:class:`ModelSpec` holds these facts; :func:`read_spec` reads one from YAML::

    # victim.onnx.yaml (or model.yaml) beside victim.onnx
    input_shape: [1, 28, 28]      # (C, H, W) as the toolkit's datasets give it (channels first)
    layout: nchw                  # nhwc: the file takes (N, H, W, C); inputs are permuted for it
    range: [0, 255]               # the file takes values in [0, 255]; the toolkit's [0, 1] inputs are scaled
    mean: [33.3]                  # normalisation the file expects but does not apply itself (in range units)
    std: [78.6]
    outputs: probs                # probs, logits or auto (decided at load from one dummy forward)
    classes: [zero, one, two, three, four, five, six, seven, eight, nine]
    dataset: mnist                # the task's dataset (test split, a defense's or detector's training data)

Every transformation happens once, in this order, inside the loaded model: scale ``[0, 1]`` to ``range``,
normalise with ``mean``/``std`` (per channel), permute to ``layout``, cast to ``dtype``, run the file; for
``outputs: probs`` the answer is turned into log-probabilities, so that the softmax every API applies to a
model's output gives back exactly the file's probabilities (softmax is applied once, by modelsteal).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: the input dtypes a model file may take
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}
LAYOUTS = ("nchw", "nhwc")
OUTPUTS = ("auto", "logits", "probs")


@dataclass(frozen=True)
class ModelSpec:
    """What the toolkit must know about a model file (module docstring). ``None`` means "not given": the
    loader fills it from the file when the file knows it (an ONNX input shape, a scikit-learn estimator's
    classes), else it stays unknown or takes the default (``dtype`` float32, ``range`` [0, 1], ``layout``
    nchw, ``outputs`` auto)."""

    input_shape: tuple[int, ...] | None = None
    dtype: str | None = None
    range: tuple[float, float] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: str | None = None
    outputs: str | None = None
    classes: tuple[str, ...] | None = None
    dataset: str | None = None
    format: str | None = None
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.input_shape is not None:
            shape = tuple(int(s) for s in self.input_shape)
            if not shape or any(s < 1 for s in shape):
                raise ValueError(f"input shape must be positive sizes such as 1,28,28, got {self.input_shape}")
            object.__setattr__(self, "input_shape", shape)
        if self.dtype is not None and str(self.dtype).lower() not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.dtype is not None:
            object.__setattr__(self, "dtype", str(self.dtype).lower())
        if self.range is not None:
            lo, hi = (float(v) for v in _pair(self.range, "range"))
            if not hi > lo:
                raise ValueError(f"range must be LOW,HIGH with HIGH > LOW, got {self.range}")
            object.__setattr__(self, "range", (lo, hi))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in _seq(value, name)))
        if (self.mean is None) != (self.std is None):
            raise ValueError("normalisation needs both mean and std (one value, or one per channel)")
        if self.std is not None and any(not s > 0 for s in self.std):
            raise ValueError(f"std must be positive, got {list(self.std)}")
        if self.mean is not None and len(self.mean) != len(self.std or ()):
            raise ValueError(f"mean and std must have as many values, got {len(self.mean)} and {len(self.std or ())}")
        if self.layout is not None:
            layout = str(self.layout).lower()
            if layout not in LAYOUTS:
                raise ValueError(f"layout must be nchw or nhwc, got {self.layout!r}")
            object.__setattr__(self, "layout", layout)
        if self.outputs is not None:
            outputs = str(self.outputs).lower()
            if outputs not in OUTPUTS:
                raise ValueError(f"outputs must be probs, logits or auto, got {self.outputs!r}")
            object.__setattr__(self, "outputs", outputs)
        if self.classes is not None:
            classes = tuple(str(c) for c in _seq(self.classes, "classes"))
            if len(classes) < 2:
                raise ValueError(f"classes must name at least 2 classes, got {list(classes)}")
            object.__setattr__(self, "classes", classes)

    def merged(self, other: ModelSpec) -> ModelSpec:
        """``self`` with every field that ``other`` gives (not ``None``) taken from ``other``."""
        given = {f.name: getattr(other, f.name) for f in dataclasses.fields(other)
                 if getattr(other, f.name) is not None}
        return dataclasses.replace(self, **given)

    def given(self) -> list[str]:
        """The names of the fields that are set."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, JSON/YAML-safe."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str) -> ModelSpec:
        """A spec from a mapping (a YAML file's content); unknown keys are a one-line error naming ``where``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must hold a mapping of spec keys, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))} in {where}; allowed: {', '.join(names)}")
        try:
            return cls(**dict(data))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None


def _pair(value: Any, name: str) -> tuple[Any, Any]:
    items = _seq(value, name)
    if len(items) != 2:
        raise ValueError(f"{name} must be two numbers LOW,HIGH, got {value!r}")
    return items[0], items[1]


def _seq(value: Any, name: str) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    raise ValueError(f"{name} must be a list, got {value!r}")


def spec_path_beside(path: str | Path) -> Path | None:
    """The spec file that belongs to the model file ``path``: ``PATH.yaml`` (``victim.onnx.yaml``), else
    ``model.yaml`` in the same folder; ``None`` when neither exists."""
    p = Path(path)
    for candidate in (p.with_name(p.name + ".yaml"), p.with_name("model.yaml")):
        if candidate.is_file():
            return candidate
    return None


def read_spec(path: str | Path) -> ModelSpec:
    """The :class:`ModelSpec` in the YAML file ``path``; a one-line ``ValueError`` for a missing file, bad YAML
    or a wrong key."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model spec {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"model spec {p} is not valid YAML ({str(e).splitlines()[0]})") from None
    return ModelSpec.from_mapping(data, where=f"model spec {p}")


__all__ = ["DTYPES", "LAYOUTS", "OUTPUTS", "ModelSpec", "read_spec", "spec_path_beside"]
