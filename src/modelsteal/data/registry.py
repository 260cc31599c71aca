"""Dataset registry. Every image dataset becomes explicit train / validation / test splits of ``[0, 1]``
float tensors shaped ``(N, C, H, W)``; model selection uses the validation split, never the test split.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelsteal._registry import Registry


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says how to get them."""


@dataclass(frozen=True)
class RawImages:
    """What a loader returns: images in ``[0, 1]`` and labels, with the official test split if any."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetSplits:
    """Train / validation / test splits of one dataset, with what a model needs to know about it."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    classes: tuple[str, ...] = field(default=())

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def mean(self) -> list[float]:
        return self.x_train.mean(dim=(0, 2, 3)).tolist()

    @property
    def std(self) -> list[float]:
        return self.x_train.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} val / {len(self.x_test)} test, "
            f"{self.num_classes} classes, input {self.input_shape}"
        )


Loader = Callable[..., RawImages]
# importing modelsteal.data.images registers the built-ins (and, through it, the glyph datasets)
_LOADERS: Registry[Any] = Registry("dataset", package="modelsteal.data.images")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register a loader ``(data_dir: Path | None, download: bool) -> RawImages`` under ``name``."""
    return _LOADERS.register(name)


def available_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    return _LOADERS.names()


def data_root() -> Path:
    """Where downloaded data goes: ``$MODELSTEAL_DATA`` or ``~/.cache/modelsteal``."""
    return Path(os.environ.get("MODELSTEAL_DATA", Path.home() / ".cache" / "modelsteal"))


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)`` with about ``fraction`` of every class held out."""
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        held.append(idx[: int(round(fraction * len(idx)))])
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=int)
    mask = np.ones(len(y), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """Load a registered dataset as explicit splits.

    The official test split is used when the dataset has one; otherwise ``test_fraction`` of each class is
    held out. ``val_fraction`` of the remaining training data becomes the validation split. Splits are
    deterministic given ``seed``.
    """
    loader = _LOADERS.get(name)  # ValueError naming the known datasets
    key = name.strip().lower().replace("_", "-")
    if not 0 <= val_fraction < 1 or not 0 < test_fraction < 1:
        raise ValueError(f"fractions must lie in [0, 1): val={val_fraction}, test={test_fraction}")
    raw = loader(data_dir=Path(data_dir) if data_dir else None, download=download)
    rng = np.random.default_rng(seed)
    x, y = raw.x_train, raw.y_train
    if raw.x_test is None:
        keep, test = _stratified_split(y, test_fraction, rng)
        x_test, y_test, x, y = x[test], y[test], x[keep], y[keep]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    keep, val = _stratified_split(y, val_fraction, rng)

    def t(a: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)

    def lab(a: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(a), dtype=torch.long)

    num_classes = int(max(y.max(), y_test.max()) + 1)
    return DatasetSplits(
        name=key,
        x_train=t(x[keep]),
        y_train=lab(y[keep]),
        x_val=t(x[val]),
        y_val=lab(y[val]),
        x_test=t(x_test),
        y_test=lab(y_test),
        num_classes=num_classes,
        classes=raw.classes or tuple(str(i) for i in range(num_classes)),
    )
