"""Rendering a glyph dataset (``letters``, ``kana``: a minute each at full size) shows a progress bar, from
``modelsteal datasets`` and from ``train --recipe outlier-exposure`` alike (issue 29, defect 7). The specs are
shrunk to a few glyphs of matplotlib's DejaVu fonts, so a test renders in seconds."""

from __future__ import annotations

import dataclasses
import re

import pytest

import modelsteal.data.glyphs as glyphs
from modelsteal.cli.main import main
from modelsteal.data.glyphs import dataset as gset


def _tiny(spec: glyphs.GlyphSpec) -> glyphs.GlyphSpec:
    return dataclasses.replace(spec, classes=("a", "b"), chars=("aA", "bB"), groups={"print": ("/no-such-font/",)},
                               exclude=(), train_per_class=30, test_per_class=10, held_out_test_fonts=False,
                               fallback=True)


@pytest.fixture
def tiny_glyphs(monkeypatch):
    monkeypatch.setattr(gset, "LETTERS", _tiny(gset.LETTERS))
    monkeypatch.setattr(gset, "KANA", _tiny(gset.KANA))
    monkeypatch.setattr(gset, "_WARNED", {"letters", "kana"})  # no fallback-font warning


def _finished_bar(err: str, label: str, total: int) -> bool:
    """Whether stderr holds ``label``'s bar at ``total/total``."""
    return re.search(re.escape(label) + r": 100%.*\b" + f"{total}/{total}", err) is not None


def test_datasets_shows_the_rendering_progress(tiny_glyphs, tmp_path, capsys):
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    fonts = len(gset.spec_fonts(gset.LETTERS).fonts)
    # base glyphs (fonts x 4 characters) then the images (2 classes x 30, then 2 x 10)
    assert _finished_bar(err, "render letters (train)", 4 * fonts + 60), err
    assert _finished_bar(err, "render letters (test)", 4 * fonts + 20), err
    # cached: the second listing renders nothing
    assert main(["datasets", "--data-dir", str(tmp_path)]) == 0
    assert "render letters" not in capsys.readouterr().err


def test_outlier_exposure_shows_the_rendering_of_its_outlier_set(tiny_glyphs, tmp_path, capsys):
    rc = main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "1", "--recipe", "outlier-exposure",
               "--recipe-option", "outliers=kana", "--recipe-option", f"data_dir={tmp_path}",
               "--out", str(tmp_path / "v.pt")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert _finished_bar(err, "render kana (train)", 4 * len(gset.spec_fonts(gset.KANA).fonts) + 60), err
