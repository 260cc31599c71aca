"""A shard that receives no point of the plan trains no victim, writes nothing and says so (issue 29, defect 7)."""

from __future__ import annotations

import pytest
import yaml
from cli_helpers import one_line_error

import modelsteal.experiment.sweep as sweep_module
import modelsteal.experiment.victims as victims_module
from modelsteal.cli.main import main
from modelsteal.experiment.config import parse_config

TINY = {
    "name": "tiny",
    "victim": {"dataset": "digits", "arch": "mlp", "epochs": 1},
    "transfer": {"source": "dataset", "dataset": "digits", "size": 50},
    "defenses": [{"name": "none"}],
    "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 1}}],
    "budgets": [20],
}


@pytest.fixture
def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a victim was trained for a shard without points")

    monkeypatch.setattr(victims_module, "train_victim", fail)


def test_an_empty_shard_trains_nothing_and_says_so(tmp_path, capsys, forbid_training):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY))  # one group of points sharing their queries: shard 0 of 2 gets it
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--shard", "1/2"]) == 0
    cap = capsys.readouterr()
    assert "shard 1/2 of tiny holds no point" in cap.out and "1 group" in cap.out and "no victim trained" in cap.out
    assert not (tmp_path / "o").exists()


def test_run_sweep_on_an_empty_shard_returns_no_record(tmp_path, forbid_training):
    assert sweep_module.run_sweep(parse_config(TINY), out_dir=tmp_path / "o", progress=False, shard_of=(1, 2)) == []
    assert not (tmp_path / "o").exists()


def test_an_empty_shard_still_checks_the_config(tmp_path, capsys, forbid_training):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "budgets": [0]}))
    one_line_error(capsys, ["sweep", cfg, "--out", tmp_path / "o", "--quiet", "--shard", "1/2"], "budgets")
