"""``modelsteal verify``: every user mistake is one line on stderr with exit code 2, before any work; and the
happy path prints the p-value and the verdict and writes the JSON report."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_line_error

from modelsteal import PredictionAPI
from modelsteal.cli.main import main
from modelsteal.defenses.dawn import DAWN
from modelsteal.models import build_model, save_checkpoint
from modelsteal.ownership.dataset_inference import DatasetInference


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_victim):
    d = tmp_path_factory.mktemp("verify")
    save_checkpoint(digits_victim, d / "victim.pt", dataset="digits")
    save_checkpoint(build_model("mlp", input_shape=(1, 8, 8), num_classes=5, seed=0), d / "five.pt", dataset="digits")
    clone = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, mean=[0.5], std=[0.5], seed=1)
    torch.save(clone.state_dict(), d / "clone_state.pt")
    dawn = DAWN(rate=0.5, key="secret", records=str(d / "wm.jsonl"))
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    PredictionAPI(digits_victim, defense=dawn).query(x)
    (d / "junk.txt").write_text("not a model")
    return d


def _v(files, *extra):
    return ["verify", "--victim", files / "victim.pt", "--suspect", files / "victim.pt", *extra]


@pytest.mark.parametrize(("extra", "words"), [
    (["--method", "nope"], ["unknown verifier 'nope'", "known verifiers:", "dawn"]),
    (["--method", "dawn", "--records", "wm.jsonl", "--alpha", "1.5"], ["alpha must be in (0, 1)"]),
    (["--method", "dawn", "--records", "wm.jsonl", "--budget", "0"], ["--budget must be a positive integer"]),
    (["--method", "dawn"], ["--method dawn needs --records PATH"]),
    (["--method", "dawn", "--records", "missing.jsonl"], ["missing.jsonl do not exist"]),
    (["--method", "dawn", "--records", "wm.jsonl", "--key", "wrong"], ["made with another key"]),
    (["--method", "dawn", "--records", "wm.jsonl", "--budget", "1", "--alpha", "0.01"],
     ["needs a budget of at least 3 queries", "alpha=0.01"]),
    (["--method", "dataset-inference", "--key", "k"], ["unknown option key for verifier 'dataset-inference'"]),
    (["--method", "dataset-inference", "--option", "samples=0"], ["samples must be an integer >= 2"]),
    (["--method", "dataset-inference", "--option", "bogus=1"], ["unknown option bogus"]),
    (["--method", "dataset-inference", "--option", "samples=10", "--option", "directions=5", "--option", "steps=10",
      "--budget", "999"], ["needs a budget of at least 1000 queries"]),
    (["--method", "dawn", "--records", "wm.jsonl", "--option", "records=x"], ["give records once"]),
    (["--method", "ewe"], ["watermark"]),  # a victim trained without the ewe recipe has no triggers
])
def test_bad_flags_are_one_line(capsys, files, monkeypatch, extra, words):
    monkeypatch.chdir(files)
    # nothing expensive may run before the checks: dataset inference's fit would embed the victim's samples
    monkeypatch.setattr(DatasetInference, "_fit", lambda *a, **k: pytest.fail("fit ran before the checks"))
    one_line_error(capsys, _v(files, *extra), *words)


@pytest.mark.parametrize(("suspect", "extra", "words"), [
    ("five.pt", [], ["suspect answers 5 classes", "victim has 10 classes"]),
    ("nothing.pt", [], ["suspect", "nothing.pt does not exist"]),
    ("junk.txt", [], ["cannot tell the format", "junk.txt"]),
    ("clone_state.pt", ["--suspect-arch", "lenet"], ["does not fit architecture 'lenet'", "--suspect-arch"]),
    ("http://127.0.0.1:9", [], ["needs --api-key"]),
])
def test_bad_suspects_are_one_line(capsys, files, monkeypatch, suspect, extra, words):
    monkeypatch.setattr(DatasetInference, "_fit", lambda *a, **k: pytest.fail("fit ran before the checks"))
    argv = ["verify", "--victim", files / "victim.pt", "--suspect", files / suspect if "://" not in suspect
            else suspect, "--method", "dataset-inference", *extra]
    one_line_error(capsys, argv, *words)


def test_missing_victim_is_one_line(capsys, files):
    one_line_error(capsys, ["verify", "--victim", files / "none.pt", "--suspect", files / "victim.pt", "--method",
                            "dawn", "--records", files / "wm.jsonl"], "none.pt does not exist")


def test_verify_prints_p_value_and_verdict_and_writes_json(capsys, files):
    out = files / "report.json"
    rc = main([str(a) for a in _v(files, "--method", "dawn", "--records", files / "wm.jsonl", "--key", "secret",
                                  "--budget", "15", "--json", out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "p-value: 1" in text and "verdict: not shown stolen at alpha = 0.05 (15 queries" in text  # the victim
    report = json.loads(out.read_text())  # answers its true labels, never DAWN's wrong ones
    assert report["method"] == "dawn" and report["queries"] == 15 and report["stolen"] is False
    rc = main([str(a) for a in ["verify", "--victim", files / "victim.pt", "--suspect", files / "clone_state.pt",
                                "--method", "dawn", "--records", files / "wm.jsonl", "--budget", "15"]])
    assert rc == 0 and "p-value:" in capsys.readouterr().out  # a bare clone state dict loads as the victim's arch
