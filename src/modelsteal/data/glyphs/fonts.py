"""Fonts for the glyph stand-ins: the installed font files, each glyph rendered once per font by Pillow and
normalised as MNIST is (longer side in a ``BOX·F`` box, centre of mass at the frame's centre), and the choice of
fonts (those that draw every character, near-duplicates dropped)."""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SIZE = 28  # output frame (pixels)
BOX = 20  # the glyph's longer side before augmentation (pixels), as in MNIST
OVERSAMPLE = 2  # base glyphs and the augmentation work at OVERSAMPLE × SIZE
RENDER_PX = 128  # Pillow font size for the base render (downscaled to BOX·OVERSAMPLE afterwards)
NEAR_DUPLICATE = 0.02  # fonts whose 28×28 glyphs differ by less (mean absolute difference) count as one

FONT_DIRS: tuple[Path, ...] = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")


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
