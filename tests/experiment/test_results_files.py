"""``results.csv`` is written with LF line ends, as ``results export`` writes them, and ``results list`` counts
a victim once however many paths it was recorded under (issue 29, defect 7)."""

from __future__ import annotations

import json

from modelsteal.cli.main import main
from modelsteal.experiment.results import COLUMNS, write_results

ROWS = [
    {"defense": "none", "strength": None, "attack": "knockoff", "budget": 20, "seed": 0, "attacker_accuracy": 0.5},
    {"defense": "mad", "strength": 0.5, "attack": "knockoff", "budget": 20, "seed": 0, "attacker_accuracy": 0.25},
]


def test_results_csv_has_lf_line_ends_like_results_export(tmp_path, capsys):
    path = write_results(ROWS, tmp_path)
    data = path.read_bytes()
    assert b"\r" not in data and data.count(b"\n") == 3
    assert data.startswith(",".join(COLUMNS[:3]).encode())
    assert main(["results", "export", str(tmp_path), "--out", str(tmp_path / "exported.csv")]) == 0
    assert (tmp_path / "exported.csv").read_bytes() == data


def test_results_list_counts_a_victim_once_across_its_copies(tmp_path, capsys):
    write_results(ROWS, tmp_path)
    prov = {"config_name": "tiny", "victims": {"runs/a/victim.pt": "ab" * 32, "/abs/copy/victim.pt": "ab" * 32,
                                               "runs/a/victim-dp-sgd-1.pt": "cd" * 32},
            "environments": {"e1": {}}}
    (tmp_path / "provenance.json").write_text(json.dumps(prov))
    assert main(["results", "list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "tiny, 2 row(s)" in out and "2 victim(s)" in out and "1 environment(s)" in out
