"""Every shipped sweep config parses, names registered attacks/defenses with valid options, and has its twin."""

from pathlib import Path

import pytest

from modelsteal.attacks import TrainConfig, attack_class
from modelsteal.defenses import make_defense
from modelsteal.experiment import load_config
from modelsteal.experiment.validate import validate_sweep
from modelsteal.experiment.victims import is_recipe_defense
from modelsteal.models import build_model

#: every sweep config, in its paper's folder (configs/ownership/ holds the ownership runner's options, not sweeps)
CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "configs").rglob("*.yaml") if p.parent.name != "ownership")


def test_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"pp-table1-fashion-mnist.yaml", "pp-table1-mnist.yaml", "pp-fig4-fashion-mnist.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_names_what_exists(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.name == path.stem
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


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.endswith("-cpu")], ids=lambda p: p.stem)
def test_cpu_config_has_a_full_scale_twin_with_the_same_victim(path: Path) -> None:
    twin = path.with_name(path.name.replace("-cpu.yaml", ".yaml"))
    assert twin.exists(), f"{path.name} has no full-scale twin"
    cpu, full = load_config(path), load_config(twin)
    assert cpu.victim == full.victim and cpu.transfer == full.transfer
    assert max(a.train.get("epochs", 0) for a in full.attacks) >= max(a.train.get("epochs", 0) for a in cpu.attacks)
    assert max(full.budgets) >= max(cpu.budgets)
