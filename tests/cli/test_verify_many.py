"""``modelsteal verify`` for real use: several suspects in one call (fitted once, a table), DAWN records filtered
by client, the private data's commitment checked against the data given, ``train --data-seed`` apart from
``--seed``, the published commitment, the help listing every method's options."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_line_error

from modelsteal import PredictionAPI
from modelsteal.cli.main import main
from modelsteal.defenses.dawn import DAWN
from modelsteal.models import build_model, load_checkpoint
from modelsteal.ownership.commitments import commitment_digest
from modelsteal.ownership.dataset_inference import DatasetInference


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify_many")
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "3", "--seed", "3", "--data-seed", "1",
                 "--commit-dawn-key", "secret", "--out", str(d / "victim.pt")]) == 0
    for i in (1, 2):
        clone = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, mean=[0.5], std=[0.5], seed=i)
        torch.save(clone.state_dict(), d / f"s{i}.pt")
    return d


def test_train_records_data_seed_apart_from_seed_and_its_commitments(trained, capsys):
    _, meta = load_checkpoint(trained / "victim.pt")
    assert meta["data_seed"] == 1  # --seed 3 set the initialisation only
    assert set(meta["commitments"]) == {"private_data", "dawn_key"}
    from modelsteal.data import load_dataset
    from modelsteal.defenses.dawn import key_fingerprint
    from modelsteal.ownership.commitments import private_data_commitment

    split = load_dataset("digits", seed=1)
    assert meta["commitments"]["private_data"] == private_data_commitment(split.x_train, split.y_train)
    other = load_dataset("digits", seed=3)
    assert meta["commitments"]["private_data"] != private_data_commitment(other.x_train, other.y_train)
    assert meta["commitments"]["dawn_key"] == key_fingerprint("secret")


def test_many_suspects_one_fit_and_a_table(trained, capsys, monkeypatch):
    fits = []
    original = DatasetInference._fit
    monkeypatch.setattr(DatasetInference, "_fit", lambda self, *a, **k: (fits.append(1), original(self, *a, **k)))
    out = trained / "many.json"
    rc = main(["verify", "--victim", str(trained / "victim.pt"), "--suspect", str(trained / "s1.pt"),
               str(trained / "s2.pt"), str(trained / "victim.pt"), "--method", "dataset-inference", "--option",
               "samples=10", "--option", "fit_samples=30", "--option", "directions=2", "--option", "steps=5",
               "--budget", "5000", "--json", str(out)])
    cap = capsys.readouterr()
    assert rc == 0 and len(fits) == 1  # the regressor is fitted once for the three suspects
    rows = [line for line in cap.out.splitlines() if line.endswith(tuple("0123456789")) and ".pt" in line]
    assert [r.split()[0].rsplit("/", 1)[-1] for r in rows] == ["s1.pt", "s2.pt", "victim.pt"]
    assert "[1/3] verifying" in cap.err and "[3/3] verifying" in cap.err  # progress
    assert "null hypothesis:" in cap.out and "evidence matches the victim's commitment" in cap.out
    report = json.loads(out.read_text())
    assert [v["suspect"].rsplit("/", 1)[-1] for v in report["verdicts"]] == ["s1.pt", "s2.pt", "victim.pt"]
    assert all(v["details"]["commitment"] == "checked" for v in report["verdicts"])


def test_wrong_private_data_and_wrong_commitment_are_refused_in_one_line(trained, capsys, monkeypatch):
    monkeypatch.setattr(DatasetInference, "_fit", lambda *a, **k: pytest.fail("fit ran before the data check"))
    base = ["verify", "--victim", trained / "victim.pt", "--suspect", trained / "s1.pt", "--method",
            "dataset-inference", "--budget", "100000"]
    one_line_error(capsys, [*base, "--data-seed", "0"], "does not hold the data the victim was trained on")
    one_line_error(capsys, [*base, "--commitment", "0" * 64], "not the published")
    _, meta = load_checkpoint(trained / "victim.pt")
    monkeypatch.undo()
    rc = main([str(a) for a in [*base, "--commitment", commitment_digest(meta["commitments"]), "--option",
                                "samples=10", "--option", "fit_samples=30", "--option", "directions=2",
                                "--option", "steps=5"]])
    assert rc == 0 and "and the published digest" in capsys.readouterr().out


def test_dawn_clients_filter_and_key_commitment(trained, tmp_path, capsys):
    victim, _ = load_checkpoint(trained / "victim.pt")
    records = tmp_path / "wm.jsonl"
    dawn = DAWN(rate=0.5, key="secret", records=str(records))
    api = PredictionAPI(victim, defense=dawn)
    g = torch.Generator().manual_seed(0)
    api.query(torch.rand(60, 1, 8, 8, generator=g), client="attacker")
    api.query(torch.rand(40, 1, 8, 8, generator=g), client="evaluation")
    n_attacker = len(dawn.state_dict("attacker")["labels"])
    out = tmp_path / "r.json"
    base = ["verify", "--victim", str(trained / "victim.pt"), "--suspect", str(trained / "s1.pt"), "--method", "dawn",
            "--records", str(records), "--budget", "1000", "--json", str(out)]
    assert main([*base, "--clients", "attacker"]) == 0
    assert json.loads(out.read_text())["details"]["records"] == n_attacker  # the evaluation client's left out
    assert main([*base, "--clients", "attacker", "evaluation"]) == 0
    both = len(dawn.state_dict("evaluation")["labels"]) + n_attacker
    assert json.loads(out.read_text())["details"]["records"] == both
    capsys.readouterr()
    other = tmp_path / "other.jsonl"
    rogue = DAWN(rate=0.5, key="not the committed key", records=str(other))
    PredictionAPI(victim, defense=rogue).query(torch.rand(60, 1, 8, 8, generator=g))
    one_line_error(capsys, ["verify", "--victim", trained / "victim.pt", "--suspect", trained / "s1.pt", "--method",
                            "dawn", "--records", other], "DAWN records' key does not match the victim's commitment")


def test_help_lists_every_method_with_its_options_and_null(capsys):
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    text = capsys.readouterr().out
    for words in ("dataset-inference: embedding='blind-walk', samples=30, fit_samples=200", "dawn: records=None",
                  "clients=None", "ewe: alpha=0.05", "null_rate=None", "null: the suspect is independent"):
        assert words in text, words


def test_di_budget_message_names_what_the_budget_is_made_of(trained, capsys):
    one_line_error(capsys, ["verify", "--victim", trained / "victim.pt", "--suspect", trained / "s1.pt", "--method",
                            "dataset-inference", "--option", "samples=7", "--option", "directions=3", "--budget", "10"],
                   "at least 1260 queries", "2 groups (private, public) x samples=7 x directions=3 x steps=30")
