"""``letters`` and ``kana``: offline stand-ins for EMNIST-Letters and KMNIST, rendered from installed fonts.

These are **not** EMNIST (Cohen et al., 2017, "EMNIST: an extension of MNIST to handwritten letters") or
KMNIST (Clanuwat et al., 2018, "Deep Learning for Classical Japanese Literature"); neither can be downloaded
here. They borrow those datasets' conventions: 28×28 grey images in ``[0, 1]``, a white glyph on black;
``letters`` has EMNIST-Letters' 26 classes with upper and lower case merged in each class, and ``kana`` has
KMNIST's ten hiragana classes in KMNIST's order and KMNIST's sizes (6,000 / 1,000 per class).

How an image is made:

1. Once per (font, character), Pillow renders the glyph large, it is cropped to its ink, scaled so that its
   longer side fills a ``20·F`` box (aspect ratio kept) and placed in a ``28·F`` frame so that its centre of
   mass is at the frame's centre (MNIST's normalisation, at ``F`` = :data:`OVERSAMPLE` times the final size;
   offsets are whole multiples of ``F``, so after downsampling the glyph fits a 20×20 box).
2. Per image, in batches, in torch: one ``grid_sample`` applies a random affine map (rotation, x-shear,
   scale, aspect) together with an elastic distortion (a uniform random displacement field smoothed by a
   Gaussian of width σ and scaled by α; Simard, Steinkraus & Platt, 2003, "Best practices for convolutional
   neural networks applied to visual document analysis"); a running max / min (max-pooling) thickens or
   thins the strokes; a second ``grid_sample`` repeats MNIST's normalisation on the distorted glyph (shrunk
   to the 20×20 box if it outgrew it, centre of mass to the frame's centre) and adds a small random
   translation; then the image is averaged down ``F``× to 28×28, blurred by a Gaussian, scaled to a peak of
   1 and quantised to 1/255 steps (like MNIST's bytes).

Everything random comes from ``numpy.random.default_rng(seed)`` (which font and case each image uses) and a
``torch.Generator`` seeded with ``seed`` (the distortions), so a seed fixes the images bit for bit. Sets are
cached as ``<name>-<key>.npz`` with a ``.json`` beside them (classes, sizes, seeds, generator version, the font
files used and those dropped) under ``data_dir`` or ``$MODELSTEAL_DATA/glyphs``.

Test splits: ``letters``' official test split is rendered from *held-out fonts* (every fifth font of each
style group, in path order; no font is in both splits); ``kana`` has too few distinct Japanese fonts for
that, so its test split uses the training fonts with a different seed.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modelsteal.data.registry import DatasetNotFoundError, RawImages, data_root, register_dataset

GENERATOR_VERSION = 1  # bump when a change alters the images a seed gives (it is part of the cache key)
SIZE = 28  # output frame (pixels)
BOX = 20  # the glyph's longer side before augmentation (pixels), as in MNIST
OVERSAMPLE = 2  # base glyphs and the augmentation work at OVERSAMPLE × SIZE
RENDER_PX = 128  # Pillow font size for the base render (downscaled to BOX·OVERSAMPLE afterwards)
NEAR_DUPLICATE = 0.02  # fonts whose 28×28 glyphs differ by less (mean absolute difference) count as one
_BATCH = 512  # images per augmentation batch; part of what a seed means, so fixed

LETTER_CLASSES: tuple[str, ...] = tuple("abcdefghijklmnopqrstuvwxyz")
KANA_CLASSES: tuple[str, ...] = ("お", "き", "す", "つ", "な", "は", "ま", "や", "れ", "を")  # KMNIST's order

FONT_DIRS: tuple[Path, ...] = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")


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


# ----------------------------------------------------------------------------------------------- fonts


def system_font_files() -> list[Path]:
    """Every ``.ttf`` / ``.otf`` / ``.ttc`` under :data:`FONT_DIRS`, symlinks resolved, sorted, no duplicates."""
    found: set[Path] = set()
    for root in FONT_DIRS:
        for p in glob.glob(str(root / "**" / "*"), recursive=True):
            if p.lower().endswith(FONT_SUFFIXES) and os.path.isfile(p):
                found.add(Path(os.path.realpath(p)))
    return sorted(found)


def matplotlib_font_files() -> list[Path]:
    """The DejaVu fonts that matplotlib ships (Latin only): the fallback for ``letters``."""
    import matplotlib

    d = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return sorted(p for p in d.glob("DejaVu*.ttf") if "Display" not in p.name)


@functools.lru_cache(maxsize=16)
def _pil_font(path: Path, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(path), size=size, index=0)


def _render_ink(path: Path, ch: str) -> np.ndarray | None:
    """``ch`` rendered at :data:`RENDER_PX`, cropped to its ink (uint8), or None if nothing is drawn."""
    from PIL import Image, ImageDraw

    font = _pil_font(path, RENDER_PX)
    left, top, right, bottom = font.getbbox(ch)
    pad = RENDER_PX // 4
    im = Image.new("L", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad), 0)
    ImageDraw.Draw(im).text((pad - left, pad - top), ch, fill=255, font=font)
    box = im.getbbox()
    return None if box is None else np.asarray(im.crop(box), dtype=np.uint8)


def missing_chars(path: Path, chars: str) -> str:
    """The characters of ``chars`` that ``path`` has no glyph for (Pillow would draw the ``.notdef`` box).

    The font's character map is read with fontTools where installed (a matplotlib dependency); otherwise
    a render identical to that of a private-use code point (the font's ``.notdef`` box) counts as missing.
    A glyph that is mapped but draws nothing is caught by :func:`base_glyph` / :func:`select_fonts`.
    """
    try:
        from fontTools.ttLib import TTFont

        tt = TTFont(str(path), lazy=True, fontNumber=0)
        cmap = tt.getBestCmap() or {}
        tt.close()
        absent = {c for c in chars if ord(c) not in cmap}
    except ImportError:  # pragma: no cover - fontTools ships with matplotlib
        notdef = _render_ink(path, "\ue8f3")
        absent = {c for c in chars if notdef is not None and np.array_equal(_render_ink(path, c), notdef)}
    return "".join(c for c in chars if c in absent)


@functools.lru_cache(maxsize=8192)
def base_glyph(path: Path, ch: str) -> np.ndarray:
    """The normalised oversampled glyph (uint8, ``SIZE·F`` square): longer side ``BOX·F``, centre of mass at
    the frame's centre, offsets on multiples of ``F`` (MNIST's normalisation; Cohen et al. 2017 keep the
    aspect ratio the same way)."""
    from PIL import Image

    f, n = OVERSAMPLE, SIZE * OVERSAMPLE
    ink = _render_ink(Path(path), ch)
    if ink is None:
        raise ValueError(f"{path} draws nothing for {ch!r}")
    h, w = ink.shape
    s = BOX * f / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    g = np.asarray(Image.fromarray(ink).resize(size, Image.BOX), dtype=np.float32)
    mass = g.sum()
    cy = float((g.sum(axis=1) * np.arange(g.shape[0])).sum() / mass)
    cx = float((g.sum(axis=0) * np.arange(g.shape[1])).sum() / mass)
    centre = (n - 1) / 2
    oy = min(max(0, f * round((centre - cy) / f)), f * ((n - g.shape[0]) // f))
    ox = min(max(0, f * round((centre - cx) / f)), f * ((n - g.shape[1]) // f))
    out = np.zeros((n, n), dtype=np.uint8)
    out[oy : oy + g.shape[0], ox : ox + g.shape[1]] = np.clip(np.rint(g), 0, 255).astype(np.uint8)
    return out


def _thumbnails(path: Path, chars: str) -> np.ndarray:
    """The normalised glyphs of ``chars`` at 28×28, in ``[0, 1]`` (for comparing fonts)."""
    big = np.stack([base_glyph(path, c) for c in chars]).astype(np.float32) / 255
    return big.reshape(len(chars), SIZE, OVERSAMPLE, SIZE, OVERSAMPLE).mean(axis=(2, 4))


@dataclass(frozen=True)
class FontSet:
    """Fonts chosen for a dataset: ``groups`` maps a style ("handwriting", "print", "brush") to font files."""

    groups: dict[str, list[Path]]
    dropped: dict[str, str] = field(default_factory=dict)  # font file -> why it was not used
    fallback: bool = False

    @property
    def fonts(self) -> list[Path]:
        return [p for g in self.groups.values() for p in g]

    def weights(self) -> list[float]:
        """Equal total weight per non-empty style group, split equally between its fonts."""
        groups = [g for g in self.groups.values() if g]
        return [1.0 / (len(groups) * len(g)) for g in groups for _ in g]


def select_fonts(
    files: Sequence[Path], *, groups: dict[str, Sequence[str]], chars: str, exclude: Sequence[str] = ()
) -> FontSet:
    """Fonts among ``files`` whose path contains one of a group's patterns (case-insensitive), that have a
    glyph for every character of ``chars``, and that do not draw nearly like a font kept before them (mean
    absolute difference of the normalised 28×28 glyphs below :data:`NEAR_DUPLICATE`: the same design under
    another name, or a proportional twin)."""
    chosen: dict[str, list[Path]] = {g: [] for g in groups}
    dropped: dict[str, str] = {}
    seen: dict[Path, np.ndarray] = {}
    for p in files:
        low = p.as_posix().lower()
        group = next((g for g, pats in groups.items() if any(s.lower() in low for s in pats)), None)
        if group is None or any(s.lower() in low for s in exclude):
            continue
        try:
            absent = missing_chars(p, chars)
            look = None if absent else _thumbnails(p, chars)
        except Exception as e:  # an unreadable font, or a glyph that draws nothing: skipped, not fatal
            dropped[str(p)] = f"unusable: {type(e).__name__}: {e}"
            continue
        if look is None:
            dropped[str(p)] = f"no glyph for {absent}"
            continue
        twin = next((q for q, t in seen.items() if float(np.abs(look - t).mean()) < NEAR_DUPLICATE), None)
        if twin is not None:
            dropped[str(p)] = f"draws nearly the same glyphs as {twin}"
            continue
        seen[p] = look
        chosen[group].append(p)
    return FontSet(groups=chosen, dropped=dropped)


# ------------------------------------------------------------------------------------------ rendering


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


def render_glyphs(
    classes: Sequence[str],
    fonts: Sequence[str | Path],
    *,
    per_class: int,
    seed: int,
    augment: Augmentation | None = Augmentation(),
    font_weights: Sequence[float] | None = None,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``per_class`` images of every class; returns ``x`` float32 (N, 1, 28, 28) and ``y`` int64.
    ``progress``: the label of a progress bar on stderr (fonts' base glyphs, then images), or none.

    ``classes[i]`` is a string of the characters that stand for class ``i`` (``"aA"``: either case); each
    image draws one of them uniformly and a font from ``fonts`` (with probabilities ``font_weights``,
    default uniform). Every font must have every character (see :func:`missing_chars`). ``augment=None``
    gives the plain normalised glyphs. Images come in a random order. Deterministic for a seed.
    """
    fonts = [Path(f) for f in fonts]
    if not fonts or not classes or per_class < 1:
        raise ValueError("render_glyphs needs at least one font, one class and per_class >= 1")
    chars = sorted({c for cls in classes for c in cls})
    index = {c: i for i, c in enumerate(chars)}
    pairs = [(f, c) for f in fonts for c in chars]
    bar = _progress(progress, total=len(pairs) + per_class * len(classes))
    bases = []
    for f, c in pairs:
        bases.append(base_glyph(f, c))
        if bar is not None:
            bar.update(1)
    stack = torch.from_numpy(np.stack(bases))  # (fonts·chars, N, N)

    rng = np.random.default_rng(seed)
    p = None if font_weights is None else np.asarray(font_weights, dtype=np.float64) / np.sum(font_weights)
    y = np.repeat(np.arange(len(classes), dtype=np.int64), per_class)
    font_of = rng.choice(len(fonts), size=len(y), p=p)
    char_of = [np.array([index[ch] for ch in cls])[rng.integers(0, len(cls), per_class)] for cls in classes]
    glyph = font_of * len(chars) + np.concatenate(char_of)
    order = rng.permutation(len(y))
    y, glyph = y[order], torch.from_numpy(glyph[order])

    g = torch.Generator().manual_seed(seed)
    aug = augment or NO_AUGMENTATION
    out = np.empty((len(y), 1, SIZE, SIZE), dtype=np.uint8)
    try:
        with torch.no_grad():
            for start in range(0, len(y), _BATCH):
                base = stack[glyph[start : start + _BATCH]].unsqueeze(1).float() / 255
                x = _distort(base, aug, g)
                out[start : start + len(x)] = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                if bar is not None:
                    bar.update(len(x))
    finally:
        if bar is not None:
            bar.close()
    return out.astype(np.float32) / 255, y


def _progress(label: str | None, *, total: int):  # noqa: ANN202
    """A tqdm bar on stderr counting glyphs (``None`` without a label)."""
    if not label:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="glyph", file=sys.stderr)


# --------------------------------------------------------------------------------- datasets and cache


@dataclass(frozen=True)
class GlyphSpec:
    """What a registered glyph dataset is: classes, where its fonts come from, sizes and how it splits."""

    name: str
    classes: tuple[str, ...]  # class names
    chars: tuple[str, ...]  # per class, the characters drawn for it
    groups: dict[str, tuple[str, ...]]  # style -> path patterns
    exclude: tuple[str, ...]
    train_per_class: int
    test_per_class: int
    held_out_test_fonts: bool  # test split from held-out fonts (else: same fonts, another seed)
    fallback: bool  # may fall back to matplotlib's DejaVu fonts
    packages: tuple[str, ...]  # Debian packages that provide the fonts
    stand_in_for: str  # the real dataset whose conventions it follows


LETTERS = GlyphSpec(
    name="letters",
    classes=LETTER_CLASSES,
    chars=tuple(c + c.upper() for c in LETTER_CLASSES),
    groups={
        "handwriting": ("fifthhorseman/dkg", "/breip/", "/bwht/", "/femkeklaver/", "/humor-sans/", "/dancingscript/"),
        "print": ("/DejaVuSans", "/DejaVuSerif", "/liberation/", "/urw-base35/"),
    },
    exclude=("StandardSymbols", "D050000L"),  # symbol and dingbat fonts map Latin code points to pictures
    train_per_class=2400,
    test_per_class=400,
    held_out_test_fonts=True,
    fallback=True,
    packages=(
        "fonts-dkg-handwriting", "fonts-breip", "fonts-bwht", "fonts-femkeklaver", "fonts-humor-sans",
        "fonts-dancingscript", "fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation", "fonts-urw-base35",
    ),
    stand_in_for="EMNIST-Letters",
)
KANA = GlyphSpec(
    name="kana",
    classes=KANA_CLASSES,
    chars=KANA_CLASSES,
    groups={
        "brush": ("/aoyagi-kouzan-t/", "/aoyagi-soseki/"),
        "print": ("/ipafont-", "/ipaexfont-", "/horai-umefont/", "/hanazono/"),
    },
    exclude=(),
    train_per_class=6000,
    test_per_class=1000,
    held_out_test_fonts=False,
    fallback=False,
    packages=(
        "fonts-ipafont", "fonts-ipaexfont", "fonts-aoyagi-kouzan-t", "fonts-aoyagi-soseki",
        "fonts-horai-umefont", "fonts-hanazono",
    ),
    stand_in_for="KMNIST",
)
_WARNED: set[str] = set()


def _candidates(spec: GlyphSpec) -> tuple[list[Path], bool]:
    """Font files matching the spec's patterns (not yet checked), and whether they are matplotlib's fallback."""
    pats = [s.lower() for ps in spec.groups.values() for s in ps]
    skip = [s.lower() for s in spec.exclude]
    files = [
        p
        for p in system_font_files()
        if any(s in p.as_posix().lower() for s in pats) and not any(s in p.as_posix().lower() for s in skip)
    ]
    if files or not spec.fallback:
        return files, False
    return matplotlib_font_files(), True


def _pillow_version() -> str:
    import PIL

    return PIL.__version__


def _install_hint(spec: GlyphSpec) -> str:
    return f"run `make data` (or `apt-get install {' '.join(spec.packages)}`)"


def spec_fonts(spec: GlyphSpec) -> FontSet:
    """The checked fonts of a dataset: the system's, or matplotlib's DejaVu where the spec allows it."""
    files, fallback = _candidates(spec)
    chars = "".join(spec.chars)
    if fallback:
        fs = select_fonts(files, groups={"print": ("dejavu",)}, chars=chars)
        fs = FontSet(groups=fs.groups, dropped=fs.dropped, fallback=True)
    else:
        fs = select_fonts(files, groups=spec.groups, chars=chars, exclude=spec.exclude)
    if not fs.fonts:
        raise DatasetNotFoundError(
            f"no installed font has all of the {spec.name!r} characters {chars}: {_install_hint(spec)}"
        )
    return fs


def split_fonts(fs: FontSet, *, every: int = 5) -> tuple[FontSet, FontSet]:
    """(train, test) fonts: every ``every``-th font of each style group, in path order, is held out."""
    train = {g: [p for i, p in enumerate(ps) if i % every != every - 1] for g, ps in fs.groups.items()}
    test = {g: [p for i, p in enumerate(ps) if i % every == every - 1] for g, ps in fs.groups.items()}
    return FontSet(groups=train, dropped=fs.dropped), FontSet(groups=test, dropped=fs.dropped)


def _cache_key(spec: GlyphSpec, files: Sequence[Path], seed: int, fallback: bool) -> dict:
    return {
        "name": spec.name,
        "classes": list(spec.classes),
        "chars": list(spec.chars),
        "train_per_class": spec.train_per_class,
        "test_per_class": spec.test_per_class,
        "held_out_test_fonts": spec.held_out_test_fonts,
        "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "augmentation": asdict(Augmentation()),
        "oversample": OVERSAMPLE,
        "render_px": RENDER_PX,
        "fallback_fonts": fallback,
        "candidate_fonts": [[str(p), p.stat().st_size] for p in files],
    }


def cache_paths(spec: GlyphSpec, *, data_dir: Path | None = None, seed: int = 0) -> tuple[Path, Path]:
    """Where a dataset's arrays (``.npz``) and description (``.json``) are cached, given the installed fonts:
    ``data_dir`` or ``$MODELSTEAL_DATA/glyphs``, named ``<name>-<hash of the settings and font files>``."""
    files, fallback = _candidates(spec)
    digest = hashlib.sha256(json.dumps(_cache_key(spec, files, seed, fallback), sort_keys=True).encode())
    root = Path(data_dir) if data_dir is not None else data_root() / "glyphs"
    stem = f"{spec.name}-{digest.hexdigest()[:12]}"
    return root / f"{stem}.npz", root / f"{stem}.json"


def build_glyph_dataset(spec: GlyphSpec, *, data_dir: Path | None = None, seed: int = 0) -> RawImages:
    """``spec``'s images from the cache, rendered and cached first if they are not there yet."""
    files, fallback = _candidates(spec)
    if fallback and spec.name not in _WARNED:
        _WARNED.add(spec.name)
        warnings.warn(
            f"modelsteal: no system fonts for {spec.name!r}; rendering it from matplotlib's DejaVu fonts only "
            f"({_install_hint(spec)} for handwriting fonts)",
            stacklevel=2,
        )
    npz, meta_path = cache_paths(spec, data_dir=data_dir, seed=seed)
    if npz.exists() and meta_path.exists():
        with np.load(npz) as z:
            return RawImages(
                x_train=z["x_train"].astype(np.float32) / 255,
                y_train=z["y_train"].astype(np.int64),
                x_test=z["x_test"].astype(np.float32) / 255,
                y_test=z["y_test"].astype(np.int64),
                classes=spec.classes,
            )
    fs = spec_fonts(spec)
    train_fs, test_fs = split_fonts(fs) if spec.held_out_test_fonts else (fs, fs)
    held_out = bool(train_fs.fonts and test_fs.fonts) and spec.held_out_test_fonts
    if not held_out:
        train_fs, test_fs = fs, fs
    print(
        f"modelsteal: rendering {spec.name!r} ({spec.stand_in_for} stand-in) from {len(train_fs.fonts)} fonts"
        + (f" (+{len(test_fs.fonts)} held out for the test split)" if held_out else "")
        + (f"; {len(fs.dropped)} font files dropped (listed in {meta_path})" if fs.dropped else ""),
        file=sys.stderr,
    )
    test_seed = seed + 1
    x_tr, y_tr = render_glyphs(
        spec.chars, train_fs.fonts, per_class=spec.train_per_class, seed=seed, font_weights=train_fs.weights(),
        progress=f"render {spec.name} (train)",
    )
    x_te, y_te = render_glyphs(
        spec.chars, test_fs.fonts, per_class=spec.test_per_class, seed=test_seed, font_weights=test_fs.weights(),
        progress=f"render {spec.name} (test)",
    )
    meta = {
        "description": f"{spec.name}: characters rendered from fonts by modelsteal.data.glyphs, a stand-in for "
        f"{spec.stand_in_for}; not {spec.stand_in_for} itself",
        **_cache_key(spec, files, seed, fallback),
        "train_size": int(len(y_tr)),
        "test_size": int(len(y_te)),
        "test_seed": test_seed,
        "test_split": "held-out fonts" if held_out else "the training fonts, another seed",
        "train_fonts": {g: [str(p) for p in ps] for g, ps in train_fs.groups.items()},
        "test_fonts": {g: [str(p) for p in ps] for g, ps in test_fs.groups.items()},
        "font_weights": "each style group has equal weight, split equally between its fonts",
        "dropped_fonts": fs.dropped,
        "versions": {"pillow": _pillow_version(), "torch": torch.__version__, "numpy": np.__version__},
    }
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(npz.stem + ".part.npz")
    np.savez_compressed(
        tmp,
        x_train=np.rint(x_tr * 255).astype(np.uint8),
        y_train=y_tr,
        x_test=np.rint(x_te * 255).astype(np.uint8),
        y_test=y_te,
    )
    tmp.replace(npz)
    tmp_meta = meta_path.with_name(meta_path.name + ".part")
    tmp_meta.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    tmp_meta.replace(meta_path)
    return RawImages(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, classes=spec.classes)


@register_dataset("letters")
def load_letters(*, data_dir: Path | None = None, download: bool = False) -> RawImages:
    """26 classes a–z, upper and lower case merged (EMNIST-Letters' classes, Cohen et al. 2017), rendered from
    handwriting and print fonts: 2,400 per class for training, 400 per class from held-out fonts for testing."""
    return build_glyph_dataset(LETTERS, data_dir=data_dir)


@register_dataset("kana")
def load_kana(*, data_dir: Path | None = None, download: bool = False) -> RawImages:
    """KMNIST's ten hiragana classes in KMNIST's order (Clanuwat et al. 2018), rendered from Japanese brush and
    print fonts: 6,000 per class for training, 1,000 per class (same fonts, another seed) for testing."""
    return build_glyph_dataset(KANA, data_dir=data_dir)
