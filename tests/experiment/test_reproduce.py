"""``modelsteal reproduce`` on the committed digits result (CI's cross-machine check) and on doctored copies."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from cli_helpers import one_line_error

from modelsteal.cli.main import main
from modelsteal.experiment.config import select_scale
from modelsteal.experiment.environment import file_sha256

ROOT = Path(__file__).resolve().parents[2]
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
    # the committed number is re-made from the committed victim (same machine: exactly; another: within ±0.02)
    assert main(["--threads", "1", "reproduce", str(COMMITTED), "--quiet"]) == 0
    out = capsys.readouterr().out
    committed = float(next(csv.DictReader(open(COMMITTED / "results.csv")))["attacker_accuracy"])
    assert f"{committed:9.4f}" in out and "1 of 1 point(s) reproduced" in out
    # this machine's number (equal to the committed one on the machine that made it, within 0.02 elsewhere);
    # the doctored copies below are moved from it, so the expected differences hold on any machine
    now = float(next(line for line in out.splitlines() if line.startswith("none / knockoff")).split()[-4])
    assert abs(now - committed) <= 0.02
    # the same run against a copy whose committed value was moved by 0.1: reported, exit code 1
    doctored = _copy(tmp_path)
    _edit_first_row(doctored, "attacker_accuracy", str(now + 0.1))
    assert main(["--threads", "1", "reproduce", str(doctored), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "-0.1000  NO" in out and "0 of 1 point(s)" in out
    # moved by 0.03: outside the default for a Knockoff point (0.02, its measured kernel spread), inside 0.05
    _edit_first_row(doctored, "attacker_accuracy", str(now + 0.03))
    assert main(["--threads", "1", "reproduce", str(doctored), "--quiet"]) == 1
    assert "NO  ±0.02" in capsys.readouterr().out
    assert main(["--threads", "1", "reproduce", str(doctored), "--quiet", "--tolerance", "0.05"]) == 0
    assert "yes ±0.05" in capsys.readouterr().out


def test_the_default_tolerance_is_the_attack_familys_measured_spread():
    from modelsteal.experiment.reproduce import default_tolerance

    # the JB family re-derives its queries from gradient signs: a kernel change moved it by 16 points
    assert [default_tolerance(a) for a in ("jbda", "jb-self", "jb-top-k", "knockoff", "knockoff-adaptive")] == [
        0.17, 0.17, 0.17, 0.02, 0.02]


def test_a_victim_other_than_the_recorded_one_is_refused(tmp_path, capsys):
    out = _copy(tmp_path)
    prov = json.loads((out / "provenance.json").read_text())
    prov["victim_sha256"] = "0" * 64
    (out / "provenance.json").write_text(json.dumps(prov))
    # the copy's own victim (recorded paths resolve against the results folder)
    one_line_error(capsys, ["reproduce", out], f"victim {out / 'victim.pt'} has sha256",
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


def _legacy_copy(tmp_path: Path) -> Path:
    """The committed result as it would look had it been made before provenance was recorded."""
    out = _copy(tmp_path)
    (out / "provenance.json").unlink()
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [k for k in rows[0] if k not in ("victim_sha256", "wall_seconds")]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keep, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return out


def test_results_made_before_provenance_are_checked_against_their_config_and_then_recorded(tmp_path, capsys):
    out = _legacy_copy(tmp_path)
    config = ROOT / "configs" / "reproduce-digits.yaml"
    # the second row (MAD 0.5) alone: the one victim is checked by it, so the record can be written
    assert main(["--threads", "1", "reproduce", str(out), "--rows", "2", "--config", str(config), "--record",
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "mad 0.5 / knockoff" in printed and "none / knockoff" not in printed and "recorded" in printed
    prov = json.loads((out / "provenance.json").read_text())
    sha = file_sha256(COMMITTED / "victim.pt")
    assert prov["victim_sha256"] == sha and prov["config"]["name"] == "reproduce-digits"
    checked = prov["reconstructed"]["points_checked"]
    assert [c["point"] for c in checked] == ["mad 0.5 / knockoff / budget 1000 / seed 0"]
    assert checked[0]["now"] == checked[0]["committed"] and prov["reconstructed"]["max_abs_difference"] == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["victim_sha256"] for r in rows] == [sha, sha]
    committed = list(csv.DictReader(open(COMMITTED / "results.csv")))
    assert [r["attacker_accuracy"] for r in rows] == [r["attacker_accuracy"] for r in committed]
    # now it records its config: reproduce runs without --config, and refuses one
    assert main(["--threads", "1", "reproduce", str(out), "--quiet"]) == 0
    capsys.readouterr()
    one_line_error(capsys, ["reproduce", out, "--config", config], "records the config it was made with")


def test_no_record_is_written_when_a_point_does_not_reproduce_or_the_victim_was_not_checked(tmp_path, capsys):
    out = _legacy_copy(tmp_path)
    config = str(ROOT / "configs" / "reproduce-digits.yaml")
    _edit_first_row(out, "attacker_accuracy", "0.99")
    assert main(["--threads", "1", "reproduce", str(out), "--config", config, "--record", "--quiet"]) == 1
    assert "did not reproduce" in capsys.readouterr().err and not (out / "provenance.json").exists()
    # a committed victim accuracy other than the one the victim gives: reproduced within tolerance, still no record
    out = _legacy_copy(tmp_path / "b")
    committed_acc = float(next(csv.DictReader(open(out / "results.csv")))["victim_accuracy"])
    _edit_first_row(out, "victim_accuracy", str(committed_acc - 0.01))
    assert main(["--threads", "1", "reproduce", str(out), "--config", config, "--record", "--quiet"]) == 1
    cap = capsys.readouterr()
    assert "(victim_accuracy" in cap.out and "did not reproduce" in cap.err
    assert not (out / "provenance.json").exists()


def test_row_selection_and_legacy_mistakes_are_one_line_errors(tmp_path, capsys):
    out = _legacy_copy(tmp_path)
    config = ROOT / "configs" / "reproduce-digits.yaml"
    one_line_error(capsys, ["reproduce", out], "does not record the config", "--config CONFIG")
    one_line_error(capsys, ["reproduce", out, "--record"], "--record", "needs --config")
    one_line_error(capsys, ["reproduce", out, "--config", config, "--rows", "3"], "--rows 3 is not a row",
                   "rows 1 to 2")
    _edit_first_row(out, "defense", "reverse-sigmoid")  # every row must be a point of the config, not only row 2
    one_line_error(capsys, ["reproduce", out, "--config", config, "--rows", "2"], "matches no defense/attack")
    recorded = _copy(tmp_path / "b")  # a recorded config names its budgets: a row with another is refused
    _edit_first_row(recorded, "budget", "2000")
    one_line_error(capsys, ["reproduce", recorded], "budget or seed the recorded config does not sweep")


PP = ROOT / "results" / "pp"


@pytest.mark.parametrize("out", sorted(PP.iterdir()) if PP.is_dir() else [], ids=lambda p: p.name)
def test_every_committed_pp_result_records_committed_victims_and_its_config(out):
    # each PP directory names its config and victims; the victim files are in the repository, unchanged
    # (a retrained or replaced victim, or a config pointing at runs/, fails here)
    prov = json.loads((out / "provenance.json").read_text())
    victim = prov["config"]["victim"]["checkpoint"]
    assert victim.startswith("results/victims/") and prov["victim_sha256"] == file_sha256(ROOT / victim)
    for path, sha in prov["victims"].items():
        assert file_sha256(ROOT / path) == sha, path
    # the config it names is the committed file of that name, at the scale its -cpu suffix names (the -b50000 runs:
    # with --budget 50000)
    name = prov["config_name"]
    (path,) = (ROOT / "configs").rglob(f"{name.removesuffix('-cpu')}.yaml")  # configs/<paper>/<name>.yaml
    source = select_scale(yaml.safe_load(path.read_text()), "cpu" if name.endswith("-cpu") else None)
    assert source["name"] == name
    assert {k: prov["config"]["victim"][k] for k in source["victim"]} == source["victim"]
    if not (out / "results.csv").exists():  # a `modelsteal angles` directory (Fig. 6): one row per epsilon
        summary = list(csv.DictReader(open(out / "angles-summary.csv")))
        assert sorted(prov["points"]) == sorted(f"epsilon={float(r['epsilon'])}" for r in summary)
        return
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["victim_sha256"] for r in rows} <= set(prov["victims"].values())
    assert all(r["victim_sha256"] for r in rows)
    assert {int(r["budget"]) for r in rows} == set(prov["config"]["budgets"])
