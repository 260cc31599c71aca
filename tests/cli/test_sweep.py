"""The fast end-to-end path: CLI train, a tiny sweep (with caching and plots), and clear CLI errors."""

import csv

import pytest
import yaml

from modelsteal.cli.main import main
from modelsteal.experiment import load_config, run_sweep
from modelsteal.experiment.config import ConfigError, parse_config
from modelsteal.experiment.results import COLUMNS
from modelsteal.models import load_checkpoint

TINY = {
    "name": "tiny",
    "victim": {"dataset": "digits", "arch": "mlp", "epochs": 4, "lr": 0.05, "momentum": 0.9},
    "transfer": {"source": "dataset", "classes": [5, 6, 7, 8, 9], "copies": 2, "noise": 0.05},
    "defenses": [{"name": "none"}, {"name": "reverse-sigmoid", "strengths": [0.3, 1.0], "options": {"gamma": 0.2}}],
    "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 4, "lr": 0.05, "momentum": 0.9}}],
    "budgets": [200],
    "seeds": [0],
}


def test_tiny_sweep_writes_results_plots_and_resumes(tmp_path):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    assert main(["sweep", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 3 and list(rows[0])[: len(COLUMNS)] == COLUMNS
    assert all(int(r["queries"]) == 200 for r in rows)
    undefended = rows[0]
    assert float(undefended["l1_mean"]) == 0 and float(undefended["attacker_accuracy"]) > 0.3
    strong = next(r for r in rows if r["strength"] == "1.0")
    assert float(strong["l1_mean"]) > 0.5  # reverse sigmoid at beta=1 visibly perturbs
    assert list(out.glob("fig4-knockoff-b200.png"))
    # second run: every point comes from the cache, nothing is retrained
    points = sorted(out.glob("points/*.json"))
    stamps = [p.stat().st_mtime_ns for p in points]
    records = run_sweep(load_config(cfg_path), out_dir=out, progress=False, plots=False)
    assert len(records) == 3 and [p.stat().st_mtime_ns for p in points] == stamps
    # --budget override adds a new point set
    assert main(["sweep", str(cfg_path), "--out", str(out), "--budget", "100", "--quiet", "--no-plots"]) == 0
    assert {r["budget"] for r in csv.DictReader(open(out / "results.csv"))} == {"100"}


def test_train_cli_writes_a_self_describing_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "v.pt"
    assert main(["train", "--dataset", "digits", "--arch", "mlp", "--epochs", "2", "--seed", "3", "--out",
                 str(ckpt)]) == 0
    model, meta = load_checkpoint(ckpt)
    assert meta["dataset"] == "digits" and meta["arch"] == "mlp" and meta["input_shape"] == [1, 8, 8]
    assert meta["data_seed"] == 3  # the split `verify --method dataset-inference` reloads
    assert meta["metrics"]["test_accuracy"] > 0.5
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "nope", "--out", "x.pt"], "unknown dataset 'nope'"),
        (["attack", "--target", "missing.pt", "--budget", "5"], "does not exist"),
        (["sweep", "missing.yaml", "--out", "o"], "does not exist"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown key.*epochz"):
        parse_config({**TINY, "victim": {"epochz": 3}})
    with pytest.raises(ConfigError, match="budgets"):
        parse_config({**TINY, "budgets": [0]})
    with pytest.raises(ConfigError, match="'attacks'"):
        parse_config({k: v for k, v in TINY.items() if k != "attacks"})


def test_attack_cli_against_a_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "v.pt"
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--arch",
                "mlp",
                "--epochs",
                "3",
                "--lr",
                "0.05",
                "--momentum",
                "0.9",
                "--out",
                str(ckpt),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "attack",
                "--target",
                str(ckpt),
                "--budget",
                "150",
                "--transfer",
                "dataset:digits:val",
                "--clone",
                "mlp",
                "--epochs",
                "3",
                "--lr",
                "0.05",
                "--momentum",
                "0.9",
                "--defense",
                "top-k",
                "--strength",
                "1",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    import json

    r = json.loads((tmp_path / "r.json").read_text())
    assert r["queries"] == 143 and 0.2 < r["attacker_accuracy"] <= 1  # the val split has 143 images


def test_demo_config_is_valid_and_uses_registered_names():
    from modelsteal.attacks import available_attacks
    from modelsteal.cli.demo import demo_config_text
    from modelsteal.defenses import available_defenses

    cfg = parse_config(yaml.safe_load(demo_config_text()))
    assert {d.name for d in cfg.defenses} - {"none"} <= set(available_defenses())
    assert {a.name for a in cfg.attacks} <= set(available_attacks())
    assert cfg.victim.dataset == "digits" and cfg.transfer.source == "sample-patches"


def test_only_keeps_the_named_defenses_and_every_attack_and_rejects_unknown_names():
    from modelsteal.cli.sweep import restrict

    cfg = parse_config(TINY)
    only = restrict(cfg, ["reverse-sigmoid"])
    assert [d.name for d in only.defenses] == ["reverse-sigmoid"] and only.attacks == cfg.attacks
    with pytest.raises(ValueError, match="names no defense or attack of tiny; known: knockoff, none, reverse-sigmoid"):
        restrict(cfg, ["mad"])


def test_transfer_set_joins_several_datasets_with_their_classes_numbered_in_turn(digits):
    from modelsteal.experiment.config import TransferConfig
    from modelsteal.experiment.transfer import build_transfer_set

    x, labels = build_transfer_set(TransferConfig(dataset=["digits", "digits"], split="val"), victim_data=digits)
    n = len(digits.x_val)
    assert len(x) == 2 * n and bool((x[:n] == x[n:]).all())
    assert labels[:n].tolist() == digits.y_val.tolist() and labels[n:].tolist() == (digits.y_val + 10).tolist()
