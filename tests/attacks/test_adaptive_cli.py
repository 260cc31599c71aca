"""Issue 25's bad input on the command line: one line on stderr, exit 2, and no query sent."""

import pytest
from cli_helpers import one_line_error

from modelsteal.models import save_checkpoint


@pytest.fixture
def ckpt(tmp_path, digits_victim):
    path = tmp_path / "victim.pt"
    save_checkpoint(digits_victim, path, dataset="digits")
    return path


@pytest.mark.parametrize("extra, words", [
    (["--attack", "d-dae", "--attack-option", "defense=dawn"], ["cannot restore defense 'dawn'", "known: mad"]),
    (["--attack", "d-dae", "--attack-option", "defense=mad", "--attack-option", "strength=2.5"],
     ["strength estimate 2.5", "out of range"]),
    (["--attack", "d-dae", "--attack-option", "defense=am", "--attack-option", "strength=0"], ["out of range"]),
    (["--attack", "dfme", "--attack-option", "batch_size=64"], ["smaller than one generator step's 128"]),
    (["--attack", "maze", "--attack-option", "directions=0"], ["directions must be an integer >= 1"]),
    (["--attack", "smoothing", "--attack-option", "combine=max"], ["unknown combine 'max'"]),
    (["--attack", "active-thief", "--attack-option", "strategy=bald"], ["unknown strategy 'bald'"]),
    (["--attack", "semi-supervised", "--attack-option", "self_supervised=jigsaw"], ["self_supervised must be one of"]),
])
def test_bad_adaptive_attack_input_is_one_line(extra, words, ckpt, capsys, monkeypatch):
    from modelsteal.blackbox import PredictionAPI

    sent = []
    real = PredictionAPI.query
    monkeypatch.setattr(PredictionAPI, "query", lambda self, x, **kw: sent.append(len(x)) or real(self, x, **kw))
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "100", "--device", "cpu",
                            "--transfer", "dataset:digits", *extra], *words)
    assert sent == []


@pytest.mark.parametrize("attack", ["dfme", "maze"])
def test_generator_that_cannot_draw_the_targets_size_is_one_line(attack, tmp_path, capsys, monkeypatch):
    """A 30x30 target (an image folder of that size): the generator's two x2 upsamplings cannot make it."""
    import numpy as np
    from PIL import Image

    from modelsteal.blackbox import PredictionAPI
    from modelsteal.models import build_model

    for c in range(2):
        (tmp_path / "odd" / str(c)).mkdir(parents=True)
        for i in range(4):
            img = Image.fromarray(np.full((30, 30), 40 * i + c, dtype=np.uint8), "L")
            img.save(tmp_path / "odd" / str(c) / f"{i}.png")
    path = tmp_path / "odd.pt"
    save_checkpoint(build_model("mlp", input_shape=(1, 30, 30), num_classes=2, seed=0), path, dataset="image-folder")
    sent = []
    real = PredictionAPI.query
    monkeypatch.setattr(PredictionAPI, "query", lambda self, x, **kw: sent.append(len(x)) or real(self, x, **kw))
    one_line_error(capsys, ["attack", "--target", path, "--budget", "20000", "--device", "cpu", "--attack", attack,
                            "--dataset", "image-folder", "--data-dir", tmp_path / "odd"],
                   "multiples of 4", "1x30x30")
    assert sent == []
