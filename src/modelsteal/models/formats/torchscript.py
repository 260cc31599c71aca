"""TorchScript archives (``torch.jit.save`` of a scripted or traced module), loaded with ``torch.jit.load``.

A TorchScript module is differentiable in its input (MAD-free input gradients such as ODIN's work), but its
submodules are compiled, so its penultimate features cannot be hooked: feature-space detectors need a feature
model of their own. The archive does not record an input shape: the spec must give it.
"""

from __future__ import annotations

import warnings

import torch

from modelsteal.models.formats.base import FileFacts, Loaded, ModelFormat, first_line, register_format
from modelsteal.models.formats.spec import ModelSpec


@register_format("torchscript")
class TorchScriptFormat(ModelFormat):
    """``torch.jit.save`` output: a zip with ``constants.pkl`` and compiled ``code/``."""

    description = "a TorchScript archive"
    gradients = True
    features = False

    @classmethod
    def sniff(cls, facts: FileFacts) -> bool:
        return any(n.endswith("constants.pkl") for n in facts.members) and any("/code/" in n for n in facts.members)

    def load(self, source: str, spec: ModelSpec, *, device: torch.device) -> Loaded:
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; its archives still load
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(source, map_location=device)
        except Exception as e:  # noqa: BLE001 - whatever torch.jit.load raises, the file is not usable
            raise ValueError(f"{source} is not a loadable TorchScript archive ({first_line(e)})") from None
        return Loaded(module=module.eval(), spec=spec, meta={}, native=module)
