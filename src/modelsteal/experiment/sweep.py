"""Sweeps: defenses × strengths × attacks × budgets × seeds, one record per point.

Each point's record is cached as ``DIR/points/<key>.json`` as soon as it is finished and ``DIR/results.csv``
is rewritten after every point, so an interrupted or repeated sweep recomputes nothing already done.
The victim is trained once and cached as ``DIR/victim-<key>.pt``, or at ``victim.checkpoint`` when given (an
existing checkpoint there is reused as is, so several configs can share one victim).
Every budget's clone is trained from scratch (no warm start from a smaller budget).
``DIR/provenance.json`` records what the results were made with: the victim file's SHA-256 (each row of
``results.csv`` also carries its own, column ``victim_sha256``), the config hash, the git commit, library
versions, threads, CPU and oneDNN ISA, and each point's wall time (:mod:`modelsteal.experiment.environment`).
A sweep into a directory recorded with another victim says so in one line on stderr.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from modelsteal._registry import check_options, constructor_parameters
from modelsteal.attacks import attack_class
from modelsteal.attacks.base import Attack, StealResult, available_attacks, steal_together
from modelsteal.blackbox import PredictionAPI
from modelsteal.data import DatasetSplits, available_datasets, load_dataset
from modelsteal.defenses import available_defenses, make_defense
from modelsteal.defenses.base import defense_options
from modelsteal.determinism import enable_determinism
from modelsteal.devices import resolve_device
from modelsteal.experiment.config import (
    AttackConfig,
    ConfigError,
    DefenseConfig,
    SweepConfig,
    VictimConfig,
    point_key,
)
from modelsteal.experiment.detection import (
    check_benign_data,
    check_detector_config,
    detection_facts,
    detector_key,
    fit_point_detector,
    run_benign_client,
    write_detection,
)
from modelsteal.experiment.environment import environment, file_sha256
from modelsteal.experiment.executors import Executor, SerialExecutor, make_executor
from modelsteal.experiment.plan import Point, plan, shard, units
from modelsteal.experiment.results import read_provenance, write_provenance, write_results
from modelsteal.experiment.transfer import build_transfer_set, seed_set
from modelsteal.metrics import angular_deviation, attacker_accuracy, defense_cost, fidelity, perturbation_summary
from modelsteal.models import architecture_key, build_model, load_checkpoint, save_checkpoint
from modelsteal.outputs import make_output
from modelsteal.training import Recipe, TrainConfig, TrainHistory, available_recipes, make_recipe

ANGLE_SAMPLES = 128  # attacker queries on which the clone's gradient deviation is measured


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
    with _entry("victim.recipe"):
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
    """Where the victim is cached: ``victim.checkpoint`` for a plain recipe; beside it (or in ``out_dir``) with
    the recipe's name and config hash otherwise, so every recipe setting has its own cached victim."""
    if v.checkpoint and v.is_plain:
        return Path(v.checkpoint)
    if v.checkpoint:
        p = Path(v.checkpoint)
        return p.with_name(f"{p.stem}-{v.recipe_name}-{key}{p.suffix}")
    return out_dir / f"victim-{key}.pt"


def victim_train_config(v: VictimConfig) -> TrainConfig:
    """The victim's optimisation settings; a ``ConfigError`` names a wrong one (and ``epochs`` must be >= 1: an
    untrained victim is never saved)."""
    with _entry("victim"):
        config = TrainConfig(epochs=v.epochs, lr=v.lr, momentum=v.momentum, batch_size=v.batch_size,
                             weight_decay=v.weight_decay, lr_step=v.lr_step)
    if config.epochs < 1:
        raise ConfigError(f"victim.epochs must be >= 1 (0 would save an untrained victim), got {config.epochs}")
    return config


def prepare_victim(
    cfg: SweepConfig, *, out_dir: Path, device: torch.device, progress: bool = True
) -> tuple[nn.Module, DatasetSplits, float]:
    """Load or train the victim; returns ``(model, data, test accuracy)``."""
    model, data, acc, _ = load_or_train_victim(cfg.victim, out_dir=out_dir, device=device, progress=progress)
    return model, data, acc


def load_or_train_victim(
    v: VictimConfig, *, out_dir: Path, device: torch.device, progress: bool = True, data: DatasetSplits | None = None
) -> tuple[nn.Module, DatasetSplits, float, dict[str, Any]]:
    """The victim of ``v``, from its cached checkpoint or trained now: ``(model, data, test acc, checkpoint meta)``."""
    recipe = victim_recipe(v)
    data = data if data is not None else load_dataset(v.dataset, data_dir=v.data_dir, seed=v.seed)
    path = victim_checkpoint_path(v, out_dir=out_dir, key=point_key(v.identity()))
    if path.exists():
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


#: what :func:`build_attack` hands an attack itself: a config's ``options`` may not set these
ATTACK_PROVIDED = ("transfer_set", "transfer_labels", "seed_set", "natural", "clone", "train", "device")


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


def _check_train(train: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a mapping of training options, keys and value types checked first."""
    check_options(TrainConfig, train, kind="training", label="the training settings")
    return TrainConfig(**train)


def validate_sweep(cfg: SweepConfig) -> None:
    """Check everything a sweep will build before any data is loaded or model trained: the device, the
    datasets' names, the output format, the victim's recipe, every defense (or recipe defense) at every
    strength with its options, every attack's options and training options; a ``ConfigError`` names the entry."""
    with _entry("device"):
        resolve_device(cfg.device)
    _check_datasets(cfg)
    with _entry("victim.arch"):
        check_architecture(cfg.victim.arch)
    with _entry("output"):
        make_output(cfg.output)
    victim_recipe(cfg.victim)
    victim_train_config(cfg.victim)
    for i, d in enumerate(cfg.defenses):
        for strength in d.strengths:
            with _entry(f"defenses[{i}] ({d.name}, strength {strength})"):
                if is_recipe_defense(d):
                    victim_recipe(defended_victim_config(cfg.victim, d, strength))
                elif d.name.strip().lower() in ("none", "undefended"):
                    make_defense(d.name, strength=strength, **d.options)  # refuses a strength or options
                else:  # cheap: defenses train in bind() or fit(), never in the constructor
                    cls, kwargs = defense_options(d.name, strength=strength, options=d.options,
                                                  hint=_SWEEP_STRENGTH_HINT)
                    cls(**kwargs)
    if cfg.detector is not None:
        check_detector_config(cfg.detector)
    for i, a in enumerate(cfg.attacks):
        with _entry(f"attacks[{i}] ({a.name})"):
            cls = attack_class(a.name)
            if cls.modality != "images":
                raise ValueError(f"attack {a.name!r} extracts tabular models; run it with `modelsteal tramer`")
            check_options(cls, a.options, kind="attack", provided=ATTACK_PROVIDED)
            if a.clone is not None:
                check_architecture(a.clone)
        with _entry(f"attacks[{i}].train"):
            _check_train(a.train)


@contextmanager
def _entry(label: str) -> Iterator[None]:
    """A ``ValueError`` (or an inner ``ConfigError``) raised inside becomes a ``ConfigError`` led by ``label``,
    the config entry it is about."""
    try:
        yield
    except ValueError as e:  # ConfigError is a ValueError
        raise ConfigError(f"{label}: {e}") from None


_SWEEP_STRENGTH_HINT = "give it as the defense's strengths: [...]"


def check_architecture(name: Any) -> None:
    """A ``ValueError`` naming the known architectures unless ``name`` is one (the models registry's message,
    :func:`~modelsteal.models.architecture_key`, as :func:`build_model` reads the name)."""
    architecture_key(name)


def _check_datasets(cfg: SweepConfig) -> None:
    known = available_datasets()
    named = [("victim.dataset", cfg.victim.dataset)]
    t = cfg.transfer.dataset
    named += [("transfer.dataset", n) for n in ([] if t is None else [t] if isinstance(t, str) else t)]
    for where, name in named:
        if not isinstance(name, str) or name.strip().lower().replace("_", "-") not in known:
            raise ConfigError(f"{where}: unknown dataset {name!r}; known: {', '.join(known)}")


def build_attack(
    acfg: AttackConfig, *, victim_arch: str, transfer: tuple[Tensor, Tensor | None], seeds: Tensor,
    device: torch.device, natural: Tensor | None = None,
) -> Attack:
    """Instantiate a registered attack, handing it the attacker's data its constructor asks for (``natural``:
    natural in-distribution inputs, the victim's test split in sweeps, for attacks that mix them in); its options
    are checked against the constructor first (a one-line ``ValueError`` lists the valid ones)."""
    cls = attack_class(acfg.name)
    if cls.modality != "images":
        raise ValueError(f"attack {acfg.name!r} extracts tabular models; run it with `modelsteal tramer`")
    check_options(cls, acfg.options, kind="attack", provided=ATTACK_PROVIDED)
    clone = acfg.clone or victim_arch
    if isinstance(clone, str):  # before any query: a typo must not spend the budget
        check_architecture(clone)
    params = constructor_parameters(cls) or {}
    kwargs: dict[str, Any] = dict(acfg.options)
    if "transfer_set" in params:
        kwargs["transfer_set"] = transfer[0]
    if "transfer_labels" in params:
        if transfer[1] is None:
            raise ValueError(f"attack {acfg.name!r} needs labelled transfer data (transfer.source: dataset)")
        kwargs["transfer_labels"] = transfer[1]
    if "seed_set" in params:
        kwargs["seed_set"] = seeds
    if "natural" in params and natural is not None:
        kwargs["natural"] = natural
    return cls(clone=clone, train=_check_train(acfg.train), device=device, **kwargs)


def point_defense(
    dcfg: DefenseConfig,
    strength: float | None,
    *,
    victim: nn.Module | None = None,
    data: DatasetSplits | None = None,
    fits: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """The API's defense at one point: the named defense, or none when the "defense" is a training recipe.

    Given the ``victim`` and its ``data``, a defense that ``needs_fit`` (AM's misinformation model) is fitted on
    them; ``fits`` caches what it learned (:meth:`~modelsteal.defenses.Defense.fitted_options`) per name and
    options, so every strength of that defense reuses one fit."""
    if is_recipe_defense(dcfg):
        return None
    key = point_key(dcfg.name, dcfg.options)
    learned = (fits or {}).get(key, {})
    defense = make_defense(dcfg.name, strength=strength, **dcfg.options, **learned)
    if defense is not None and defense.needs_fit and victim is not None and data is not None:
        defense.fit(victim, data)
        if fits is not None:
            fits[key] = defense.fitted_options()
    return defense


def evaluate_defense(
    victim: nn.Module,
    dcfg: DefenseConfig,
    strength: float | None,
    data: DatasetSplits,
    *,
    output: str,
    eval_size: int | None,
    fits: dict[str, dict[str, Any]] | None = None,
) -> dict[str, float]:
    """Utility of one defense operating point on the first ``eval_size`` test examples: ``defender_accuracy``
    and the perturbation sizes (``l1_mean``, ``l1_std``, …) of :func:`~modelsteal.metrics.defense_cost`
    (a defense that needs fitting is fitted on ``victim`` and ``data``, once per ``fits`` cache)."""
    defense = point_defense(dcfg, strength, victim=victim, data=data, fits=fits)
    api = PredictionAPI(victim, defense=defense, output=output)
    cost = defense_cost(api, data.x_test[:eval_size], data.y_test[:eval_size])
    return {k: v for k, v in cost.items() if k not in ("victim_accuracy", "label_agreement")}


def attack_point(
    victim: nn.Module,
    data: DatasetSplits,
    cfg: SweepConfig,
    dcfg: DefenseConfig,
    strength: float | None,
    acfg: AttackConfig,
    budget: int,
    seed: int,
    *,
    transfer: tuple[Tensor, Tensor | None],
    seeds: Tensor,
    device: torch.device,
    fits: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Attack one defended API and measure the clone (a defense that needs fitting is fitted first, once per
    ``fits`` cache): the attack's part of a point's record."""
    api, attack = point_api(victim, dcfg, strength, data, output=cfg.output, fits=fits), build_attack(
        acfg, victim_arch=cfg.victim.arch, transfer=transfer, seeds=seeds, device=device)
    t0 = time.perf_counter()
    result = attack(api, budget=budget, seed=seed)
    return measure_clone(result, api, data, attack=attack, seconds=time.perf_counter() - t0, device=device)


def point_api(victim: nn.Module, dcfg: DefenseConfig, strength: float | None, data: DatasetSplits, *, output: str,
              fits: dict[str, dict[str, Any]] | None = None, detector: Any = None,
              response: str = "none") -> PredictionAPI:
    """The defended prediction API of one point (watched by ``detector``, answering its flags with
    ``response``)."""
    return PredictionAPI(victim, defense=point_defense(dcfg, strength, victim=victim, data=data, fits=fits),
                         output=output, detector=detector, response=response)


def measure_clone(result: StealResult, api: PredictionAPI, data: DatasetSplits, *, attack: Attack, seconds: float,
                  device: torch.device) -> dict[str, Any]:
    """The clone's accuracy and fidelity on the test split, the queries spent, the attack's reported facts and,
    for soft answers, how far the answers it trained on were from the victim's (sizes and gradient angles)."""
    clean_test = api.posteriors(data.x_test).cpu()
    rec: dict[str, Any] = {
        "attacker_accuracy": attacker_accuracy(result.clone, data.x_test, data.y_test, device=device),
        "fidelity": fidelity(result.clone, data.x_test, clean_test, device=device),
        "queries": result.queries,
        "attack_seconds": round(seconds, 2),
        **{k: result.info[k] for k in getattr(attack, "reported_info", ()) if k in result.info},
    }
    if result.transfer_x is not None and result.transfer_y is not None and result.transfer_y.ndim == 2:
        clean = api.posteriors(result.transfer_x).cpu()
        seen = perturbation_summary(clean, result.transfer_y.cpu())
        rec.update({f"query_{k}": v for k, v in seen.items() if k.endswith("_mean")})
        n = min(ANGLE_SAMPLES, len(clean))
        angles = angular_deviation(result.clone, result.transfer_x[:n], clean[:n], result.transfer_y[:n].cpu())
        rec["query_angle_mean"] = float(angles.mean())
    return rec


class PointCache:
    """What the points of a sweep share, loaded or rebuilt by cache key and kept per process: datasets, victims
    (from their checkpoints, trained when missing), transfer and seed sets, fitted defenses' state and each
    operating point's utility. Picklable: executors send it to worker processes (or Ray's object store) once.

    ``out_dir`` is where victims without a ``checkpoint`` path are cached; ``device`` is resolved in each
    process (``auto`` picks that process's GPU when it has one)."""

    def __init__(self, *, out_dir: str | Path, device: str = "auto", progress: bool = False) -> None:
        self.out_dir, self.device_name, self.progress = Path(out_dir), str(device), progress
        self._data: dict[str, DatasetSplits] = {}
        self._victims: dict[str, tuple[nn.Module, dict[str, Any], float, str]] = {}
        self._transfer: dict[str, tuple[tuple[Tensor, Tensor | None], Tensor]] = {}
        self._utility: dict[str, dict[str, float]] = {}
        self.fits: dict[str, dict[str, Any]] = {}
        self.detector_fits: dict[str, dict[str, Any]] = {}  # per detector and victim: calibrated threshold/δ
        self._detectors: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["progress"] = False  # no bars from worker processes
        state.pop("_device", None)
        state["_detectors"] = {}  # rebuilt per process from detector_fits (no calibration there)
        return state

    @property
    def device(self) -> torch.device:
        if getattr(self, "_device", None) is None:
            self._device = resolve_device(self.device_name)
        return self._device

    def data(self, v: VictimConfig) -> DatasetSplits:
        key = point_key(v.dataset, v.data_dir, v.seed)
        if key not in self._data:
            self._data[key] = load_dataset(v.dataset, data_dir=v.data_dir, seed=v.seed)
        return self._data[key]

    def put_data(self, v: VictimConfig, data: DatasetSplits) -> None:
        self._data[point_key(v.dataset, v.data_dir, v.seed)] = data

    def victim_path(self, v: VictimConfig) -> Path:
        return victim_checkpoint_path(v, out_dir=self.out_dir, key=point_key(v.identity()))

    def victim(self, v: VictimConfig) -> tuple[nn.Module, dict[str, Any], float, str]:
        """``(model, checkpoint meta, test accuracy, checkpoint SHA-256)`` of the victim ``v``."""
        key = point_key(v.identity())
        if key not in self._victims:
            model, _, acc, meta = load_or_train_victim(v, out_dir=self.out_dir, device=self.device,
                                                       progress=self.progress, data=self.data(v))
            self._victims[key] = (model, meta, acc, file_sha256(self.victim_path(v)))
        model, meta, acc, sha = self._victims[key]
        return model.to(self.device), meta, acc, sha

    def transfer(self, p: Point) -> tuple[tuple[Tensor, Tensor | None], Tensor]:
        """The transfer set and the seed set of ``p``'s attacker."""
        key = point_key(asdict(p.transfer), p.victim.dataset, p.victim.data_dir, p.victim.seed)
        if key not in self._transfer:
            data = self.data(p.victim)
            self._transfer[key] = (build_transfer_set(p.transfer, victim_data=data),
                                   seed_set(p.transfer, victim_data=data))
        return self._transfer[key]

    def detector(self, p: Point) -> Any:
        """``p``'s detector, fitted on the victim its API serves and calibrated (once per victim: later calls and
        other processes reuse the learned threshold), with no client state; ``None`` without one."""
        if p.detector is None:
            return None
        vcfg = point_victim_config(p)
        key = detector_key(p.detector, vcfg.identity())
        if key not in self._detectors:
            model = self.victim(vcfg)[0]
            det, learned = fit_point_detector(p.detector, model, self.data(p.victim),
                                              fitted=self.detector_fits.get(key))
            self._detectors[key] = det
            self.detector_fits[key] = learned
        det = self._detectors[key]
        det.reset_all()
        return det

    def utility(self, p: Point, victim: nn.Module) -> dict[str, float]:
        """The defender's accuracy and perturbation sizes at ``p``'s operating point (once per process)."""
        key = point_key(p.victim.identity(), asdict(p.defense), p.strength, p.output, p.eval_size)
        if key not in self._utility:
            self._utility[key] = evaluate_defense(victim, p.defense, p.strength, self.data(p.victim), output=p.output,
                                                  eval_size=p.eval_size, fits=self.fits)
        return self._utility[key]


def point_victim_config(p: Point) -> VictimConfig:
    """The victim the API of ``p`` serves: the sweep's, or a recipe defense's victim for its strength."""
    return defended_victim_config(p.victim, p.defense, p.strength) if is_recipe_defense(p.defense) else p.victim


def _point_start(p: Point, *, cache: PointCache) -> tuple[dict[str, Any], nn.Module, PredictionAPI, Attack | None]:
    """The labels, victim facts and utility of ``p``'s record, its defended (and watched) API and its attack
    (``None`` for a benign client's point)."""
    data = cache.data(p.victim)
    _, _, victim_acc, main_sha = cache.victim(p.victim)
    model, meta, _, sha = cache.victim(point_victim_config(p))
    facts: dict[str, Any] = {}
    if is_recipe_defense(p.defense) and "dp" in meta:
        facts = {"victim_dp_epsilon": meta["dp"]["epsilon"], "victim_dp_delta": meta["dp"]["delta"]}
    rec = {"dataset": data.name, **p.describe(), "victim_accuracy": victim_acc, **cache.utility(p, model), **facts,
           "victim_sha256": sha}
    api = point_api(model, p.defense, p.strength, data, output=p.output, fits=cache.fits, detector=cache.detector(p),
                    response="none" if p.detector is None else p.detector.response)
    if p.benign is not None:
        return rec, model, api, None
    transfer, seeds = cache.transfer(p)
    attack = build_attack(p.attack, victim_arch=p.victim.arch, transfer=transfer, seeds=seeds, device=cache.device,
                          natural=data.x_test)
    return rec, model, api, attack


def run_point(point: Point, *, cache: PointCache) -> dict[str, Any]:
    """The record of one sweep point, computed from its description alone (inputs from ``cache``, loaded or
    rebuilt by their keys): the same record in any process or on any machine with the same inputs."""
    t0 = time.perf_counter()
    rec, _, api, attack = _point_start(point, cache=cache)
    data = cache.data(point.victim)
    if attack is None:  # a benign client: its queries and whether the detector flagged it
        rec.update(run_benign_client(api, data, point.benign, seed=point.seed))
    else:
        t1 = time.perf_counter()
        result = attack(api, budget=point.budget, seed=point.seed)
        rec.update(measure_clone(result, api, data, attack=attack, seconds=time.perf_counter() - t1,
                                 device=cache.device))
        rec.update(detection_facts(api))
    rec["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return rec


def run_unit(unit: list[Point], *, cache: PointCache,
             advance: Callable[[float], None] | None = None) -> list[dict[str, Any]]:
    """The records of one work unit: a single point (:func:`run_point`), or points sharing their queries whose
    clones train in one stacked pass (:func:`~modelsteal.attacks.base.steal_together`; each record then says
    ``stacked_clones``: how many trained together, and the shared training time is split evenly). ``advance(f)``
    reports progress inside a stacked unit in points: half a point as each point's queries are answered, the
    other half spread over its clone's training epochs."""
    if len(unit) == 1:
        return [run_point(unit[0], cache=cache)]
    starts, jobs, collect_seconds = [], [], []
    for p in unit:
        t = time.perf_counter()
        rec, _, api, attack = _point_start(p, cache=cache)
        t1 = time.perf_counter()
        jobs.append(attack.begin(api, budget=p.budget, seed=p.seed))
        starts.append((rec, api, attack, detection_facts(api)))  # now: the next start resets the shared detector
        collect_seconds.append((t1 - t, time.perf_counter() - t1))
        if advance is not None:
            advance(0.5)
    t_train = time.perf_counter()
    epochs = max(1, jobs[0].attack.train_config.epochs)
    results, stacked = steal_together(jobs, on_epoch=None if advance is None else (lambda n: advance(0.5 * n / epochs)))
    shared = (time.perf_counter() - t_train) / len(unit)
    records = []
    for p, (rec, api, attack, facts), result, (setup, query) in zip(unit, starts, results, collect_seconds,
                                                                  strict=True):
        t = time.perf_counter()
        rec.update(measure_clone(result, api, cache.data(p.victim), attack=attack, seconds=query + shared,
                                 device=cache.device))
        rec.update(facts)
        if stacked:
            rec["stacked_clones"] = len(unit)
        rec["wall_seconds"] = round(setup + query + shared + time.perf_counter() - t, 3)
        records.append(rec)
    return records


def sweep_point_key(
    cfg: SweepConfig,
    dcfg: DefenseConfig,
    strength: float | None,
    acfg: AttackConfig,
    budget: int,
    seed: int,
    *,
    legacy: bool = False,
) -> str:
    """Cache key of one sweep point: everything that determines its record and nothing else.

    The defense's list of ``strengths`` is left out (only the point's own ``strength`` counts), so adding or
    dropping operating points, or restricting a config to some of them, keeps the finished points cached.
    ``legacy=True`` gives the earlier key, which included the list (still read, and renamed, when found).
    """
    p = Point(victim=cfg.victim, transfer=cfg.transfer, output=cfg.output, eval_size=cfg.eval_size, defense=dcfg,
              strength=strength, attack=acfg, budget=budget, seed=seed)
    return p.key_with(legacy=legacy)


def collect_sweep(cfg: SweepConfig, *, out_dir: str | Path, plots: bool = True) -> list[dict[str, Any]]:
    """Write ``results.csv`` (and plots) from the points of ``cfg`` already cached in ``out_dir``, in the
    config's order, computing nothing: the results of an interrupted or partly run sweep."""
    out = Path(out_dir)
    records: list[dict[str, Any]] = []
    for p in plan(cfg):
        for legacy in (False, True):
            path = out / "points" / f"{p.key_with(legacy=legacy)}.json"
            if path.exists():
                records.append(json.loads(path.read_text()))
                break
    if records:
        write_results(records, out)
        write_detection(records, out)
        if plots:
            from modelsteal.experiment.plots import plot_sweep

            plot_sweep(records, out)
    return records


class SweepInputs(NamedTuple):
    """What every point of a sweep shares: the victim, its data and test accuracy, the attacker's data."""

    victim: nn.Module
    data: DatasetSplits
    victim_accuracy: float
    transfer: tuple[Tensor, Tensor | None]
    seeds: Tensor


def prepare_sweep(cfg: SweepConfig, *, out_dir: Path, device: torch.device, progress: bool = True) -> SweepInputs:
    """Check the output format and every defense against the dataset's number of classes, build the transfer
    and seed sets of ``cfg`` and every attack once (so a bad option value is an error before any training), then
    load or train the victim (:func:`load_or_train_victim`)."""
    v = cfg.victim
    data = load_dataset(v.dataset, data_dir=v.data_dir, seed=v.seed)
    output = make_output(cfg.output)
    if output.kind == "top-k" and output.k > data.num_classes:
        raise ConfigError(f"output: top-{output.k} asks for more classes than {data.name} has ({data.num_classes})")
    _check_defense_classes(cfg, num_classes=data.num_classes)
    if cfg.benign is not None:
        check_benign_data(cfg.benign, data)
    transfer, seeds = build_transfer_set(cfg.transfer, victim_data=data), seed_set(cfg.transfer, victim_data=data)
    for i, acfg in enumerate(cfg.attacks):
        with _entry(f"attacks[{i}] ({acfg.name})"):
            build_attack(acfg, victim_arch=v.arch, transfer=transfer, seeds=seeds, device=device, natural=data.x_test)
    victim, _, acc, _ = load_or_train_victim(v, out_dir=out_dir, device=device, progress=progress, data=data)
    return SweepInputs(victim, data, acc, transfer, seeds)


def _check_defense_classes(cfg: SweepConfig, *, num_classes: int) -> None:
    """Every defense at every strength accepts a model with ``num_classes`` classes (top-k's ``k``), before any
    victim is trained; a ``ConfigError`` names the entry."""
    for i, d in enumerate(cfg.defenses):
        for strength in d.strengths:
            defense = point_defense(d, strength)
            with _entry(f"defenses[{i}] ({d.name}, strength {strength})"):
                if defense is not None:
                    defense.check_classes(num_classes)


def config_hash(cfg: SweepConfig) -> str:
    """The sweep's identity as :func:`point_key` hashes it: every field of the config as run (overrides of
    budgets, seeds, ``--only`` and the device included; an absent ``detector`` or ``benign`` section left out, so
    configs made before them keep their hash)."""
    d = asdict(cfg)
    for key in ("detector", "benign"):
        if d.get(key) is None:
            d.pop(key, None)
    return point_key(d)


def warn_victim_change(out: Path, path: Path, *, recorded: str | None, now: str) -> bool:
    """One line on stderr when ``out`` was recorded with victim SHA-256 ``recorded`` and ``path`` now has
    ``now`` (a warning: the sweep goes on, its new rows carry the new hash); whether it warned."""
    if recorded is None or recorded == now:
        return False
    print(f"warning: {out} was recorded with victim sha256 {recorded[:12]}, but {path} now has {now[:12]}; "
          "rows made with each are marked in results.csv column victim_sha256", file=sys.stderr)
    return True


def start_provenance(cfg: SweepConfig, *, out: Path, device: torch.device, victim_path: Path) -> dict[str, Any]:
    """``out``'s provenance updated for this run: the victim's SHA-256 (warning once when it differs from the
    recorded one; the old value kept in ``previous_victim_sha256``), the config hash and this environment;
    per-point entries of earlier runs are kept."""
    prov = read_provenance(out)
    sha = file_sha256(victim_path)
    previous = list(prov.get("previous_victim_sha256", []))
    if warn_victim_change(out, victim_path, recorded=prov.get("victim_sha256"), now=sha):
        previous.append(prov["victim_sha256"])
    env = environment(device=device)
    environments = dict(prov.get("environments", {}))
    environments[point_key(env)] = env
    prov.update({
        "config_name": cfg.name,
        "config_hash": config_hash(cfg),
        "config": asdict(cfg),  # what `modelsteal reproduce` re-runs points from
        "victim_path": str(victim_path),
        "out_dir": str(out),  # recorded paths are relative to the working directory; reproduce rebases them
        "victim_sha256": sha,
        "previous_victim_sha256": previous,
        "victims": {**prov.get("victims", {}), str(victim_path): sha},
        "environment": env,
        "environment_id": point_key(env),
        "environments": environments,
        "points": dict(prov.get("points", {})),
    })
    return prov


def _recipe_victim_sha(prov: dict[str, Any], path: Path, *, out: Path) -> str:
    """The SHA-256 of a recipe defense's victim at ``path``, checked against (and recorded in) ``prov``."""
    sha = file_sha256(path)
    warn_victim_change(out, path, recorded=prov["victims"].get(str(path)), now=sha)
    prov["victims"][str(path)] = sha
    return sha


def run_sweep(
    cfg: SweepConfig,
    *,
    out_dir: str | Path,
    progress: bool = True,
    device: str | None = None,
    plots: bool = True,
    executor: Executor | str = "serial",
    stack_clones: int = 8,
    shard_of: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Run every point of ``cfg`` (or of its shard ``shard_of=(i, n)``) not already cached in ``out_dir``;
    returns the records of its points in plan order (the trade-off curves).

    The plan (:func:`~modelsteal.experiment.plan.plan`) is packed into work units (up to ``stack_clones``
    points sharing their queries train their clones together; 1 trains each alone) and run by ``executor``
    (``serial``, ``pool``, ``ray`` or an :class:`~modelsteal.experiment.executors.Executor`); victims and fitted
    defenses are made here first, so workers only load them. Each finished point is cached as it arrives."""
    if device is not None:
        cfg = replace(cfg, device=str(device))
    validate_sweep(cfg)
    points = plan(cfg) if shard_of is None else shard(plan(cfg), *shard_of)
    if not points:  # a shard dealt no group of points: no victim to train, nothing to write
        return []
    if stack_clones < 1:
        raise ValueError(f"--stack-clones must be >= 1 (1 trains every clone alone), got {stack_clones}")
    deterministic = cfg.deterministic or torch.are_deterministic_algorithms_enabled()
    if isinstance(executor, str):
        executor = make_executor(executor, deterministic=deterministic)
    elif deterministic and hasattr(executor, "deterministic"):  # workers run as this process does
        executor.deterministic = True
    if cfg.deterministic:  # also for Python callers; keeps the thread count already set (idempotent)
        enable_determinism(threads=torch.get_num_threads())
    dev = resolve_device(cfg.device)
    out = Path(out_dir)
    inputs = prepare_sweep(cfg, out_dir=out, device=dev, progress=progress)
    (out / "points").mkdir(parents=True, exist_ok=True)  # only once the whole config has been accepted
    main_path = victim_checkpoint_path(cfg.victim, out_dir=out, key=point_key(cfg.victim.identity()))
    prov = start_provenance(cfg, out=out, device=dev, victim_path=main_path)
    write_provenance(prov, out)
    done: dict[str, dict[str, Any]] = {}
    for p in points:
        path, legacy = out / "points" / f"{p.key}.json", out / "points" / f"{p.key_with(legacy=True)}.json"
        if not path.exists() and legacy.exists():  # cached under the key that included the strength list
            legacy.replace(path)
        if path.exists():
            done[p.key] = json.loads(path.read_text())
    todo = [p for p in points if p.key not in done]
    cache = PointCache(out_dir=out, device=cfg.device, progress=progress)
    _fill_cache(cache, cfg, todo, inputs=inputs, prov=prov, out=out)
    work = units(todo, stack=stack_clones, stackable=[n for n in available_attacks() if attack_class(n).stackable])
    bar, fn, finished = None, run_unit, 0
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"sweep {cfg.name}", unit="point",
                   bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}]")
        if isinstance(executor, SerialExecutor):  # in this process: per clone inside a stacked unit
            fn = functools.partial(run_unit, advance=bar.update)
    try:
        for i, records in executor.run(fn, work, cache=cache):
            for p, rec in zip(work[i], records, strict=True):
                _store_point(p, rec, out=out, prov=prov)
                done[p.key] = rec
            write_results([done[p.key] for p in points if p.key in done], out)
            write_provenance(prov, out)
            if bar is not None:
                finished += len(work[i])
                bar.n = finished  # exact once a unit is done, whatever its fractions added up to
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    records = [done[p.key] for p in points]
    write_results(records, out)
    write_detection(records, out)
    if plots:
        from modelsteal.experiment.plots import plot_sweep

        plot_sweep(records, out)
    return records


def _fill_cache(cache: PointCache, cfg: SweepConfig, todo: list[Point], *, inputs: SweepInputs,
                prov: dict[str, Any], out: Path) -> None:
    """Put in ``cache`` what the points ``todo`` need, made here once: the data, the transfer set, every victim
    (recipe defenses' victims trained now, their SHA-256 checked against the provenance) and every fitted
    defense (AM's misinformation model), so workers only load them."""
    cache.put_data(cfg.victim, inputs.data)
    cache.victim(cfg.victim)
    for p in todo:
        if is_recipe_defense(p.defense):
            vcfg = point_victim_config(p)
            cache.victim(vcfg)
            _recipe_victim_sha(prov, cache.victim_path(vcfg), out=out)
        cache.transfer(p)
        point_defense(p.defense, p.strength, victim=inputs.victim, data=inputs.data, fits=cache.fits)
        cache.detector(p)  # calibrated here once per victim; workers reuse the threshold


def _store_point(p: Point, rec: dict[str, Any], *, out: Path, prov: dict[str, Any]) -> None:
    """Cache one finished point's record (atomically) and note it in the provenance."""
    path = out / "points" / f"{p.key}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(path)
    prov["points"][p.key] = {"wall_seconds": rec["wall_seconds"], "victim_sha256": rec["victim_sha256"],
                             "environment_id": prov["environment_id"], **p.describe()}
