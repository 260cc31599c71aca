"""``attack`` never reports a number measured on the inputs it queried as held-out (issue 29, defect 5): a
transfer set drawn from the split that measures the clone is refused in one line before any query, and test
inputs that the attack did query (found by content) are left out of accuracy and fidelity, which says so."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_line_error

import modelsteal.cli.attack as attack_cli
from modelsteal.cli.main import main
from modelsteal.experiment.transfer import queried_rows
from modelsteal.metrics import attacker_accuracy
from modelsteal.models import build_model, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, digits_victim):
    return save_checkpoint(digits_victim, tmp_path_factory.mktemp("v") / "victim.pt", dataset="digits")


@pytest.fixture
def forbid_attacks(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the attack ran before the transfer set was checked")

    monkeypatch.setattr(attack_cli, "_steal", fail)


@pytest.mark.parametrize("transfer", ["dataset:digits:all", "dataset:digits:test", "dataset::test"])
def test_a_transfer_set_from_the_measuring_split_is_refused(transfer, ckpt, capsys, forbid_attacks):
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "50", "--transfer", transfer],
                   f"--transfer {transfer}", "test split of digits", "measures the clone")
    # the same split named through --dataset
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "50", "--transfer", transfer,
                            "--dataset", "digits"], "test split of digits")


def test_queried_rows_matches_by_content():
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    queried = torch.cat([x[[4, 1]], torch.rand(3, 1, 4, 4)])
    assert queried_rows(x, queried).tolist() == [False, True, False, False, True, False]
    assert not queried_rows(x, torch.empty(0, 1, 4, 4)).any()
    assert queried_rows(x, x + 0.0).all()
    assert not queried_rows(x, x + 1e-6).any()  # exact inputs only: a nearby input is another input


def test_queried_test_inputs_are_left_out_and_said(ckpt, tmp_path, capsys, monkeypatch, digits, digits_victim):
    # a transfer pool that holds 40 of the test inputs under another name (here: the attacker's pool is
    # the training split plus those 40, as if a dataset shipped them twice)
    real = attack_cli.build_transfer_set

    def with_leak(cfg, *, victim_data, seed=0):
        x, y = real(cfg, victim_data=victim_data, seed=seed)
        return torch.cat([victim_data.x_test[:40], x[:260]]), None  # 300 rows: a budget of 300 queries all

    monkeypatch.setattr(attack_cli, "build_transfer_set", with_leak)
    out, saved = tmp_path / "r.json", tmp_path / "clone.pt"
    rc = main(["attack", "--target", str(ckpt), "--budget", "300", "--transfer", "dataset:digits:train", "--clone",
               "mlp", "--epochs", "2", "--json", str(out), "--save-clone", str(saved)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    n_test = len(digits.x_test)
    assert (f"warning: 40 of the {n_test} test inputs of digits were among the attack's queries; accuracy and "
            f"fidelity are measured on the other {n_test - 40}") in cap.err
    report = json.loads(out.read_text())
    assert report["test_inputs_queried"] == 40 and report["held_out"] == n_test - 40
    # the reported accuracy and fidelity are those of the 319 unqueried test inputs
    clone = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, mean=[0.5], std=[0.5])
    clone.load_state_dict(torch.load(saved))
    rest, y_rest = digits.x_test[40:], digits.y_test[40:]
    assert report["attacker_accuracy"] == pytest.approx(attacker_accuracy(clone, rest, y_rest), abs=1e-6)
    victim_top1 = digits_victim(rest).argmax(1)
    agree = float((clone.eval()(rest).argmax(1) == victim_top1).double().mean())
    assert report["fidelity"] == pytest.approx(agree, abs=1e-6)


def test_an_honest_transfer_set_is_measured_on_the_whole_test_split(ckpt, tmp_path, capsys, digits):
    out = tmp_path / "r.json"
    rc = main(["attack", "--target", str(ckpt), "--budget", "300", "--transfer", "dataset:digits:train", "--clone",
               "mlp", "--epochs", "2", "--json", str(out)])
    cap = capsys.readouterr()
    assert rc == 0 and "warning" not in cap.err
    report = json.loads(out.read_text())
    assert report["test_inputs_queried"] == 0 and report["held_out"] == len(digits.x_test)
