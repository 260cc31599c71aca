"""CIFAR-10/100 loaders on small files the test writes (nothing downloaded), and the VGG16 builder."""

import pickle
import tarfile

import numpy as np
import pytest
import torch

from modelsteal.data import load_dataset
from modelsteal.data.registry import DatasetNotFoundError
from modelsteal.models import build_model


def _batch(path, n, *, label_key, offset):
    data = np.zeros((n, 3072), dtype=np.uint8)
    for i in range(n):  # the red, green and blue planes of row i hold three different values
        data[i, :1024], data[i, 1024:2048], data[i, 2048:] = 10 + i, 100 + i, 200 + i
    data[:, 1] = 255  # red plane, row 0, column 1
    labels = [(offset + i) % 10 for i in range(n)]
    with open(path, "wb") as f:
        pickle.dump({b"data": data, label_key: labels, b"coarse_labels": [0] * n}, f)
    return labels


def _cifar10(root, n=10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _batch(folder / f"data_batch_{i}", n, label_key=b"labels", offset=i)
    _batch(folder / "test_batch", n, label_key=b"labels", offset=0)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return folder


def test_cifar10_planes_labels_and_splits(tmp_path):
    # bugs caught: the 3072 values reshaped as 32x32x3 (channels interleaved), uint8 not scaled to [0, 1], a
    # training batch skipped, the test batch mixed into training
    _cifar10(tmp_path)
    data = load_dataset("cifar10", data_dir=tmp_path, val_fraction=0.1)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert len(data.x_train) + len(data.x_val) == 50 and len(data.x_test) == 10
    x = data.x_test[data.y_test.argsort()]  # test labels are 0..9 in row order
    assert torch.allclose(x[3, :, 5, 5], torch.tensor([13, 103, 203]) / 255.0)
    assert x[0, 0, 0, 1] == 1.0 and x[0, 1, 0, 1] == 100 / 255.0
    assert data.classes == tuple(f"c{i}" for i in range(10))


def test_cifar100_reads_fine_labels_and_an_archive(tmp_path):
    # bugs caught: the coarse labels read instead of the fine ones, an archive beside the data ignored
    src = tmp_path / "src" / "cifar-100-python"
    src.mkdir(parents=True)
    fine = _batch(src / "train", 40, label_key=b"fine_labels", offset=3)
    _batch(src / "test", 10, label_key=b"fine_labels", offset=0)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="cifar-100-python")
    data = load_dataset("cifar100", data_dir=root, val_fraction=0.1)
    assert sorted(torch.cat([data.y_train, data.y_val]).tolist()) == sorted(fine)


def test_missing_cifar_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSTEAL_DATA", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError, match="--download"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_vgg16_has_thirteen_convolutions_and_refuses_small_inputs():
    model = build_model("vgg16", input_shape=(3, 32, 32), num_classes=10, seed=0)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 13
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="32x32"):
        build_model("vgg16", input_shape=(1, 28, 28), num_classes=10, seed=0)
