"""Checkpoints that record everything later commands need: architecture, dataset, preprocessing, weights."""

from __future__ import annotations

import bz2
import lzma
import zipfile
import zlib
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
    """Load a checkpoint written by :func:`save_checkpoint`; returns ``(model in eval mode, metadata)``.

    Anything else is a one-line ``ValueError`` saying what the file is when that can be told without
    unpickling it: a pickled scikit-learn model (pointing to ``modelsteal tramer``), a torch file that is
    not a modelsteal checkpoint, or not a torch file at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (create one with `modelsteal train`)")
    kind = sniff_model_file(path)
    if kind == "sklearn":
        raise ValueError(f"{path} is a pickled scikit-learn model, not a modelsteal checkpoint; steal it with "
                         f"`modelsteal tramer --victim {path}`")
    if kind != "torch":
        raise ValueError(f"{path} is not a modelsteal checkpoint (those are torch files written by "
                         "`modelsteal train`)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not our checkpoint"
        raise ValueError(f"{path} is a torch file but not a modelsteal checkpoint ({_why_unreadable(e)})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("meta"), dict) or blob["meta"].get("format") != FORMAT:
        raise ValueError(f"{path} is a torch file but not a modelsteal checkpoint (expected format {FORMAT}, "
                         "as written by `modelsteal train`)")
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


def _why_unreadable(error: Exception) -> str:
    text = str(error).strip()
    if "weights_only" in text or "Weights only load failed" in text:
        return "it pickles objects other than tensors, which modelsteal does not unpickle"
    return text.splitlines()[0][:160] if text else type(error).__name__


# Bytes enough to see the first class a pickle names (scikit-learn's come first in a joblib file).
_SNIFF_BYTES = 1 << 16


def sniff_model_file(path: str | Path) -> str:
    """What a model file is, from its first bytes and without unpickling: ``"torch"``, ``"sklearn"`` or
    ``"unknown"``.

    ``torch.save`` writes a zip archive holding ``data.pkl``; ``joblib.dump`` and ``pickle.dump`` of a
    scikit-learn estimator write a pickle (possibly zlib/gzip/bz2/xz-compressed) whose first global is a
    ``sklearn.`` class.
    """
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return "torch" if any(n.endswith("data.pkl") for n in archive.namelist()) else "unknown"
    return "sklearn" if b"sklearn." in _decompressed_head(head) else "unknown"


def _decompressed_head(head: bytes) -> bytes:
    """The start of the stream ``head`` begins, decompressed when it starts like a compressed stream."""
    try:
        if head[:1] == b"\x78" or head[:2] == b"\x1f\x8b":  # zlib (joblib's default) or gzip
            return zlib.decompressobj(wbits=47).decompress(head, _SNIFF_BYTES)
        if head[:3] == b"BZh":
            return bz2.BZ2Decompressor().decompress(head, _SNIFF_BYTES)
        if head[:6] == b"\xfd7zXZ\x00" or head[:1] == b"\x5d":  # xz, or raw lzma (joblib's "lzma")
            return lzma.LZMADecompressor().decompress(head, _SNIFF_BYTES)
    except (zlib.error, OSError, EOFError, lzma.LZMAError):
        pass
    return head
