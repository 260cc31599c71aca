"""Batched image augmentations used by attackers (training-time and query-time)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(x: Tensor, generator: torch.Generator, *, padding: int = 2, flip: bool = True) -> Tensor:
    """Random crop after zero-padding by ``padding`` and random horizontal flip, one draw per image.

    The "nquery+aug" countermeasure of Orekondy et al. (ICLR 2020, Sec. 5.2.3). Vectorised with one
    gather; offsets are drawn from ``generator`` on the CPU so results do not depend on the device.
    """
    if x.ndim != 4:
        raise ValueError(f"random_crop_flip needs (N, C, H, W) images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows,
        cols,
    ]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        out = torch.where(mask, out.flip(-1), out)
    return out


def gaussian_noise(x: Tensor, generator: torch.Generator, *, sigma: float = 0.1) -> Tensor:
    """Add ``N(0, σ²)`` noise and clip to the valid ``[0, 1]`` input range."""
    noise = torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)
    return (x + sigma * noise).clamp(0, 1)


QUERY_AUGMENTATIONS = {"crop-flip": random_crop_flip, "noise": gaussian_noise}
