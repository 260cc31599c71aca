"""The ``letters`` and ``kana`` datasets: which classes and fonts, the rendered sets cached as ``.npz`` with a
``.json`` beside them, and their registration."""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from modelsteal.data.glyphs.augment import Augmentation
from modelsteal.data.glyphs.fonts import (
    OVERSAMPLE,
    RENDER_PX,
    FontSet,
    matplotlib_font_files,
    select_fonts,
    system_font_files,
)
from modelsteal.data.glyphs.render import render_glyphs
from modelsteal.data.registry import DatasetNotFoundError, RawImages, data_root, register_dataset

GENERATOR_VERSION = 1  # bump when a change alters the images a seed gives (it is part of the cache key)

LETTER_CLASSES: tuple[str, ...] = tuple("abcdefghijklmnopqrstuvwxyz")
KANA_CLASSES: tuple[str, ...] = ("お", "き", "す", "つ", "な", "は", "ま", "や", "れ", "を")  # KMNIST's order


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
