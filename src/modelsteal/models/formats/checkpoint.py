"""modelsteal checkpoints (``modelsteal train``): the architecture, dataset, normalisation and weights in one file.

They describe themselves, so the spec may add only a dataset or class names; an input shape must agree with the
checkpoint's, and preprocessing flags (``range``, ``mean``/``std``, ``layout``, ``dtype``, ``outputs``) are refused:
the checkpoint applies its own normalisation and answers logits.
"""

from __future__ import annotations

import dataclasses

import torch

from modelsteal.models.checkpoint import load_checkpoint
from modelsteal.models.formats.base import FileFacts, Loaded, ModelFormat, register_format
from modelsteal.models.formats.spec import ModelSpec

_PREPROCESSING = ("range", "mean", "std", "layout", "dtype", "outputs")


@register_format("checkpoint")
class CheckpointFormat(ModelFormat):
    """A file written by :func:`~modelsteal.models.save_checkpoint` (a ``torch.save`` zip with ``data.pkl``)."""

    description = "a modelsteal checkpoint"
    gradients = True
    features = True
    wraps = False

    @classmethod
    def sniff(cls, facts: FileFacts) -> bool:
        return any(n.endswith("data.pkl") for n in facts.members)

    def load(self, source: str, spec: ModelSpec, *, device: torch.device) -> Loaded:
        given = [f for f in _PREPROCESSING if getattr(spec, f) is not None]
        if given:
            flag = given[0].replace("_", "-")
            raise ValueError(f"{source} is a modelsteal checkpoint, which records its own preprocessing and answers "
                             f"logits: --{flag} does not apply to it")
        try:
            model, meta = load_checkpoint(source, device=device)
        except ValueError as e:
            if "not a modelsteal checkpoint" in str(e):
                raise ValueError(f"{e}; a bare state dict needs its module: --format python --target "
                                 "python:package.module:factory --weights FILE, or save the model with "
                                 "torch.jit.save / torch.export.save") from None
            raise
        shape = tuple(meta["input_shape"])
        if spec.input_shape is not None and tuple(spec.input_shape) != shape:
            raise ValueError(f"the spec says inputs {tuple(spec.input_shape)}, but checkpoint {source} takes {shape}")
        filled = dataclasses.replace(spec, input_shape=shape, dataset=spec.dataset or meta.get("dataset"))
        return Loaded(module=model, spec=filled, meta=dict(meta), native=model)
