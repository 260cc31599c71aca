"""Checkpoints that record everything later commands need: architecture, dataset, preprocessing, weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modelsteal.models.builders import Classifier, build_model

FORMAT = "modelsteal-checkpoint-v1"


def save_checkpoint(
    model: Classifier,
    path: str | Path,
    *,
    dataset: str,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save a model built by :func:`build_model` with its architecture, dataset and preprocessing."""
    if not hasattr(model, "arch"):
        raise ValueError("save_checkpoint needs a model made by modelsteal.models.build_model")
    norm = model.normalize
    meta: dict[str, Any] = {
        "format": FORMAT,
        "arch": model.arch,
        "dataset": dataset,
        "input_shape": list(model.input_shape),
        "num_classes": model.num_classes,
        "mean": norm.mean.flatten().tolist() if hasattr(norm, "mean") else None,
        "std": norm.std.flatten().tolist() if hasattr(norm, "std") else None,
        "metrics": dict(metrics or {}),
        **(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"meta": meta, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path, *, device: str | torch.device | None = None) -> tuple[Classifier, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns ``(model in eval mode, metadata)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (create one with `modelsteal train`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise ValueError(f"{path} is not a readable modelsteal checkpoint: {e}") from None
    if not isinstance(blob, dict) or blob.get("meta", {}).get("format") != FORMAT:
        raise ValueError(f"{path} is not a modelsteal checkpoint (expected format {FORMAT})")
    meta = blob["meta"]
    model = build_model(
        meta["arch"],
        input_shape=meta["input_shape"],
        num_classes=meta["num_classes"],
        mean=meta.get("mean"),
        std=meta.get("std"),
    )
    if meta.get("module_fix"):  # e.g. trained with DP-SGD: BatchNorm was replaced as Opacus does it
        from modelsteal.models.fixes import MODULE_FIXES

        model, _ = MODULE_FIXES[meta["module_fix"]](model)
    model.load_state_dict(blob["state_dict"])
    if device is not None:
        model = model.to(device)
    return model.eval(), meta
