"""Natural-image patches: an embedded stand-in for Knockoff Nets' natural-image transfer pool.

Example::

    pool = sample_patches(8)              # (88711, 1, 8, 8) grey patches in [0, 1], for 8×8 digit victims
    pool = sample_patches(28, channels=3)  # colour patches for a 28×28 RGB victim
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sample_patches"]


def sample_patches(
    size: int, *, scales: tuple[int, ...] = (1, 2, 4, 8, 16, 32), stride: int = 2, channels: int = 1
) -> Tensor:
    """Natural-image patches ``(M, channels, size, size)`` in [0, 1] cut from scikit-learn's two bundled
    sample photos (``load_sample_images``) at several scales, contrast-stretched per patch.

    An embedded stand-in for Knockoff Nets' natural-image pool (ImageNet in the original paper): images
    unrelated to the victim's task, available with no download. ``stride`` is in eighths of ``size``
    (2: a patch every quarter of its width); nearly flat patches are dropped.
    """
    if size < 1 or channels not in (1, 3):
        raise ValueError(f"sample_patches needs size >= 1 and channels 1 or 3, got size={size}, channels={channels}")
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
    if not patches:
        raise ValueError(f"the sample photos are smaller than {size}×{size} at every scale")
    out = torch.cat(patches)
    lo, hi = out.amin(dim=(1, 2, 3), keepdim=True), out.amax(dim=(1, 2, 3), keepdim=True)
    keep = (hi - lo).flatten() > 0.05  # drop flat patches
    return ((out - lo) / (hi - lo).clamp_min(1e-6))[keep]
