"""The font-rendered `letters` / `kana` stand-ins: determinism, conventions, caching, fonts, learnability."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modelsteal.data import DatasetNotFoundError, glyphs, load_dataset
from modelsteal.data.glyphs import dataset as gset
from modelsteal.models import build_model

KMNIST_ORDER = ("お", "き", "す", "つ", "な", "は", "ま", "や", "れ", "を")
LATIN = tuple("abcdefghijklmnopqrstuvwxyz")


def _dejavu(*names: str) -> list[Path]:
    """matplotlib's own DejaVu fonts: always there, so these tests need no system font package."""
    by_name = {p.stem: p for p in glyphs.matplotlib_font_files()}
    return [by_name[n] for n in names]


def _japanese_fonts() -> list[Path]:
    keep = ("ipaexg.ttf", "AoyagiKouzanT.ttf")
    return [p for p in glyphs.system_font_files() if p.name in keep]


@pytest.fixture
def small_letters(monkeypatch, tmp_path):
    """`letters` at 20 + 5 images per class, from four DejaVu fonts, cached under tmp_path."""
    monkeypatch.setenv("MODELSTEAL_DATA", str(tmp_path))
    fonts = _dejavu("DejaVuSans", "DejaVuSans-Bold", "DejaVuSerif", "DejaVuSansMono", "DejaVuSerif-Italic")
    monkeypatch.setattr(gset, "system_font_files", lambda: fonts)
    monkeypatch.setattr(gset, "LETTERS", dataclasses.replace(glyphs.LETTERS, train_per_class=20, test_per_class=5))
    return tmp_path


def test_same_seed_is_bit_identical_and_another_seed_differs():
    fonts = _dejavu("DejaVuSans", "DejaVuSerif-Bold")
    x0, y0 = glyphs.render_glyphs(["aA", "bB", "cC"], fonts, per_class=20, seed=3)
    x1, y1 = glyphs.render_glyphs(["aA", "bB", "cC"], fonts, per_class=20, seed=3)
    x2, _ = glyphs.render_glyphs(["aA", "bB", "cC"], fonts, per_class=20, seed=4)
    assert x0.dtype == np.float32 and y0.dtype == np.int64 and x0.shape == (60, 1, 28, 28)
    assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    assert not np.array_equal(x0, x2)
    assert np.bincount(y0).tolist() == [20, 20, 20]
    # augmentation is on by default: no two images of the set are the same
    assert len({im.tobytes() for im in x0}) == len(x0)


def _normalised_glyph(font: Path, ch: str) -> np.ndarray:
    """What an unaugmented image of ``ch`` in ``font`` must be: the 28×28 average of the base glyph, peak 1."""
    t = torch.from_numpy(glyphs.base_glyph(font, ch)).float()[None, None] / 255
    t = F.avg_pool2d(t, glyphs.OVERSAMPLE)[0, 0].numpy()
    return np.round(t / t.max() * 255) / 255


def test_unaugmented_images_follow_mnist_normalisation_and_carry_their_class():
    fonts = _dejavu("DejaVuSans", "DejaVuSerif-Italic", "DejaVuSansMono-Bold")
    classes = ["aA", "gG", "iI", "jJ", "mM", "qQ", "wW"]  # tall, wide, thin and descending shapes
    x, y = glyphs.render_glyphs(classes, fonts, per_class=20, seed=0, augment=None)
    assert x.shape == (140, 1, 28, 28) and 0 <= x.min() and x.max() == 1
    rows, cols = np.arange(28)[:, None], np.arange(28)[None, :]
    for img, label in zip(x[:, 0], y, strict=True):
        on_r, on_c = np.flatnonzero(img.any(axis=1)), np.flatnonzero(img.any(axis=0))
        assert on_r[-1] - on_r[0] + 1 <= 20 and on_c[-1] - on_c[0] + 1 <= 20  # fits the 20×20 box
        assert max(on_r[-1] - on_r[0], on_c[-1] - on_c[0]) + 1 >= 19  # and fills it along its longer side
        m = img.sum()
        assert abs((img * rows).sum() / m - 13.5) <= 1.0 and abs((img * cols).sum() / m - 13.5) <= 1.0
        # the image is one of its own class's glyphs, and none of another class's
        own = [_normalised_glyph(f, ch) for f in fonts for ch in classes[label]]
        assert min(np.abs(img - o).max() for o in own) < 1e-6
        other = [_normalised_glyph(f, ch) for f in fonts for c in classes if c != classes[label] for ch in c]
        assert min(np.abs(img - o).max() for o in other) > 0.1


def test_augmented_images_stay_in_range_and_inside_the_frame():
    x, _ = glyphs.render_glyphs(["aA", "kK"], _dejavu("DejaVuSans"), per_class=30, seed=0)
    assert 0 <= x.min() and np.allclose(x.max(axis=(1, 2, 3)), 1)
    assert np.allclose(x * 255, np.round(x * 255), atol=1e-4)  # MNIST-like 1/255 steps
    assert x[:, 0, :2].max() < 0.5 and x[:, 0, -2:].max() < 0.5  # nothing pushed to the top/bottom edge
    plain, _ = glyphs.render_glyphs(["aA", "kK"], _dejavu("DejaVuSans"), per_class=30, seed=0, augment=None)
    assert np.abs(x - plain).mean() > 0.02  # the augmentation does something


def test_letters_dataset_classes_cache_and_held_out_test_fonts(small_letters, monkeypatch):
    d = load_dataset("letters", val_fraction=0.1)
    assert d.classes == LATIN and d.num_classes == 26 and d.input_shape == (1, 28, 28)
    assert len(d.x_train) + len(d.x_val) == 26 * 20 and len(d.x_test) == 26 * 5
    assert 0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1
    (meta_path,) = (small_letters / "glyphs").glob("letters-*.json")
    meta = json.loads(meta_path.read_text())
    assert meta["classes"] == list(LATIN) and meta["seed"] == 0 and meta["generator_version"] == 1
    assert meta["train_size"] == 520 and meta["test_size"] == 130
    train_fonts = {p for ps in meta["train_fonts"].values() for p in ps}
    test_fonts = {p for ps in meta["test_fonts"].values() for p in ps}
    assert test_fonts and train_fonts and not train_fonts & test_fonts
    assert meta["test_split"] == "held-out fonts"

    mtime = meta_path.stat().st_mtime_ns

    def no_rendering(*args, **kwargs):
        raise AssertionError("a cache hit must not render")

    monkeypatch.setattr(gset, "render_glyphs", no_rendering)
    raw1 = glyphs.load_letters(data_dir=None)
    raw2 = glyphs.load_letters(data_dir=None)
    assert np.array_equal(raw1.x_train, raw2.x_train) and np.array_equal(raw1.y_test, raw2.y_test)
    again = load_dataset("letters", val_fraction=0.1)
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.x_test, d.x_test)
    assert meta_path.stat().st_mtime_ns == mtime


def test_data_dir_takes_the_cache_and_settings_change_the_key(small_letters, tmp_path_factory, monkeypatch):
    own = tmp_path_factory.mktemp("own")
    raw = glyphs.load_letters(data_dir=own)
    assert len(list(own.glob("letters-*.npz"))) == 1 and not (small_letters / "glyphs").exists()
    monkeypatch.setattr(gset, "LETTERS", dataclasses.replace(glyphs.LETTERS, train_per_class=21))
    bigger = glyphs.load_letters(data_dir=own)
    assert len(bigger.y_train) == 26 * 21 and len(raw.y_train) == 26 * 20
    assert len(list(own.glob("letters-*.npz"))) == 2


def test_kana_classes_in_kmnist_order(monkeypatch, tmp_path):
    fonts = _japanese_fonts()
    if not fonts:
        pytest.skip("no Japanese fonts installed (make data)")
    monkeypatch.setattr(gset, "system_font_files", lambda: fonts)
    monkeypatch.setattr(gset, "KANA", dataclasses.replace(glyphs.KANA, train_per_class=20, test_per_class=5))
    d = load_dataset("kana", data_dir=tmp_path)
    assert d.classes == KMNIST_ORDER and d.num_classes == 10
    assert len(d.x_test) == 50 and len(d.x_train) + len(d.x_val) == 200
    # class i is drawn from KMNIST_ORDER[i]: an unaugmented render of one font matches class by class
    x, y = glyphs.render_glyphs(list(KMNIST_ORDER), fonts[:1], per_class=1, seed=0, augment=None)
    for img, label in zip(x[:, 0], y, strict=True):
        assert np.abs(img - _normalised_glyph(fonts[0], KMNIST_ORDER[label])).max() < 1e-6


def test_missing_japanese_fonts_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(gset, "system_font_files", lambda: [])
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("kana", data_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "make data" in msg and "fonts-ipafont" in msg
    assert not list(tmp_path.iterdir())


def test_letters_fall_back_to_matplotlib_fonts_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(gset, "system_font_files", lambda: [])
    monkeypatch.setattr(gset, "_WARNED", set())
    monkeypatch.setattr(gset, "LETTERS", dataclasses.replace(glyphs.LETTERS, train_per_class=2, test_per_class=1))
    with pytest.warns(UserWarning, match="matplotlib's DejaVu"):
        raw = glyphs.load_letters(data_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        glyphs.load_letters(data_dir=tmp_path)
    assert raw.classes == LATIN and raw.x_train.shape == (52, 1, 28, 28)
    meta = json.loads(next(tmp_path.glob("letters-*.json")).read_text())
    used = [p for split in ("train_fonts", "test_fonts") for ps in meta[split].values() for p in ps]
    assert meta["fallback_fonts"] and used and all("mpl-data" in p for p in used)


def test_fonts_without_a_glyph_are_dropped_and_twins_merged():
    sans, serif = _dejavu("DejaVuSans", "DejaVuSerif")
    assert glyphs.missing_chars(sans, "aお") == "お"
    fs = glyphs.select_fonts([sans, serif], groups={"all": ("dejavu",)}, chars="aお")
    assert fs.fonts == [] and set(fs.dropped) == {str(sans), str(serif)}
    fs = glyphs.select_fonts([sans, serif, sans], groups={"all": ("dejavu",)}, chars="ab")
    assert fs.fonts == [sans, serif] and "nearly the same" in fs.dropped[str(sans)]


def test_lenet_trained_on_some_fonts_reads_a_held_out_font():
    torch.manual_seed(0)
    train_fonts = _dejavu("DejaVuSans", "DejaVuSerif-Bold", "DejaVuSansMono", "DejaVuSerif-Italic")
    held_out = _dejavu("DejaVuSans-BoldOblique")
    chars = [c + c.upper() for c in LATIN]
    x, y = glyphs.render_glyphs(chars, train_fonts, per_class=30, seed=0)
    xt, yt = glyphs.render_glyphs(chars, held_out, per_class=10, seed=1)
    x, y, xt, yt = map(torch.from_numpy, (x, y, xt, yt))
    model = build_model("lenet", input_shape=(1, 28, 28), num_classes=26, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    print(f"held-out font accuracy: {acc:.3f} (chance {1 / 26:.3f})")
    assert acc > 0.3  # about 0.5 here; chance is 0.04
