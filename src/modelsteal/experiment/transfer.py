"""The attacker's data: transfer pools for Knockoff-style attacks and seed sets for JBDA-style ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from modelsteal.attacks.augment import gaussian_noise, random_crop_flip
from modelsteal.data import DatasetSplits, load_dataset, sample_patches
from modelsteal.experiment.config import TransferConfig


def _split(data: DatasetSplits, split: str) -> tuple[Tensor, Tensor]:
    if split == "all":  # a dataset unrelated to the victim's may be used whole
        return (torch.cat([data.x_train, data.x_val, data.x_test]), torch.cat([data.y_train, data.y_val, data.y_test]))
    return getattr(data, f"x_{split}"), getattr(data, f"y_{split}")


def build_transfer_set(
    cfg: TransferConfig, *, victim_data: DatasetSplits, seed: int = 0
) -> tuple[Tensor, Tensor | None]:
    """The attacker's query pool ``(x, labels or None)`` described by ``cfg``, shaped like the victim's inputs."""
    g = torch.Generator().manual_seed(seed)
    shape = victim_data.input_shape
    labels: Tensor | None = None
    if cfg.source == "sample-patches":
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"sample-patches needs square image inputs, the victim takes {shape}")
        x = sample_patches(shape[1], channels=shape[0])
    elif cfg.source == "dataset":
        names = cfg.dataset if isinstance(cfg.dataset, list) else [cfg.dataset or victim_data.name]
        if cfg.split not in ("train", "val", "test", "all"):
            raise ValueError(f"transfer.split must be train, val, test or all, got {cfg.split!r}")
        parts, part_labels, offset = [], [], 0
        for name in names:  # several datasets are joined, their classes numbered one after the other
            data = victim_data if name == victim_data.name else load_dataset(name, data_dir=cfg.data_dir)
            xs, ys = _split(data, cfg.split)
            if cfg.classes is not None:
                mask = torch.isin(ys, torch.tensor(cfg.classes))
                xs, ys = xs[mask], ys[mask]
            if xs.shape[1] == shape[0] and tuple(xs.shape[2:]) != tuple(shape[1:]):
                xs = F.interpolate(xs, size=shape[1:], mode="bilinear", align_corners=False)
            if tuple(xs.shape[1:]) != shape:
                raise ValueError(f"transfer dataset {name} has inputs {tuple(xs.shape[1:])}, the victim takes {shape}")
            parts.append(xs)
            part_labels.append(ys + offset)
            offset += data.num_classes
        x, labels = torch.cat(parts), torch.cat(part_labels)
    else:
        raise ValueError(f"unknown transfer source {cfg.source!r}; known: dataset, sample-patches")
    if cfg.copies > 1 or cfg.noise > 0 or cfg.shift > 0:
        x = x.repeat(cfg.copies, 1, 1, 1)
        labels = labels.repeat(cfg.copies) if labels is not None else None
        if cfg.shift > 0:
            x = random_crop_flip(x, g, padding=cfg.shift, flip=False)
        if cfg.noise > 0:
            x = gaussian_noise(x, g, sigma=cfg.noise)
    if cfg.size is not None and cfg.size < len(x):
        idx = torch.randperm(len(x), generator=g)[: cfg.size]
        x = x[idx]
        labels = labels[idx] if labels is not None else None
    if len(x) == 0:
        raise ValueError("the transfer set is empty (check transfer.classes and transfer.split)")
    return x.contiguous(), labels


def seed_set(cfg: TransferConfig, *, victim_data: DatasetSplits, seed: int = 0) -> Tensor:
    """``cfg.seed_size`` images of the victim's validation split (the synthetic attacks' seed set)."""
    g = torch.Generator().manual_seed(seed)
    n = min(cfg.seed_size, len(victim_data.x_val))
    return victim_data.x_val[torch.randperm(len(victim_data.x_val), generator=g)[:n]].contiguous()


def queried_rows(x: Tensor, queried: Tensor) -> Tensor:
    """Which rows of ``x`` (``(N, ...)``) are, bit for bit, among the ``queried`` inputs: a boolean ``(N,)``.
    Measuring a clone on inputs it queried is not a held-out measurement; callers leave these rows out."""
    if len(queried) == 0 or len(x) == 0:
        return torch.zeros(len(x), dtype=torch.bool)
    seen = {row.tobytes() for row in queried.detach().cpu().contiguous().numpy().reshape(len(queried), -1)}
    rows = x.detach().cpu().contiguous().to(queried.dtype).numpy().reshape(len(x), -1)
    return torch.tensor([row.tobytes() in seen for row in rows], dtype=torch.bool)
