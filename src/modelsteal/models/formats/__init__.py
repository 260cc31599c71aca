"""Model files of every kind, behind one registry and one spec: modelsteal checkpoints, TorchScript, ``torch.export``
programs, ONNX (through ONNX Runtime), scikit-learn estimators and ``python:package.module:factory`` modules.

:func:`load_model` tells the format from the file (or takes ``format=``), reads the spec beside it
(``SOURCE.yaml`` or ``model.yaml``) and the caller's overrides, and returns a :class:`LoadedModel` whose ``model``
every API, defense and attack accepts: raw ``[0, 1]`` inputs in, logits out. See :mod:`.spec` for the spec and
``docs/models.md`` for the command line.
"""

# the built-in formats register themselves on import
from modelsteal.models.formats import checkpoint, exported, onnx, python, sklearn, torchscript  # noqa: E402,F401,I001
from modelsteal.models.formats.base import (
    LoadedModel,
    ModelFormat,
    SpecModel,
    available_formats,
    describe_model,
    format_class,
    load_model,
    model_features,
    model_gradients,
    register_format,
    sniff_format,
)
from modelsteal.models.formats.spec import ModelSpec, read_spec, spec_path_beside

__all__ = [
    "LoadedModel", "ModelFormat", "ModelSpec", "SpecModel", "available_formats", "describe_model", "format_class",
    "load_model", "model_features", "model_gradients", "read_spec", "register_format", "sniff_format",
    "spec_path_beside",
]
