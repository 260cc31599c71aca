"""Every shipped sweep config parses at every scale, names registered attacks/defenses with valid options, and its
cpu scale is the config of the committed CPU-scale results."""

import json
from pathlib import Path

import pytest
import yaml

from modelsteal.attacks import TrainConfig, attack_class
from modelsteal.defenses import make_defense
from modelsteal.experiment import load_config
from modelsteal.experiment.config import DEFAULT_SCALE, ConfigError, config_scales, parse_config
from modelsteal.experiment.validate import validate_sweep
from modelsteal.experiment.victims import is_recipe_defense
from modelsteal.models import build_model

#: every sweep config, in its paper's folder (configs/ownership/ holds the ownership runner's options, not sweeps)
CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "configs").rglob("*.yaml") if p.parent.name != "ownership")


def test_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"pp-table1-fashion-mnist.yaml", "pp-table1-mnist.yaml", "pp-fig4-fashion-mnist.yaml"} <= names


def _scales(path: Path) -> list[str]:
    return [s for s in config_scales(yaml.safe_load(path.read_text())) if s != DEFAULT_SCALE]


#: every config at every scale it offers
SCALED = [(p, scale) for p in CONFIGS for scale in [DEFAULT_SCALE, *_scales(p)]]


@pytest.mark.parametrize(("path", "scale"), SCALED, ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_config_parses_and_names_what_exists(path: Path, scale: str) -> None:
    cfg = load_config(path, scale=scale)
    assert cfg.name == (path.stem if scale == DEFAULT_SCALE else f"{path.stem}-{scale}")
    validate_sweep(cfg)  # recipes, defenses at every strength, attacks: what a sweep checks before training
    for d in cfg.defenses:
        for strength in d.strengths:
            if not is_recipe_defense(d):
                make_defense(d.name, strength=strength, **d.options)  # raises on unknown names/options
    for a in cfg.attacks:
        cls = attack_class(a.name)
        assert cls.modality == "images"
        TrainConfig(**a.train)
        shape = (3, 32, 32) if cfg.victim.dataset.startswith("cifar") else (1, 28, 28)
        build_model(a.clone or cfg.victim.arch, input_shape=shape, num_classes=10, seed=0)
    assert cfg.budgets and all(b > 0 for b in cfg.budgets) and cfg.seeds


@pytest.mark.parametrize("path", [p for p in CONFIGS if _scales(p)], ids=lambda p: p.stem)
def test_cpu_scale_keeps_the_victim_and_is_smaller(path: Path) -> None:
    assert _scales(path) == ["cpu"]
    cpu, full = load_config(path, scale="cpu"), load_config(path)
    assert cpu.name == f"{path.stem}-cpu"  # the committed results/.../<name> directories
    validate_sweep(cpu)
    assert cpu.victim == full.victim and cpu.transfer == full.transfer
    assert max(a.train.get("epochs", 0) for a in full.attacks) >= max(a.train.get("epochs", 0) for a in cpu.attacks)
    assert max(full.budgets) >= max(cpu.budgets)


def test_the_committed_cpu_runs_are_a_scale_of_their_configs() -> None:
    """Every CPU-scale results directory's recorded config is, key for key, its config file at scale cpu (the
    directories the config grew past since are listed: their points are a subset)."""
    root = Path(__file__).parents[2]
    by_name = {load_config(p, scale=s).name: (p, s) for p in CONFIGS for s in [DEFAULT_SCALE, *_scales(p)]}
    grown = {"mnist-cpu", "am-fig4-mnist-jbda-cpu", "pp-adaptive-mnist-cpu", "pp-table1-fashion-mnist-cpu-b50000",
             "pp-table1-mnist-cpu-b50000"}
    checked = 0
    for prov in sorted((root / "results").rglob("provenance.json")):
        recorded = json.loads(prov.read_text())["config"]
        if prov.parent.name in grown or not recorded["name"].endswith("-cpu"):
            continue
        path, scale = by_name[recorded["name"]]
        assert load_config(path, scale=scale) == parse_config(recorded), prov.parent
        checked += 1
    assert checked >= 30


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """name: tiny
victim: {dataset: digits, arch: lenet, epochs: 3, lr: 0.1}
transfer: {source: sample-patches}
defenses: [{name: none}]
attacks: [{name: knockoff, clone: lenet, train: {epochs: 30, lr: 0.05}}]
budgets: [5000]
"""


def test_a_scale_merges_mappings_key_by_key_and_replaces_lists(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "scales:\n  cpu: {name: tiny-cpu, victim: {epochs: 1}, budgets: [100, 200]}\n")
    full, cpu = load_config(path), load_config(path, scale="cpu")
    assert (full.name, full.victim.epochs, full.victim.lr, full.budgets) == ("tiny", 3, 0.1, [5000])
    assert (cpu.name, cpu.victim.epochs, cpu.victim.lr, cpu.budgets) == ("tiny-cpu", 1, 0.1, [100, 200])
    assert cpu.attacks == full.attacks and load_config(path, scale="full") == full


def test_an_unknown_scale_is_one_line_naming_the_scales(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from modelsteal.cli.main import main

    path = _write(tmp_path, BASE + "scales:\n  cpu: {budgets: [100]}\n")
    with pytest.raises(ConfigError, match="no scale 'gpu'; it has full, cpu"):
        load_config(path, scale="gpu")
    with pytest.raises(ConfigError, match="runs at full only"):
        load_config(_write(tmp_path, BASE, "plain.yaml"), scale="cpu")
    with pytest.raises(ConfigError, match="'full' is the config's own settings"):
        load_config(_write(tmp_path, BASE + "scales:\n  full: {budgets: [100]}\n", "full.yaml"))
    assert main(["sweep", str(path), "--scale", "gpu", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no scale 'gpu'" in err
    assert not (tmp_path / "out").exists()
