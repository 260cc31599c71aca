"""A recipe option given to a recipe that takes none (``plain``) is one line, exit 2, before any training
(issue 29, defect 2): on the command line and in a sweep config alike."""

from __future__ import annotations

import pytest
import yaml
from cli_helpers import one_line_error

import modelsteal.cli.train as train_cli
import modelsteal.experiment.victims as victims_module
from modelsteal.training import make_recipe


@pytest.fixture
def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a victim was trained before the recipe was checked")

    monkeypatch.setattr(victims_module, "train_victim", fail)
    monkeypatch.setattr(train_cli, "train_victim", fail)


def test_make_recipe_plain_refuses_an_option_by_name():
    with pytest.raises(ValueError, match=r"^unknown option noise_multiplier for recipe 'plain'; valid: none$"):
        make_recipe("plain", noise_multiplier=1.0)
    assert make_recipe("plain").options() == {}


def test_train_recipe_option_without_recipe(tmp_path, capsys, forbid_training):
    one_line_error(capsys, ["train", "--dataset", "digits", "--recipe-option", "noise_multiplier=1.0",
                            "--out", tmp_path / "v.pt"], "noise_multiplier", "recipe 'plain'", "valid: none")
    assert not (tmp_path / "v.pt").exists()


def test_sweep_plain_recipe_with_an_option(tmp_path, capsys, forbid_training):
    cfg = {
        "name": "tiny",
        "victim": {"dataset": "digits", "arch": "mlp", "epochs": 1, "recipe": {"name": "plain", "weight": 0.5}},
        "transfer": {"source": "dataset", "dataset": "digits", "size": 50},
        "defenses": [{"name": "none"}],
        "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 1}}],
        "budgets": [20],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    one_line_error(capsys, ["sweep", path, "--out", tmp_path / "o", "--quiet"],
                   "victim.recipe", "unknown option weight", "recipe 'plain'")
    assert not (tmp_path / "o").exists()
