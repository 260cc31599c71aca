"""``modelsteal reproduce`` of a copied results folder, run from another working directory: the recorded paths
(the victim checkpoint) resolve against the results folder (issue 29, defect 4); and a tolerance of 0 counts an
exact re-run as reproduced (``|now - committed| <= tolerance``, never a strict ``<``)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from modelsteal.cli.main import main
from modelsteal.experiment.reproduce import Comparison, reproduce, resolve_recorded_path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "results" / "reproduce-digits"


def _set_first(out: Path, column: str, value: str) -> None:
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0][column] = value
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def test_a_tolerance_is_inclusive():
    # exact binary fractions: the difference is exactly the tolerance
    assert Comparison("p", committed=0.5, now=0.75, tolerance=0.25).within
    assert Comparison("p", committed=0.75, now=0.5, tolerance=0.25).within
    assert not Comparison("p", committed=0.5, now=0.875, tolerance=0.25).within
    assert Comparison("p", committed=0.5, now=0.5, tolerance=0.0).within
    assert not Comparison("p", committed=0.5, now=0.5 + 2**-20, tolerance=0.0).within


def test_recorded_paths_resolve_against_the_results_folder(tmp_path):
    copy = tmp_path / "elsewhere" / "renamed-copy"
    shutil.copytree(COMMITTED, copy)
    recorded = "results/reproduce-digits/victim.pt"
    assert resolve_recorded_path(recorded, out_dir=copy) == copy / "victim.pt"
    # with the results folder recorded (sweeps record it now): relative to it, outside it too
    assert resolve_recorded_path(recorded, out_dir=copy, recorded_out="results/reproduce-digits") == copy / "victim.pt"
    (tmp_path / "elsewhere" / "victims").mkdir()
    (tmp_path / "elsewhere" / "victims" / "v.pt").write_bytes(b"x")
    assert (resolve_recorded_path("results/victims/v.pt", out_dir=copy, recorded_out="results/renamed-copy")
            == tmp_path / "elsewhere" / "victims" / "v.pt")
    # an absolute path is kept; a path found nowhere under the folder stays as recorded
    assert resolve_recorded_path(str(copy / "victim.pt"), out_dir=tmp_path) == copy / "victim.pt"
    assert resolve_recorded_path("nowhere/v.pt", out_dir=copy) == Path("nowhere/v.pt")


def test_reproduce_a_copied_results_folder_from_another_directory(tmp_path, monkeypatch, capsys):
    copy = tmp_path / "copied" / "digits-results"
    shutil.copytree(COMMITTED, copy)
    work = tmp_path / "somewhere-else"
    work.mkdir()
    monkeypatch.chdir(work)  # results/reproduce-digits/victim.pt does not exist from here
    (first,) = reproduce(copy, points=1, tolerance=0.02)
    assert abs(first.now - first.committed) <= 0.02
    # tolerance 0: the committed value set to what this machine makes (same machine: an exact re-run) reproduces
    _set_first(copy, "attacker_accuracy", repr(first.now))
    assert main(["--threads", "1", "reproduce", str(copy), "--quiet", "--tolerance", "0"]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 point(s) reproduced within 0" in out and "yes ±0" in out
    # the copy's own victim is the one used: altered, it is refused by its SHA-256
    (copy / "victim.pt").write_bytes((copy / "victim.pt").read_bytes() + b"\0")
    with pytest.raises(ValueError, match="victim .*victim.pt has sha256"):
        reproduce(copy, points=1)
