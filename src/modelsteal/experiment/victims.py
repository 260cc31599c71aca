"""Victims: the model an API serves, trained with a recipe (plain, outlier exposure, DP-SGD, EWE) and cached.

The victim of a config is trained once and cached as ``DIR/victim-<key>.pt``, or at ``victim.checkpoint`` when
given (an existing checkpoint there is reused as is, so several configs can share one victim). A "defense" that is
a training recipe (``dp-sgd``, …) makes a victim of its own per strength (:func:`defended_victim_config`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelsteal.data import DatasetSplits, load_dataset
from modelsteal.defenses import available_defenses
from modelsteal.devices import resolve_device
from modelsteal.experiment.config import ConfigError, DefenseConfig, SweepConfig, VictimConfig, config_entry, point_key
from modelsteal.experiment.plan import Point
from modelsteal.metrics import attacker_accuracy
from modelsteal.models import build_model, load_checkpoint, save_checkpoint
from modelsteal.training import Recipe, TrainConfig, TrainHistory, available_recipes, make_recipe


def train_victim(
    data: DatasetSplits,
    *,
    arch: str,
    config: TrainConfig,
    recipe: Recipe | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool | str = True,
) -> tuple[nn.Module, TrainHistory]:
    """Build ``arch`` for ``data`` (normalisation from its training split inside the model) and train it with
    ``recipe`` (default ``plain``), keeping the epoch with the best validation accuracy. Used by
    ``modelsteal train`` and sweeps. ``device`` ``None`` or ``auto``: CUDA when present."""
    recipe = recipe if recipe is not None else make_recipe("plain")
    device = resolve_device(device)
    model = build_model(
        arch, input_shape=data.input_shape, num_classes=data.num_classes, mean=data.mean, std=data.std, seed=seed
    ).to(device)
    label = f"train {arch}" + ("" if recipe.name == "plain" else f" ({recipe.name})")
    return recipe.fit(model, data, config=config, generator=torch.Generator().manual_seed(seed), device=device,
                      progress=(label if progress is True else progress))


def victim_recipe(v: VictimConfig) -> Recipe:
    """The victim's training recipe, made (and so validated) from its config; a ``ConfigError`` names the key."""
    with config_entry("victim.recipe"):
        recipe = make_recipe(v.recipe_name, **v.recipe_options)
        check = getattr(recipe, "check_victim_data", None)
        if check is not None:
            check(v.dataset)
    return recipe


def recipe_checkpoint_meta(history: TrainHistory, recipe: Recipe) -> dict[str, Any]:
    """What a checkpoint records of its training: the recipe with its options and, for DP-SGD, ε at δ."""
    extra: dict[str, Any] = {"recipe": recipe.describe()}
    if "watermark" in history.info:  # EWE: the triggers and facts a verifier is built from
        extra["watermark"] = history.info["watermark"]
    if "dp" in history.info:
        extra["dp"] = history.info["dp"]
        if history.info["dp"].get("module_fix"):
            extra["module_fix"] = history.info["dp"]["module_fix"]
    return extra


def victim_checkpoint_path(v: VictimConfig, *, out_dir: Path, key: str) -> Path:
    """Where the victim is cached: its model file ``victim.path`` when given; ``victim.checkpoint`` for a plain
    recipe; beside it (or in ``out_dir``) with the recipe's name and config hash otherwise, so every recipe
    setting has its own cached victim."""
    if v.path:
        return Path(v.path)
    if v.checkpoint and v.is_plain:
        return Path(v.checkpoint)
    if v.checkpoint:
        p = Path(v.checkpoint)
        return p.with_name(f"{p.stem}-{v.recipe_name}-{key}{p.suffix}")
    return out_dir / f"victim-{key}.pt"


def victim_train_config(v: VictimConfig) -> TrainConfig:
    """The victim's optimisation settings; a ``ConfigError`` names a wrong one (and ``epochs`` must be >= 1: an
    untrained victim is never saved)."""
    with config_entry("victim"):
        config = TrainConfig(epochs=v.epochs, lr=v.lr, momentum=v.momentum, batch_size=v.batch_size,
                             weight_decay=v.weight_decay, lr_step=v.lr_step)
    if config.epochs < 1:
        raise ConfigError(f"victim.epochs must be >= 1 (0 would save an untrained victim), got {config.epochs}")
    return config

def load_or_train_victim(
    v: VictimConfig, *, out_dir: Path, device: torch.device, progress: bool = True, data: DatasetSplits | None = None
) -> tuple[nn.Module, DatasetSplits, float, dict[str, Any]]:
    """The victim of ``v``, from its cached checkpoint or trained now: ``(model, data, test acc, checkpoint meta)``."""
    recipe = victim_recipe(v)
    data = data if data is not None else load_dataset(v.dataset, data_dir=v.data_dir, seed=v.seed)
    path = victim_checkpoint_path(v, out_dir=out_dir, key=point_key(v.identity()))
    if v.path:
        model, meta = _victim_from_file(v, data=data, device=device)
    elif path.exists():
        model, meta = load_checkpoint(path, device=device)
        if tuple(meta["input_shape"]) != data.input_shape:
            raise ValueError(
                f"checkpoint {path} takes inputs {meta['input_shape']}, dataset {v.dataset} has {data.input_shape}"
            )
    else:
        config = victim_train_config(v)
        model, history = train_victim(data, arch=v.arch, config=config, recipe=recipe, seed=v.seed, device=device,
                                      progress=progress)
        meta = {**recipe_checkpoint_meta(history, recipe), "data_seed": v.seed}  # the split `verify` reloads
        save_checkpoint(
            model,
            path,
            dataset=data.name,
            metrics={"val_accuracy": attacker_accuracy(model, data.x_val, data.y_val, device=device)},
            extra=meta,
        )
    acc = attacker_accuracy(model, data.x_test, data.y_test, device=device)
    return model.eval(), data, acc, meta


def _victim_from_file(v: VictimConfig, *, data: DatasetSplits,
                      device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The victim in the model file ``v.path`` (any format :func:`~modelsteal.models.formats.load_model` reads),
    checked against ``v.dataset``'s inputs; a file is never retrained (a recipe is a one-line error)."""
    from modelsteal.models.formats import ModelSpec, load_model

    if not v.is_plain:
        raise ConfigError(f"victim.path loads a trained model ({v.path}); recipe {v.recipe_name!r} would need to "
                          "train it: drop victim.recipe, or train the victim with victim.arch instead of path")
    spec = ModelSpec.from_mapping(dict(v.spec or {}), where="victim.spec")
    loaded = load_model(v.path, spec=ModelSpec(dataset=data.name).merged(spec), device=device)
    if tuple(loaded.meta["input_shape"]) != tuple(data.input_shape):
        raise ConfigError(f"victim.path {v.path} takes inputs {tuple(loaded.meta['input_shape'])}, dataset {v.dataset} "
                          f"has {tuple(data.input_shape)}")
    return loaded.model, loaded.meta


def is_recipe_defense(dcfg: DefenseConfig) -> bool:
    """Whether a sweep's "defense" is a training recipe (``dp-sgd``, …): its strength sets a victim's recipe."""
    key = dcfg.name.strip().lower().replace("_", "-")
    return key in available_recipes() and key not in available_defenses()


def defended_victim_config(v: VictimConfig, dcfg: DefenseConfig, strength: float | None) -> VictimConfig:
    """The victim of a recipe-defense point: ``v`` trained with recipe ``dcfg.name``, its strength parameter set
    to ``strength`` and its other options from ``dcfg.options``."""
    recipe = make_recipe(dcfg.name, **dcfg.options)
    spec: dict[str, Any] = {"name": recipe.name, **dcfg.options}
    if strength is not None:
        if recipe.strength_param is None:
            raise ConfigError(f"recipe {recipe.name!r} has no strength parameter; got strength={strength}")
        spec[recipe.strength_param] = strength
    return replace(v, recipe=spec)

def sweep_victim_paths(cfg: SweepConfig, *, out_dir: Path) -> dict[tuple[str, float | None], Path]:
    """Where each ``(defense display name, strength)`` of ``cfg`` finds its victim checkpoint: the sweep's own
    victim, or a recipe defense's victim trained for that strength."""
    main = victim_checkpoint_path(cfg.victim, out_dir=out_dir, key=point_key(cfg.victim.identity()))
    paths: dict[tuple[str, float | None], Path] = {}
    for d in cfg.defenses:
        for s in d.strengths:
            strength = None if s is None else float(s)
            if is_recipe_defense(d):
                v = defended_victim_config(cfg.victim, d, s)
                paths[(d.display, strength)] = victim_checkpoint_path(v, out_dir=out_dir, key=point_key(v.identity()))
            else:
                paths[(d.display, strength)] = main
    return paths

def point_victim_config(p: Point) -> VictimConfig:
    """The victim the API of ``p`` serves: the sweep's, or a recipe defense's victim for its strength."""
    return defended_victim_config(p.victim, p.defense, p.strength) if is_recipe_defense(p.defense) else p.victim
