"""The attacker's data: transfer pools for Knockoff-style attacks and seed sets for JBDA-style ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from modelsteal.attacks.augment import gaussian_noise, random_crop_flip
from modelsteal.data import DatasetSplits, load_dataset
from modelsteal.experiment.config import TransferConfig


def sample_patches(
    size: int, *, scales: tuple[int, ...] = (1, 2, 4, 8, 16, 32), stride: int = 2, channels: int = 1
) -> Tensor:
    """Natural-image patches ``(M, channels, size, size)`` in [0, 1] cut from scikit-learn's two bundled
    sample photos (``load_sample_images``) at several scales, contrast-stretched per patch.

    An embedded stand-in for Knockoff Nets' natural-image pool (ImageNet in the original paper): images
    unrelated to the victim's task, available with no download.
    """
    from sklearn.datasets import load_sample_images

    patches = []
    for im in load_sample_images().images:
        img = torch.tensor(im, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
        img = img.mean(dim=1, keepdim=True) if channels == 1 else img
        for s in scales:
            small = F.avg_pool2d(img, s) if s > 1 else img
            if min(small.shape[-2:]) < size:
                continue
            p = small.unfold(2, size, stride * size // 8 or 1).unfold(3, size, stride * size // 8 or 1)
            patches.append(p.permute(0, 2, 3, 1, 4, 5).reshape(-1, img.shape[1], size, size))
    out = torch.cat(patches)
    lo, hi = out.amin(dim=(1, 2, 3), keepdim=True), out.amax(dim=(1, 2, 3), keepdim=True)
    keep = (hi - lo).flatten() > 0.05  # drop flat patches
    return ((out - lo) / (hi - lo).clamp_min(1e-6))[keep]


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
        name = cfg.dataset or victim_data.name
        data = victim_data if name == victim_data.name else load_dataset(name, data_dir=cfg.data_dir)
        if cfg.split not in ("train", "val", "test", "all"):
            raise ValueError(f"transfer.split must be train, val, test or all, got {cfg.split!r}")
        if cfg.split == "all":  # a dataset unrelated to the victim's may be used whole
            x = torch.cat([data.x_train, data.x_val, data.x_test])
            labels = torch.cat([data.y_train, data.y_val, data.y_test])
        else:
            x, labels = getattr(data, f"x_{cfg.split}"), getattr(data, f"y_{cfg.split}")
        if cfg.classes is not None:
            mask = torch.isin(labels, torch.tensor(cfg.classes))
            x, labels = x[mask], labels[mask]
        if tuple(x.shape[1:]) != shape:
            x = F.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False) if x.shape[1] == shape[0] else x
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"transfer dataset {name} has inputs {tuple(x.shape[1:])}, the victim takes {shape}")
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
