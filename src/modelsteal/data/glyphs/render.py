"""Rendering a glyph set: each image is a base glyph of its font and character (:mod:`.fonts`) distorted by
:mod:`.augment`, in fixed batches, quantised to 1/255 steps like MNIST's bytes."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from modelsteal.data.glyphs.augment import NO_AUGMENTATION, Augmentation, _distort
from modelsteal.data.glyphs.fonts import SIZE, base_glyph

_BATCH = 512  # images per augmentation batch; part of what a seed means, so fixed


def render_glyphs(
    classes: Sequence[str],
    fonts: Sequence[str | Path],
    *,
    per_class: int,
    seed: int,
    augment: Augmentation | None = Augmentation(),  # noqa: B008 (a frozen dataclass)
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
