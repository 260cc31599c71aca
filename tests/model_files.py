"""Model files of one trained digits LeNet in every format, for the loader tests (module-scoped fixtures use it)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from modelsteal.models import build_model, save_checkpoint
from modelsteal.training import TrainConfig, train


def trained_lenet(digits) -> nn.Module:
    """A LeNet trained on digits for 3 epochs (test accuracy well above chance), normalisation inside."""
    model = build_model("lenet", input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std,
                        seed=0)
    train(model, digits.x_train, digits.y_train, config=TrainConfig(epochs=3, lr=0.05, momentum=0.9),
          generator=torch.Generator().manual_seed(0))
    return model.eval()


def export_onnx(module: nn.Module, example: Tensor, path: Path, *, dynamic_batch: bool = True) -> Path:
    """``torch.onnx.export`` (the TorchScript-based exporter, which needs no onnxscript) with a dynamic batch."""
    axes = {"x": {0: "n"}, "y": {0: "n"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes=axes)
    return path


def export_torchscript(module: nn.Module, example: Tensor, path: Path) -> Path:
    """``torch.jit.trace`` + ``torch.jit.save`` (deprecated in torch 2.13, still what many teams ship)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(module, example), str(path))
    return path


def export_program(module: nn.Module, example: Tensor, path: Path, *, dynamic_batch: bool = True) -> Path:
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    torch.export.save(torch.export.export(module, (example,), dynamic_shapes=shapes), str(path))
    return path


class RawPixelsNHWC(nn.Module):
    """What a model file often is: the bare network (no normalisation of its own) taking ``(N, H, W, C)`` pixels
    in [0, 255], already normalised by its caller with ``mean``/``std`` in pixel units, answering softmax
    probabilities. With the spec ``range 0,255 / mean, std (x255) / layout nhwc / outputs probs`` it must
    answer as the checkpoint does."""

    def __init__(self, lenet: nn.Module) -> None:
        super().__init__()
        self.features, self.head = lenet.features, lenet.head

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.head(self.features(x.permute(0, 3, 1, 2))), dim=1)


def write_all(model: nn.Module, folder: Path) -> dict[str, Path]:
    """The model as a checkpoint, ONNX, TorchScript and torch.export file, plus the raw-pixel NHWC ONNX file."""
    folder.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(2, 1, 8, 8)
    files = {
        "checkpoint": save_checkpoint(model, folder / "victim.pt", dataset="digits"),
        "onnx": export_onnx(model, x, folder / "victim.onnx"),
        "torchscript": export_torchscript(model, x, folder / "victim.ts"),
        "export": export_program(model, x, folder / "victim.pt2"),
        "raw-onnx": export_onnx(RawPixelsNHWC(model), torch.zeros(2, 8, 8, 1), folder / "raw.onnx"),
    }
    return files
