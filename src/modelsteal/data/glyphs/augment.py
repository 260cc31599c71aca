"""The per-image distortion of the glyph stand-ins, batched in torch: a random affine map with an elastic
distortion (Simard, Steinkraus & Platt, "Best practices for convolutional neural networks applied to visual
document analysis", ICDAR 2003), thicker or thinner strokes, MNIST's normalisation again, a small shift and a
blur."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modelsteal.data.glyphs.fonts import BOX, OVERSAMPLE, SIZE


@dataclass(frozen=True)
class Augmentation:
    """Per-image random distortion; every range is uniform and symmetric unless given as ``(low, high)``.

    ``rotation`` (degrees), ``shear`` (x += shear·y), ``scale`` (low, high; log-uniform; a glyph that ends
    up larger than the 20×20 box is shrunk back into it), ``aspect`` (width / height varies by a factor up to
    ``1 + aspect``), ``translate`` (pixels of the 28×28 frame, from the centred position),
    ``elastic_alpha`` / ``elastic_sigma`` (Simard et al. 2003's α and σ in pixels of the 28×28 frame; each
    image draws its α uniformly from ``[0, elastic_alpha]``), ``thickness`` (low, high): how many output pixels
    each side of a stroke grows (negative: shrinks) by grey dilation / erosion, done oversampled, ``blur``
    (the Gaussian's σ is drawn from ``[0, blur]`` output pixels).
    """

    rotation: float = 12.0
    shear: float = 0.3
    scale: tuple[float, float] = (0.8, 1.0)
    aspect: float = 0.15
    translate: float = 1.0
    elastic_alpha: float = 34.0
    elastic_sigma: float = 4.0
    thickness: tuple[float, float] = (-0.25, 1.0)
    blur: float = 0.6


NO_AUGMENTATION = Augmentation(
    rotation=0.0, shear=0.0, scale=(1.0, 1.0), aspect=0.0, translate=0.0, elastic_alpha=0.0, thickness=(0.0, 0.0),
    blur=0.0,
)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels, one row per σ (σ = 0 gives a delta)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x[None] ** 2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    return k / k.sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` (B, C, H, W) with one σ per image, zero padding."""
    b, c, h, w = x.shape
    k = _gaussian_kernels(sigma, radius).repeat_interleave(c, dim=0)  # (B·C, 2r+1)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(y, k[:, None, None, :], padding=(0, radius), groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], padding=(radius, 0), groups=b * c)
    return y.reshape(b, c, h, w)


def _morph(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation (``radius`` > 0) or erosion (< 0) by a (2|r|+1)² square, as separable running max / min
    over shifted copies (much faster than a stride-1 ``max_pool2d`` on CPU)."""
    op = torch.maximum if radius > 0 else torch.minimum
    for dim in (-1, -2):
        src, out = x, x.clone()
        n = x.shape[dim]
        for s in range(1, abs(radius) + 1):
            a, b = out.narrow(dim, s, n - s), out.narrow(dim, 0, n - s)
            a.copy_(op(a, src.narrow(dim, 0, n - s)))
            b.copy_(op(b, src.narrow(dim, s, n - s)))
        x = out
    return x


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


@functools.lru_cache(maxsize=8)
def _smooth_upsample(n: int, sigma: float) -> torch.Tensor:
    """The (n, SIZE) matrix that blurs a SIZE-long signal by a Gaussian of ``sigma`` (zero padding) and then
    upsamples it bilinearly to ``n`` samples (pixel centres, as ``align_corners=False``)."""
    i = torch.arange(SIZE, dtype=torch.float32)
    blur = torch.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2))
    blur = blur / torch.exp(-(torch.arange(-SIZE + 1, SIZE, dtype=torch.float32) ** 2) / (2 * sigma**2)).sum()
    src = ((torch.arange(n, dtype=torch.float32) + 0.5) * SIZE / n - 0.5).clamp(0, SIZE - 1)
    lo = src.floor().long().clamp(max=SIZE - 2)
    w = src - lo
    up = torch.zeros(n, SIZE)
    up[torch.arange(n), lo] = 1 - w
    up[torch.arange(n), lo + 1] += w
    return up @ blur


def _fit_and_centre(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """MNIST's normalisation again, after the distortion: a glyph that outgrew the ``BOX`` (ink above 0.1) is
    shrunk to fit it, and every glyph's centre of mass is moved to the frame's centre plus ``shift`` (B, 2)
    (x, y in normalised coordinates). Glyphs smaller than the box keep their size."""
    b, n = x.shape[0], x.shape[-1]
    idx = torch.arange(n)
    ink = x[:, 0] > 0.1

    def extent(m: torch.Tensor) -> torch.Tensor:
        first = torch.where(m, idx, n).amin(1)
        return (torch.where(m, idx, -1).amax(1) - first + 1).clamp_min(1)

    s = (BOX * OVERSAMPLE / torch.maximum(extent(ink.any(2)), extent(ink.any(1))).float()).clamp(max=1.0)
    mass = x.sum(dim=(1, 2, 3)).clamp_min(1e-8)
    coord = (idx.float() * 2 + 1) / n - 1
    com_y = (x[:, 0].sum(2) * coord).sum(1) / mass
    com_x = (x[:, 0].sum(1) * coord).sum(1) / mass
    gx = ((coord[None, :] - shift[:, 0, None]) / s[:, None] + com_x[:, None])[:, None, :].expand(b, n, n)
    gy = ((coord[None, :] - shift[:, 1, None]) / s[:, None] + com_y[:, None])[:, :, None].expand(b, n, n)
    return F.grid_sample(x, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="zeros", align_corners=False)


def _distort(base: torch.Tensor, aug: Augmentation, g: torch.Generator) -> torch.Tensor:
    """Augment a batch of oversampled glyphs ``base`` (B, 1, N, N) in ``[0, 1]``; returns (B, 1, 28, 28)."""
    b, n = base.shape[0], base.shape[-1]
    warp = bool(aug.rotation or aug.shear or aug.aspect or aug.translate or aug.elastic_alpha or aug.scale != (1, 1))
    angle = torch.deg2rad(_uniform(b, -aug.rotation, aug.rotation, g))
    shear = _uniform(b, -aug.shear, aug.shear, g)
    scale = torch.exp(_uniform(b, math.log(aug.scale[0]), math.log(aug.scale[1]), g))
    aspect = torch.exp(_uniform(b, -math.log1p(aug.aspect), math.log1p(aug.aspect), g)).sqrt()
    shift = _uniform(2 * b, -aug.translate, aug.translate, g).reshape(b, 2) * (2 / SIZE)
    alpha = _uniform(b, 0.0, aug.elastic_alpha, g)
    thick = _uniform(b, aug.thickness[0], aug.thickness[1], g) * OVERSAMPLE
    blur = _uniform(b, 0.0, aug.blur, g)
    noise = torch.rand(b, 2, SIZE, SIZE, generator=g) * 2 - 1 if aug.elastic_alpha > 0 else None

    # Forward map p_out = R · Shear · diag(sx, sy) · p_in in grid_sample's normalised coordinates (centre 0,
    # align_corners=False); the sampling grid is its inverse, evaluated at every output pixel centre. The
    # translation comes last, in _fit_and_centre.
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    sh = torch.eye(2).repeat(b, 1, 1)
    sh[:, 0, 1] = shear
    sc = torch.diag_embed(torch.stack([scale * aspect, scale / aspect], -1))
    inv = torch.linalg.inv(rot @ sh @ sc)
    c = (torch.arange(n, dtype=torch.float32) * 2 + 1) / n - 1
    if noise is not None:
        # Simard et al. (2003): uniform(-1, 1) displacement fields smoothed by a Gaussian of width σ and scaled
        # by α (output pixels); drawn at 28×28 and upsampled, both by one matrix on each side.
        m = _smooth_upsample(n, float(aug.elastic_sigma))
        disp = (m @ noise @ m.T) * (alpha * (2 / SIZE))[:, None, None, None]  # (B, 2, N, N)
    else:
        disp = torch.zeros(b, 2, 1, 1)
    gx = disp[:, 0] + (inv[:, 0, 0, None] * c)[:, None, :] + (inv[:, 0, 1, None] * c)[:, :, None]
    gy = disp[:, 1] + (inv[:, 1, 0, None] * c)[:, None, :] + (inv[:, 1, 1, None] * c)[:, :, None]
    grid = torch.stack([gx, gy], dim=-1)
    x = F.grid_sample(base, grid, mode="bilinear", padding_mode="zeros", align_corners=False) if warp else base.clone()

    # Stroke thickness: grey dilation (> 0) or erosion (< 0) by a square of radius r oversampled pixels, with a
    # fractional r blending the two neighbouring whole radii.
    low = thick.floor()
    frac = (thick - low)[:, None, None, None]
    for level in low.unique().tolist():
        idx = (low == level).nonzero().flatten()
        xs = x[idx]
        a = _morph(xs, int(level)) if level != 0 else xs
        if level < 0:  # never erode a thin glyph away: keep it as it is where erosion takes half its ink
            thin = a.sum(dim=(1, 2, 3)) < 0.5 * xs.sum(dim=(1, 2, 3))
            a = torch.where(thin[:, None, None, None], xs, a)
        z = _morph(xs, int(level) + 1) if level != -1 else xs
        x[idx] = a + frac[idx] * (z - a)

    if warp:
        x = _fit_and_centre(x, shift)
    x = F.avg_pool2d(x, OVERSAMPLE)
    if aug.blur > 0:
        x = _blur(x, blur, 2)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, x / peak.clamp_min(1e-8), x)
