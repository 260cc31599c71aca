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
])
def test_bad_adaptive_attack_input_is_one_line(extra, words, ckpt, capsys, monkeypatch):
    from modelsteal.blackbox import PredictionAPI

    sent = []
    real = PredictionAPI.query
    monkeypatch.setattr(PredictionAPI, "query", lambda self, x, **kw: sent.append(len(x)) or real(self, x, **kw))
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "100", "--device", "cpu",
                            "--transfer", "dataset:digits", *extra], *words)
    assert sent == []
