"""The ownership experiment runner (``modelsteal ownership CONFIG``): its config is checked by
experiment/validate.py before any training (one line, exit 2), presets fill what a config leaves out, and a small
digits run claims the clone stolen through DAWN and not the independent model."""

from __future__ import annotations

import json

import pytest
from cli_helpers import one_line_error

from modelsteal.experiment.config import ConfigError
from modelsteal.experiment.ownership_config import PRESETS, parse_ownership_config
from modelsteal.experiment.validate import validate_ownership


def test_a_config_takes_its_datasets_preset_for_what_it_leaves_out_or_nulls():
    cfg = parse_ownership_config({"dataset": "fashion-mnist", "indep_size": None, "budget": 123})
    assert cfg.indep_size == PRESETS["fashion-mnist"]["indep_size"] == 5000  # null keeps the preset
    assert cfg.budget == 123 and cfg.arch == "lenet" and cfg.rate == 0.1 and cfg.seeds == 5
    assert cfg.attacks == ("knockoff-soft", "knockoff-argmax", "knockoff-mad", "jbda", "jb-top3")
    digits = parse_ownership_config({"dataset": "digits", "attacks": ["knockoff-soft"], "independent": "mlp:3"})
    assert digits.arch == "mlp" and digits.attacks == ("knockoff-soft",) and digits.independents() == [("mlp", 3)]
    assert digits.verification_seeds_mingd == digits.seeds  # mingd_seeds null: as many as the others


@pytest.mark.parametrize(("raw", "message"), [
    ({"rate": 0}, "rate (DAWN's fraction of watermarked answers) must be in (0, 1], got 0"),
    ({"budget": 0}, "budget must be an integer >= 1, got 0"),
    ({"seeds": 2.5}, "seeds must be an integer >= 1, got 2.5"),
    ({"indep_size": -1}, "indep_size must be an integer >= 1 or null, got -1"),
    ({"mad_epsilon": -0.5}, "mad_epsilon must be a number > 0"),
    ({"attacks": "knockoff-soft,knockof"}, "attacks: unknown knockof"),
    ({"independent": "mlp:1,resnet9:2"}, "independent (resnet9:2): unknown architecture 'resnet9'"),
    ({"independent": "mlp"}, "independent: 'mlp' is not arch:seed"),
    ({"arch": "lenett"}, "arch: unknown architecture 'lenett'"),
    ({"shuffle": "yes"}, "shuffle must be true or false"),
])
def test_bad_values_are_refused_naming_the_key(raw, message):
    with pytest.raises(ConfigError) as e:
        validate_ownership(parse_ownership_config({"dataset": "digits", **raw}))
    assert message in str(e.value)


def test_the_cli_refuses_a_bad_config_in_one_line_before_any_training(capsys, tmp_path):
    out = tmp_path / "o.json"
    for text, needle in [("dataset: cifar10\n", "dataset must be one of digits, fashion-mnist, mnist"),
                         ("dataset: digits\nbudgett: 5\n", "unknown key(s) budgett"),
                         ("dataset: digits\nrate: 2\n", "rate (DAWN's fraction"),
                         ("dataset: digits\nprivate: 5000\n", "private 5000 leaves no pool"),
                         ("dataset: [digits\n", "invalid YAML")]:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        one_line_error(capsys, ["ownership", str(path), "--out", str(out)], str(path), needle)
        assert not out.exists()


SMALL = {"dataset": "digits", "attacks": "knockoff-soft", "independent": "mlp:11", "victim_epochs": 40,
         "clone_epochs": 40, "indep_epochs": 40, "seeds": 2, "samples": 20, "fit_samples": 40, "mingd_samples": 10,
         "mingd_fit_samples": 20, "mingd_steps": 5, "mingd_seeds": 1}


def test_a_small_digits_run_claims_the_stolen_clone_and_not_the_independent(tmp_path, capsys):
    from modelsteal.cli.main import main

    cfg_path = tmp_path / "small.yaml"
    cfg_path.write_text(json.dumps(SMALL))  # JSON is YAML
    assert main(["ownership", str(cfg_path), "--out", str(tmp_path / "small.json"), "--quiet"]) == 0
    report = json.loads((tmp_path / "small.json").read_text())
    assert report["config"]["attacks"] == ["knockoff-soft"] and report["config"]["out"] == str(tmp_path / "small.json")
    models = report["models"]
    assert set(models) == {"victim (source)", "knockoff-soft", "independent mlp s11"}
    clone = models["knockoff-soft"]
    assert clone["attack_queries"] == 700 and clone["client"] == "knockoff-soft"
    assert 40 <= clone["dawn_records"] <= 100  # r = 0.1 of 700 answers, chosen by a keyed hash
    rows = report["rows"]
    assert len(rows) == 3 * (2 + 2 + 1)  # three models; DAWN and Blind Walk 2 seeds each, MinGD 1
    dawn = {(r["model"], r["seed"]): r["p_value"] for r in rows if r["method"] == "dawn"}
    assert all(dawn[("knockoff-soft", s)] < 0.01 for s in (0, 1))  # the watermarks came back
    assert all(dawn[("independent mlp s11", s)] > 0.01 for s in (0, 1))
    assert all(r["dawn_records_of"] == "knockoff-soft" for r in rows if r["method"] == "dawn")
    assert "dawn" in capsys.readouterr().out  # the claims table
