"""Penultimate features and batching shared by the feature-space detectors (Mahalanobis, the binary classifier)
and the input pre-processing of ODIN and Mahalanobis.

The victim's *penultimate features* are the input of its last ``nn.Linear`` (the layer that produces the logits):
for a :class:`~modelsteal.models.builders.Classifier` (every builder of :mod:`modelsteal.models`) they are
``model.penultimate(x)``; for any other ``nn.Module`` they are captured with a forward hook on
:func:`~modelsteal.models.last_linear`, the layer MAD's last-layer Jacobian uses too. The maps here keep the
autograd graph (input pre-processing differentiates through them); callers wrap them in ``torch.no_grad`` when
they need no gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from modelsteal.batching import answer_in_batches
from modelsteal.models.builders import last_linear, model_device

FeatureMap = Callable[[Tensor], Tensor]


def penultimate_map(model: nn.Module) -> FeatureMap:
    """``x ↦ h``: the ``(N, d)`` input of ``model``'s last ``nn.Linear``, differentiable in ``x``."""
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear) and callable(getattr(model, "penultimate", None)):
        return lambda x: model.penultimate(x).flatten(1)
    layer = last_linear(model)

    def hooked(x: Tensor) -> Tensor:
        captured: list[Tensor] = []
        handle = layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            model(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise ValueError(f"the last nn.Linear of {type(model).__name__} ran {len(captured)} times in one forward "
                             "pass; penultimate features need it to run once (pass features=)")
        return captured[0].flatten(1)

    return hooked


def require_features(victim: nn.Module, features: object, *, detector: str) -> None:
    """A one-line ``ValueError`` when ``detector`` would read the victim's penultimate features (``features`` not
    given) and the victim has none to read (an ONNX, scikit-learn, TorchScript or torch.export model)."""
    from modelsteal.models.formats import describe_model, model_features

    if features is None and not model_features(victim):
        raise ValueError(f"detector {detector!r} reads the victim's penultimate features, which "
                         f"{describe_model(victim)} does not give: pass a torch feature model, --detector-option "
                         "features=FILE (TorchScript, .pt2 or python:module:factory mapping inputs to (N, d) features)")


def load_feature_model(path: str, *, input_shape: tuple[int, ...], device: torch.device) -> nn.Module:
    """A torch feature model from a file (TorchScript, ``torch.export``, ``python:module:factory``, checkpoint):
    raw ``[0, 1]`` inputs of ``input_shape`` in, ``(N, d)`` features out; it must be differentiable in its input."""
    from modelsteal.models.formats import ModelSpec, describe_model, load_model, model_gradients

    loaded = load_model(path, spec=ModelSpec(input_shape=tuple(input_shape), outputs="logits"), device=device)
    if not model_gradients(loaded.model):
        raise ValueError(f"features={path} is {describe_model(loaded.model)}; a feature model must be a torch "
                         "model (TorchScript, .pt2 or python:module:factory)")
    return loaded.model


def feature_map(victim: nn.Module, features: nn.Module | Callable[[Tensor], Tensor] | str | None) -> FeatureMap:
    """The feature map a detector uses: the victim's penultimate features (``features=None``), a user's
    ``nn.Module`` (switched to eval mode and run on its own device, outputs flattened to ``(N, d)`` and moved to
    the victim's device), a torch model file's path (:func:`load_feature_model`), or any callable
    ``x ↦ (N, ...)`` features."""
    if features is None:
        return penultimate_map(victim)
    out_device = model_device(victim)
    if isinstance(features, str):
        features = load_feature_model(features, input_shape=tuple(victim.input_shape), device=out_device)
    if isinstance(features, nn.Module):
        module = features.eval()
        in_device = model_device(module)
        return lambda x: module(x.to(in_device)).flatten(1).to(out_device)
    if callable(features):
        return lambda x: features(x).flatten(1).to(out_device)
    raise ValueError(f"features must be an nn.Module or a callable, got {type(features).__name__}")


def batched(fn: Callable[[Tensor], Tensor], x: Tensor, *, batch_size: int, device: torch.device) -> Tensor:
    """``fn`` applied to ``x`` in chunks of ``batch_size`` rows moved to ``device``, results concatenated (the
    API's own slicing, :func:`~modelsteal.batching.answer_in_batches`; an empty ``x`` is passed through ``fn``
    once so the result keeps ``fn``'s trailing shape)."""
    return answer_in_batches(x, batch_size, lambda xb: fn(xb.to(device)), empty=lambda: fn(x.to(device)))


def input_gradient(objective: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``∇_x Σ_n objective(x)_n`` for a batch ``x``, whether or not the caller disabled gradients; only ``x``
    gets a gradient (``torch.autograd.grad``), so no parameter's ``.grad`` changes and ``requires_grad`` flags
    are left as they are."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(xg).sum(), xg)
    return grad


def subsample(x: Tensor, n: int | None, generator: torch.Generator) -> Tensor:
    """At most ``n`` rows of ``x`` (all when ``n`` is ``None``), drawn without replacement with ``generator``."""
    if n is None or len(x) <= n:
        return x
    return x[torch.randperm(len(x), generator=generator)[:n].to(x.device)]


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` as a positive int; a one-line ``ValueError`` otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size
