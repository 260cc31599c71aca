"""``python:package.module:factory``: the user's own ``nn.Module``, built by calling ``factory``, with the state
dict in ``--weights`` (a ``torch.save`` of ``model.state_dict()``, or a modelsteal checkpoint).

``factory`` is called with the keyword arguments among ``input_shape`` and ``num_classes`` that it accepts and the
spec gives; a module with an ``input_shape`` attribute needs no ``--input-shape``. The model is a plain torch
module: gradients and (when it ends in an ``nn.Linear``) penultimate features are available.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from typing import Any

import torch
from torch import nn

from modelsteal.models.formats.base import FileFacts, Loaded, ModelFormat, first_line, register_format
from modelsteal.models.formats.spec import ModelSpec


def _factory(source: str) -> Any:
    target = source.removeprefix("python:")
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"a python model is python:package.module:factory, got {source!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `modelsteal` run from a project folder finds its modules
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import {module_name} for {source} ({first_line(e)})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{module_name} has no callable {attr!r} (for {source})")
    return fn


def _state_dict(path: str) -> dict[str, torch.Tensor]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"--weights {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure: not a tensor file
        raise ValueError(f"--weights {path} is not a torch state dict ({first_line(e)})") from None
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise ValueError(f"--weights {path} does not hold a state dict (a mapping of names to tensors)")
    return blob


@register_format("python")
class PythonFormat(ModelFormat):
    """A ``python:package.module:factory`` source (no file)."""

    description = "a python:package.module:factory module"
    gradients = True
    features = True

    @classmethod
    def sniff(cls, facts: FileFacts) -> bool:
        return facts.source.startswith("python:")

    def load(self, source: str, spec: ModelSpec, *, device: torch.device) -> Loaded:
        fn = _factory(source)
        params = inspect.signature(fn).parameters
        kwargs: dict[str, Any] = {}
        if "input_shape" in params and spec.input_shape is not None:
            kwargs["input_shape"] = tuple(spec.input_shape)
        if "num_classes" in params and spec.classes is not None:
            kwargs["num_classes"] = len(spec.classes)
        model = fn(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{source} returned a {type(model).__name__}, not a torch nn.Module")
        if spec.weights is not None:
            _load(model, _state_dict(spec.weights), source=source, weights=spec.weights)
        shape = spec.input_shape or getattr(model, "input_shape", None)
        filled = dataclasses.replace(spec, input_shape=tuple(shape) if shape is not None else None)
        features = any(isinstance(m, nn.Linear) for m in model.modules())
        return Loaded(module=model.to(device).eval(), spec=filled, meta={"features": features}, native=model)


def _load(model: nn.Module, state: dict[str, torch.Tensor], *, source: str, weights: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"--weights {weights} does not fit {source} ({first_line(e)})") from None
