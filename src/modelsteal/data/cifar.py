"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the "python version" archives, for the full-scale configs.

Nothing is downloaded unless asked: ``data_dir`` (or ``$MODELSTEAL_DATA/cifar10``, ``…/cifar100``) holds the
extracted ``cifar-10-batches-py/`` (``data_batch_1`` … ``data_batch_5``, ``test_batch``, ``batches.meta``) or
``cifar-100-python/`` (``train``, ``test``, ``meta``), or the archive itself; ``download=True`` fetches the
archive from the authors' page. The batches are pickled dicts (``data``: uint8 rows of 3072 values, the red,
green and blue 32×32 planes; ``labels`` or ``fine_labels``), read here with :mod:`pickle` — only open archives
you trust, as with any pickle. CIFAR-10 is the Prediction Poisoning paper's VGG16 victim; CIFAR-100 is its
Knockoff transfer set for that victim (Orekondy et al., ICLR 2020, Sec. 5.1).
"""

from __future__ import annotations

import pickle
import shutil
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

from modelsteal.data.registry import DatasetNotFoundError, RawImages, data_root, register_dataset

URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
TRAIN = {"cifar10": [f"data_batch_{i}" for i in range(1, 6)], "cifar100": ["train"]}
TEST = {"cifar10": ["test_batch"], "cifar100": ["test"]}
LABEL_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}
META = {"cifar10": ("batches.meta", "label_names"), "cifar100": ("meta", "fine_label_names")}


def _unpickle(path: Path) -> dict[str, object]:
    with open(path, "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


def _read(folder: Path, names: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        batch = _unpickle(folder / name)
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)


def _find(name: str, candidates: list[Path]) -> Path | None:
    """The extracted folder of ``name`` under one of ``candidates`` (extracting an archive found there)."""
    folder, archive = FOLDERS[name], URLS[name].rsplit("/", 1)[1]
    for root in candidates:
        for d in (root / folder, root):
            if all((d / f).is_file() for f in TRAIN[name] + TEST[name]):
                return d
        if (root / archive).is_file():
            with tarfile.open(root / archive) as tar:
                tar.extractall(root, filter="data")
            return root / folder
    return None


def _download(name: str, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    dest = target / URLS[name].rsplit("/", 1)[1]
    tmp = dest.with_suffix(".part")
    with urllib.request.urlopen(URLS[name], timeout=120) as r, open(tmp, "wb") as out:
        shutil.copyfileobj(r, out)
    tmp.replace(dest)
    return target


def load_cifar(name: str, *, data_dir: Path | None = None, download: bool = False) -> RawImages:
    """``cifar10`` or ``cifar100`` as :class:`~modelsteal.data.registry.RawImages` (3×32×32 in ``[0, 1]``)."""
    cached = data_root() / name
    candidates = [p for p in (data_dir, cached) if p is not None]
    found = _find(name, candidates)
    if found is None and download:
        found = _find(name, [_download(name, cached)])
    if found is None:
        where = " or ".join(str(p) for p in candidates)
        raise DatasetNotFoundError(
            f"{name} not found in {where}: put the extracted {FOLDERS[name]}/ (or its .tar.gz from "
            f"{URLS[name]}) there, pass --data-dir DIR, or pass --download")
    x_train, y_train = _read(found, TRAIN[name], LABEL_KEY[name])
    x_test, y_test = _read(found, TEST[name], LABEL_KEY[name])
    meta_file, meta_key = META[name]
    classes: tuple[str, ...] = ()
    if (found / meta_file).is_file():
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in _unpickle(found / meta_file)[meta_key])
    return RawImages(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=classes)


@register_dataset("cifar10")
def load_cifar10(*, data_dir: Path | None = None, download: bool = False) -> RawImages:
    """CIFAR-10: 50,000 training and 10,000 test images of 10 classes (see the module docstring)."""
    return load_cifar("cifar10", data_dir=data_dir, download=download)


@register_dataset("cifar100")
def load_cifar100(*, data_dir: Path | None = None, download: bool = False) -> RawImages:
    """CIFAR-100 with its 100 fine labels (see the module docstring)."""
    return load_cifar("cifar100", data_dir=data_dir, download=download)
