"""One place where every config is checked before any data is loaded or model trained: a sweep's names,
options and strengths (:func:`validate_sweep`), its detector and benign clients, what only the loaded dataset
can tell (:func:`validate_data`: top-k against the number of classes, the benign split's size), and an ownership
experiment's values (:func:`validate_ownership`, :func:`validate_ownership_data`). A wrong entry is a
:class:`~modelsteal.experiment.config.ConfigError` whose message names the key.
"""

from __future__ import annotations

from typing import Any

from modelsteal._registry import check_options
from modelsteal.attacks import attack_class
from modelsteal.data import DatasetSplits, available_datasets
from modelsteal.defenses import make_defense
from modelsteal.defenses.base import defense_options
from modelsteal.detectors import available_responses, detector_class, make_detector
from modelsteal.devices import resolve_device
from modelsteal.experiment.config import (
    BenignConfig,
    ConfigError,
    DefenseConfig,
    DetectorConfig,
    SweepConfig,
    config_entry,
)
from modelsteal.experiment.detection import split_inputs
from modelsteal.experiment.ownership_config import OWNERSHIP_ATTACKS, OwnershipConfig
from modelsteal.experiment.victims import (
    defended_victim_config,
    is_recipe_defense,
    victim_recipe,
    victim_train_config,
)
from modelsteal.models import architecture_key
from modelsteal.outputs import make_output
from modelsteal.training import TrainConfig

#: what :func:`build_attack` hands an attack itself: a config's ``options`` may not set these
ATTACK_PROVIDED = ("transfer_set", "transfer_labels", "seed_set", "natural", "clone", "train", "device")

def check_train(train: dict[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from a mapping of training options, keys and value types checked first."""
    check_options(TrainConfig, train, kind="training", label="the training settings")
    return TrainConfig(**train)


def validate_sweep(cfg: SweepConfig) -> None:
    """Check everything a sweep will build before any data is loaded or model trained: the device, the
    datasets' names, the output format, the victim's recipe, every defense (or recipe defense) at every
    strength with its options, every attack's options and training options; a ``ConfigError`` names the entry."""
    with config_entry("device"):
        resolve_device(cfg.device)
    _check_datasets(cfg)
    with config_entry("victim.arch"):
        check_architecture(cfg.victim.arch)
    with config_entry("output"):
        make_output(cfg.output)
    victim_recipe(cfg.victim)
    victim_train_config(cfg.victim)
    if cfg.victim.path and not cfg.victim.is_plain:
        raise ConfigError(f"victim.path loads a trained model ({cfg.victim.path}); victim.recipe "
                          f"{cfg.victim.recipe_name!r} would need to train it")
    for i, d in enumerate(cfg.defenses):
        for strength in d.strengths:
            with config_entry(f"defenses[{i}] ({d.name}, strength {strength})"):
                if is_recipe_defense(d) and cfg.victim.path:
                    raise ConfigError(f"recipe {d.name!r} trains the victim, but victim.path loads a trained model")
                if is_recipe_defense(d):
                    victim_recipe(defended_victim_config(cfg.victim, d, strength))
                elif d.name.strip().lower() in ("none", "undefended"):
                    make_defense(d.name, strength=strength, **d.options)  # refuses a strength or options
                else:
                    check_defense(d, strength, hint=_SWEEP_STRENGTH_HINT)
    if cfg.detector is not None:
        check_detector_config(cfg.detector)
    for i, a in enumerate(cfg.attacks):
        with config_entry(f"attacks[{i}] ({a.name})"):
            cls = attack_class(a.name)
            if cls.modality != "images":
                raise ValueError(f"attack {a.name!r} extracts tabular models; run it with `modelsteal tramer`")
            check_options(cls, a.options, kind="attack", provided=ATTACK_PROVIDED)
            if a.clone is not None:
                check_architecture(a.clone)
        with config_entry(f"attacks[{i}].train"):
            check_train(a.train)

_SWEEP_STRENGTH_HINT = "give it as the defense's strengths: [...]"


def check_defense(d: DefenseConfig, strength: float | None, *, hint: str | None = None) -> None:
    """The defense entry ``d`` at ``strength``: its name, options and strength checked against its constructor by
    building it (cheap: defenses train in ``bind()`` or ``fit()``, never in the constructor); a ``ValueError`` names
    what is wrong (``hint``: how to give a missing strength). Sweeps and audits check their defenses here."""
    cls, kwargs = defense_options(d.name, strength=strength, options=d.options, hint=hint)
    cls(**kwargs)


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

#: responses a sweep can build from its config (``misinform`` needs a model object)
SWEEP_RESPONSES = ("none", "shuffle", "refuse")


def check_detector_config(d: DetectorConfig) -> None:
    """The detector's name, options, response, outlier set and calibration, checked before any work; a
    ``ConfigError`` naming the key otherwise."""
    try:
        cls = detector_class(d.name)
        check_options(cls, d.options, kind="detector")
        make_detector(d.name, **d.options)
    except ValueError as e:
        raise ConfigError(f"detector: {e}") from None
    for response in d.responses:
        if response not in SWEEP_RESPONSES:
            extra = (" (misinform needs a model object: use PredictionAPI from Python)" if response == "misinform"
                     else "")
            known = ", ".join(r for r in available_responses() if r in SWEEP_RESPONSES)
            raise ConfigError(f"detector.response: {response!r} is not a sweep response; use one of {known}{extra}")
    if cls.needs_outliers and d.outliers is None:
        raise ConfigError(f"detector {d.name!r} is trained against an outlier set: give detector.outliers: DATASET")
    if d.outliers is not None and d.outliers.strip().lower().replace("_", "-") not in available_datasets():
        known = ", ".join(available_datasets())
        raise ConfigError(f"detector.outliers: unknown dataset {d.outliers!r}; known: {known}")
    if d.tnr is None and not cls.stateful:
        raise ConfigError(f"detector {d.name!r} has no threshold of its own: give detector.tnr (e.g. 0.95), the "
                          "true-negative rate it is calibrated for on the victim's validation split")


def check_benign_data(b: BenignConfig, data: DatasetSplits) -> None:
    """The benign clients' split holds at least ``queries`` inputs."""
    x = split_inputs(data, b.split)
    if b.queries is not None and b.queries > len(x):
        raise ConfigError(f"benign.queries {b.queries} is more than the {b.split} split of {data.name} holds "
                          f"({len(x)}); use at most {len(x)} or null for all of it")


def validate_data(cfg: SweepConfig, data: DatasetSplits) -> None:
    """The checks that need the victim's loaded dataset: the output format and every defense at every strength
    against its number of classes (top-k's ``k``), and the benign clients' split against their queries."""
    output = make_output(cfg.output)
    if output.kind == "top-k" and output.k > data.num_classes:
        raise ConfigError(f"output: top-{output.k} asks for more classes than {data.name} has ({data.num_classes})")
    _check_defense_classes(cfg, num_classes=data.num_classes)
    if cfg.benign is not None:
        check_benign_data(cfg.benign, data)


def _check_defense_classes(cfg: SweepConfig, *, num_classes: int) -> None:
    """Every defense at every strength accepts a model with ``num_classes`` classes (top-k's ``k``), before any
    victim is trained; a ``ConfigError`` names the entry."""
    for i, d in enumerate(cfg.defenses):
        for strength in d.strengths:
            defense = None if is_recipe_defense(d) else make_defense(d.name, strength=strength, **d.options)
            with config_entry(f"defenses[{i}] ({d.name}, strength {strength})"):
                if defense is not None:
                    defense.check_classes(num_classes)


#: the ownership config's keys that must be integers >= 1 (and those that may also be null)
_OWNERSHIP_COUNTS = ("private", "budget", "jb_budget", "seed_images", "victim_epochs", "clone_epochs",
                     "indep_epochs", "seeds", "samples", "fit_samples", "mingd_samples", "mingd_fit_samples",
                     "mingd_steps", "dawn_budget")
_OWNERSHIP_OPTIONAL_COUNTS = ("indep_size", "mingd_seeds")


def validate_ownership(cfg: OwnershipConfig) -> None:
    """Every value of an ownership experiment, before any data is loaded or model trained: the counts, DAWN's
    rate, MAD's epsilon, the attacks and the architectures (the victim's and each ``arch:seed`` independent)."""
    for key in _OWNERSHIP_COUNTS + _OWNERSHIP_OPTIONAL_COUNTS:
        value = getattr(cfg, key)
        if value is None and key in _OWNERSHIP_OPTIONAL_COUNTS:
            continue
        if not _is_count(value):
            raise ConfigError(f"{key} must be an integer >= 1{' or null' if key in _OWNERSHIP_OPTIONAL_COUNTS else ''}"
                              f", got {value!r}")
    if not _is_number(cfg.rate) or not 0 < cfg.rate <= 1:
        raise ConfigError(f"rate (DAWN's fraction of watermarked answers) must be in (0, 1], got {cfg.rate!r}")
    if not _is_number(cfg.mad_epsilon) or cfg.mad_epsilon <= 0:
        raise ConfigError(f"mad_epsilon must be a number > 0, got {cfg.mad_epsilon!r}")
    if not isinstance(cfg.shuffle, bool):
        raise ConfigError(f"shuffle must be true or false, got {cfg.shuffle!r}")
    for key in ("name", "out"):
        if getattr(cfg, key) is not None and not isinstance(getattr(cfg, key), str):
            raise ConfigError(f"{key} must be a string, got {getattr(cfg, key)!r}")
    if not cfg.attacks:
        raise ConfigError(f"attacks must name at least one of {', '.join(OWNERSHIP_ATTACKS)}")
    unknown = [a for a in cfg.attacks if a not in OWNERSHIP_ATTACKS]
    if unknown:
        raise ConfigError(f"attacks: unknown {', '.join(unknown)}; known: {', '.join(OWNERSHIP_ATTACKS)}")
    with config_entry("arch"):
        check_architecture(cfg.arch)
    if not cfg.independent:
        raise ConfigError("independent must list at least one arch:seed model (the verdicts' false positives)")
    for spec in cfg.independent:
        arch, sep, seed = spec.partition(":")
        if not sep or not seed.strip().lstrip("-").isdigit():
            raise ConfigError(f"independent: {spec!r} is not arch:seed (e.g. lenet:13)")
        with config_entry(f"independent ({spec})"):
            check_architecture(arch)


def validate_ownership_data(cfg: OwnershipConfig, data: DatasetSplits) -> None:
    """What only the loaded dataset tells: the private part leaves a pool to steal and train independents from,
    the seed images fit in the validation split, the independents' size fits in the pool."""
    n_train, n_val = len(data.x_train), len(data.x_val)
    if cfg.private >= n_train:
        raise ConfigError(f"private {cfg.private} leaves no pool: {data.name}'s training split has {n_train} samples")
    if cfg.seed_images > n_val:
        raise ConfigError(f"seed_images {cfg.seed_images} is more than {data.name}'s validation split ({n_val})")
    if cfg.indep_size is not None and cfg.indep_size > n_train - cfg.private:
        raise ConfigError(f"indep_size {cfg.indep_size} is more than the non-private pool ({n_train - cfg.private})")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
