"""Model builders (the paper's LeNet, a small CNN, an MLP, a CIFAR-style ResNet-18) and checkpoints.

Any ``nn.Module`` mapping ``(N, *input_shape)`` to logits ``(N, K)`` is accepted everywhere; the builders
here add ``input_shape`` and ``num_classes`` attributes so a :class:`~modelsteal.PredictionAPI` needs no more.
"""

from modelsteal.models.builders import (
    ARCHITECTURES,
    Normalize,
    architecture_key,
    build_model,
    build_seeded,
    last_linear,
    model_device,
    seeded,
)
from modelsteal.models.checkpoint import load_checkpoint, save_checkpoint

__all__ = [
    "ARCHITECTURES", "Normalize", "architecture_key", "build_model", "build_seeded", "last_linear", "load_checkpoint",
    "model_device", "save_checkpoint", "seeded",
]
