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

The package: :mod:`.fonts` (font files, base glyphs, font choice), :mod:`.augment` (the distortion),
:mod:`.render` (a set of images), :mod:`.dataset` (the two datasets, their cache and registration).
"""

from modelsteal.data.glyphs.augment import NO_AUGMENTATION, Augmentation
from modelsteal.data.glyphs.dataset import (
    KANA,
    LETTERS,
    GlyphSpec,
    build_glyph_dataset,
    cache_paths,
    load_kana,
    load_letters,
    spec_fonts,
    split_fonts,
)
from modelsteal.data.glyphs.fonts import (
    BOX,
    OVERSAMPLE,
    SIZE,
    FontSet,
    base_glyph,
    matplotlib_font_files,
    missing_chars,
    select_fonts,
    system_font_files,
)
from modelsteal.data.glyphs.render import render_glyphs

__all__ = [
    "BOX", "KANA", "LETTERS", "NO_AUGMENTATION", "OVERSAMPLE", "SIZE", "Augmentation", "FontSet", "GlyphSpec",
    "base_glyph", "build_glyph_dataset", "cache_paths", "load_kana", "load_letters", "matplotlib_font_files",
    "missing_chars", "render_glyphs", "select_fonts", "spec_fonts", "split_fonts", "system_font_files",
]
