"""``modelsteal reproduce`` on the committed digits result (CI's cross-machine check) and on doctored copies."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import one_line_error

from modelsteal.cli.main import main
from modelsteal.experiment.environment import file_sha256

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "reproduce-digits"


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the committed config names its victim relative to the repository root


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(COMMITTED, out)
    return out


def _edit_first_row(out: Path, column: str, value: str) -> None:
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0][column] = value
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_the_committed_victim_is_the_one_recorded():
    prov = json.loads((COMMITTED / "provenance.json").read_text())
    assert file_sha256(COMMITTED / "victim.pt") == prov["victim_sha256"]
    assert prov["config"]["victim"]["checkpoint"] == "results/reproduce-digits/victim.pt"


def test_the_committed_digits_point_reproduces_and_a_doctored_one_does_not(tmp_path, capsys):
    # the committed number is re-made from the committed victim (same machine: exactly; another: within ±0.05)
    assert main(["--threads", "1", "reproduce", str(COMMITTED), "--quiet"]) == 0
    out = capsys.readouterr().out
    committed = float(next(csv.DictReader(open(COMMITTED / "results.csv")))["attacker_accuracy"])
    assert f"{committed:9.4f}" in out and "1 of 1 point(s) reproduced" in out
    # the same run against a copy whose committed value was moved by 0.1: reported, exit code 1
    doctored = _copy(tmp_path)
    _edit_first_row(doctored, "attacker_accuracy", str(committed + 0.1))
    assert main(["--threads", "1", "reproduce", str(doctored), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "-0.1000  NO" in out and "0 of 1 point(s)" in out


def test_a_victim_other_than_the_recorded_one_is_refused(tmp_path, capsys):
    out = _copy(tmp_path)
    prov = json.loads((out / "provenance.json").read_text())
    prov["victim_sha256"] = "0" * 64
    (out / "provenance.json").write_text(json.dumps(prov))
    one_line_error(capsys, ["reproduce", out], "victim results/reproduce-digits/victim.pt has sha256",
                   "made with 000000000000")


def test_results_without_a_recorded_config_or_a_matching_row_are_one_line_errors(tmp_path, capsys):
    out = _copy(tmp_path)
    _edit_first_row(out, "attack", "jbda")
    one_line_error(capsys, ["reproduce", out], "matches no defense/attack of the recorded config")
    prov = json.loads((out / "provenance.json").read_text())
    del prov["config"]
    (out / "provenance.json").write_text(json.dumps(prov))
    one_line_error(capsys, ["reproduce", out], "does not record the config")
    one_line_error(capsys, ["reproduce", tmp_path], "has no results.csv")
    one_line_error(capsys, ["reproduce", COMMITTED, "--points", "0"], "--points must be >= 1")


def test_a_corrupt_provenance_file_is_one_line_naming_it(tmp_path, capsys):
    out = _copy(tmp_path)
    (out / "provenance.json").write_text('{"config": ')
    one_line_error(capsys, ["reproduce", out], "provenance.json is not valid JSON", "line 1, column")
