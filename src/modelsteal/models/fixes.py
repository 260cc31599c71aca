"""Layer replacements that training recipes need and checkpoints must repeat when they rebuild a model."""

from __future__ import annotations

from torch import nn

from modelsteal._extras import require_extra


def opacus_fix(model: nn.Module) -> tuple[nn.Module, bool]:
    """``(model, changed)``: Opacus' ``ModuleValidator.fix`` when ``model`` has layers DP-SGD cannot train
    (BatchNorm mixes the examples of a batch, so per-sample gradients do not exist: it becomes GroupNorm).
    The attributes checkpoints and APIs read (``arch``, ``input_shape``, ``num_classes``) are kept."""
    require_extra("opacus", extra="dp", purpose="DP-SGD (the dp-sgd recipe and its checkpoints)")
    from opacus.validators import ModuleValidator

    if not ModuleValidator.validate(model, strict=False):
        return model, False
    fixed = ModuleValidator.fix(model)
    for attr in ("arch", "input_shape", "num_classes"):
        if hasattr(model, attr):
            setattr(fixed, attr, getattr(model, attr))
    return fixed, True


MODULE_FIXES = {"opacus": opacus_fix}
