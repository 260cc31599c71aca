"""Sweep configuration: frozen dataclasses read from YAML, validated with messages that name the key.

Example (``configs/demo-digits.yaml``)::

    name: demo
    victim: {dataset: digits, arch: cnn, epochs: 30, lr: 0.05, momentum: 0.9}
    transfer: {source: sample-patches}
    defenses:
      - {name: none}
      - {name: mad, strengths: [0.1, 0.5, 1.0], options: {norm: l1}}
    attacks:
      - {name: knockoff, clone: cnn, train: {epochs: 30, lr: 0.05, momentum: 0.9}}
    budgets: [5000]
    seeds: [0]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from modelsteal._registry import check_options


class ConfigError(ValueError):
    """A sweep configuration is invalid; the message names the key."""


@contextmanager
def config_entry(label: str) -> Iterator[None]:
    """A ``ValueError`` (or an inner ``ConfigError``) raised inside becomes a ``ConfigError`` led by ``label``,
    the config entry it is about."""
    try:
        yield
    except ValueError as e:  # ConfigError is a ValueError
        raise ConfigError(f"{label}: {e}") from None


def _take(d: dict[str, Any], cls: type, where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(sorted(unknown))} in {where}; allowed: {', '.join(sorted(names))}"
        )
    try:
        check_options(cls, d, kind="config", label=where, noun="key")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cls(**d)


@dataclass(frozen=True)
class VictimConfig:
    """How to obtain the victim: train ``arch`` on ``dataset`` (or load ``checkpoint`` when it exists), or load the
    model file ``path`` (ONNX, TorchScript, .pt2, scikit-learn, python:module:factory or a checkpoint; ``spec``: its
    model spec keys, see :mod:`modelsteal.models.formats.spec`; never trained)."""

    dataset: str = "digits"
    arch: str = "lenet"
    epochs: int = 30
    lr: float = 0.1
    momentum: float = 0.5
    batch_size: int = 64
    weight_decay: float = 0.0
    lr_step: int | None = None
    seed: int = 0
    data_dir: str | None = None
    checkpoint: str | None = None
    path: str | None = None
    spec: dict[str, Any] | None = None
    #: the training recipe: a name (``plain``, ``outlier-exposure``, ``dp-sgd``) or a mapping ``{name: …,
    #: option: value, …}`` (see :mod:`modelsteal.training.recipes`); stored as the mapping
    recipe: str | dict[str, Any] = "plain"

    def __post_init__(self) -> None:
        spec = self.recipe
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ConfigError(f"victim.recipe must be a recipe name or a mapping with a 'name', got {self.recipe!r}")
        object.__setattr__(self, "recipe", dict(spec))

    @property
    def recipe_name(self) -> str:
        return self.recipe["name"]

    @property
    def recipe_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.recipe.items() if k != "name"}

    @property
    def is_plain(self) -> bool:
        return self.recipe_name == "plain" and not self.recipe_options

    def identity(self) -> dict[str, Any]:
        """What determines the trained victim (cache keys): every field, the recipe only when not plain and the
        model file's ``path``/``spec`` only when given, so keys made before recipes and model files existed stay
        valid."""
        d = asdict(self)
        if self.is_plain:
            d.pop("recipe")
        for key in ("path", "spec"):
            if d.get(key) is None:
                d.pop(key)
        return d


@dataclass(frozen=True)
class TransferConfig:
    """The attacker's data: ``source`` is ``sample-patches`` (natural 8×8 … patches cut from the photos
    bundled with scikit-learn), or ``dataset`` (images of ``dataset``'s ``split`` — or of several datasets
    joined, ``dataset: [letters, mnist]``, their classes numbered one after another — optionally only
    ``classes``, optionally noise/shift-augmented into ``copies`` variants, capped at ``size``).
    ``seed_size`` images of the victim's validation split form the seed set of synthetic-query attacks."""

    source: str = "dataset"
    dataset: str | list[str] | None = None
    split: str = "train"
    classes: list[int] | None = None
    size: int | None = None
    copies: int = 1
    noise: float = 0.0
    shift: int = 0
    data_dir: str | None = None
    seed_size: int = 100


@dataclass(frozen=True)
class DefenseConfig:
    name: str
    strengths: list[float | None] = field(default_factory=lambda: [None])
    options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class AttackConfig:
    name: str = "knockoff"
    clone: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class DetectorConfig:
    """A detector watching every point's API (:mod:`modelsteal.detectors`): a fresh one per point, fitted on the
    victim and its data, answering flagged queries with ``response`` (``none``, ``shuffle``, ``refuse``; a list
    runs every point once per response, e.g. ``[none, shuffle]`` for Atli et al.'s Table 5). ``tnr`` calibrates
    it on the victim's validation split before any point runs: a stateless detector's threshold lets that
    fraction of the validation queries pass; a stateful one (PRADA) gets δ so that that fraction of
    ``calibration_clients`` benign clients, each the validation split in its own random order, is never flagged
    (a per-client false-positive rate of ``1 − tnr``; ``calibration_queries`` caps each such client's stream,
    default the whole split). ``tnr: null`` keeps the detector's own setting (PRADA's ``delta`` option; stateless
    detectors need a ``tnr``). ``outliers`` names the dataset whose training split trains detectors that need an
    outlier set (Atli et al.'s ``binary``)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    response: str | list[str] = "none"
    tnr: float | None = None
    calibration_clients: int = 20
    calibration_queries: int | None = None
    outliers: str | None = None

    @property
    def responses(self) -> list[str]:
        return [self.response] if isinstance(self.response, str) else list(self.response)


@dataclass(frozen=True)
class BenignConfig:
    """Benign clients, a sweep input beside the attacks: client ``i`` (``i < clients``) sends ``queries`` inputs
    of the victim's ``split`` (default: all of it) in its own random order (seed ``i``), ``batch_size`` per
    request. Their rows (attack ``benign``) report whether the detector flagged them: the false-positive rate."""

    clients: int = 10
    queries: int | None = None
    split: str = "test"
    batch_size: int = 1


@dataclass(frozen=True)
class SweepConfig:
    victim: VictimConfig
    transfer: TransferConfig
    defenses: list[DefenseConfig]
    attacks: list[AttackConfig]
    budgets: list[int]
    seeds: list[int] = field(default_factory=lambda: [0])
    name: str = "sweep"
    output: str = "probs"
    device: str = "auto"
    eval_size: int | None = None
    #: run with :func:`modelsteal.determinism.enable_determinism` (deterministic kernels, fixed threads);
    #: not part of any cache key, so switching it keeps the finished points
    deterministic: bool = False
    #: a detector on every point's API (detection rates beside clone accuracy); ``None``: no detector
    detector: DetectorConfig | None = None
    #: benign clients per defense operating point (their false-positive rate); needs ``detector``
    benign: BenignConfig | None = None

    def with_budgets(self, budgets: list[int]) -> SweepConfig:
        return replace(self, budgets=list(budgets))


def point_key(*parts: Any) -> str:
    """A stable short hash of JSON-serialisable parts (the cache key of one sweep point)."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def victim_key(cfg: SweepConfig) -> str:
    return point_key(cfg.victim.identity())


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_config(raw: dict[str, Any]) -> SweepConfig:
    """Build a :class:`SweepConfig` from a parsed YAML mapping."""
    if not isinstance(raw, dict):
        raise ConfigError("a sweep config must be a YAML mapping")
    allowed = {f.name for f in fields(SweepConfig)}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(
            f"unknown top-level key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    for key in ("defenses", "attacks", "budgets"):
        if not raw.get(key) or not isinstance(raw[key], list):
            raise ConfigError(f"the config needs a non-empty '{key}' list")
    defenses = [_take(d, DefenseConfig, f"defenses[{i}]") for i, d in enumerate(raw["defenses"])]
    attacks = [_take(a, AttackConfig, f"attacks[{i}]") for i, a in enumerate(raw["attacks"])]
    for i, d in enumerate(defenses):
        if not isinstance(d.strengths, list) or not d.strengths:
            raise ConfigError(f"defenses[{i}].strengths must be a non-empty list")
    budgets = raw["budgets"]
    if not isinstance(budgets, list) or not all(_is_int(b) and b > 0 for b in budgets):
        raise ConfigError(f"budgets must be a list of positive integers, got {budgets!r}")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    rest = {k: raw[k] for k in ("name", "output", "device", "eval_size", "deterministic") if k in raw}
    for key in ("name", "output", "device"):
        if key in rest and not isinstance(rest[key], str):
            raise ConfigError(f"{key} must be a string, got {rest[key]!r}")
    if rest.get("eval_size") is not None and not (_is_int(rest["eval_size"]) and rest["eval_size"] > 0):
        raise ConfigError(f"eval_size must be a positive integer or null, got {rest['eval_size']!r}")
    if not isinstance(rest.get("deterministic", False), bool):
        raise ConfigError(f"deterministic must be true or false, got {rest['deterministic']!r}")
    detector, benign = _detection(raw)
    return SweepConfig(
        victim=_take(raw.get("victim", {}), VictimConfig, "victim"),
        transfer=_take(raw.get("transfer", {}), TransferConfig, "transfer"),
        defenses=defenses,
        attacks=attacks,
        budgets=list(budgets),
        seeds=list(seeds),
        detector=detector,
        benign=benign,
        **rest,
    )


SPLITS = ("train", "val", "test")


def _detection(raw: dict[str, Any]) -> tuple[DetectorConfig | None, BenignConfig | None]:
    """The ``detector`` and ``benign`` sections, their values checked (names are checked by the sweep)."""
    detector = None if raw.get("detector") is None else _take(raw["detector"], DetectorConfig, "detector")
    benign = None if raw.get("benign") is None else _take(raw["benign"], BenignConfig, "benign")
    if detector is not None:
        r = detector.response
        if not isinstance(detector.name, str) or not (
                isinstance(r, str) or (isinstance(r, list) and r and all(isinstance(x, str) for x in r))):
            raise ConfigError("detector.name must be a string and detector.response a response name or a "
                              "non-empty list of them")
        if not isinstance(detector.options, dict):
            raise ConfigError(f"detector.options must be a mapping, got {detector.options!r}")
        t = detector.tnr
        if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < 1):
            raise ConfigError(f"detector.tnr must be in (0, 1) or null, got {t!r}")
        q = detector.calibration_queries
        if q is not None and not (_is_int(q) and q >= 1):
            raise ConfigError(f"detector.calibration_queries must be an integer >= 1 or null, got {q!r}")
        if not _is_int(detector.calibration_clients) or detector.calibration_clients < 1:
            raise ConfigError(f"detector.calibration_clients must be an integer >= 1, got "
                              f"{detector.calibration_clients!r}")
    if benign is not None:
        if detector is None:
            raise ConfigError("benign clients measure a detector's false positives: add a 'detector' section")
        for key in ("clients", "batch_size"):
            value = getattr(benign, key)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"benign.{key} must be an integer >= 1, got {value!r}")
        if benign.queries is not None and not (_is_int(benign.queries) and benign.queries >= 1):
            raise ConfigError(f"benign.queries must be an integer >= 1 or null (the whole split), got "
                              f"{benign.queries!r}")
        if benign.split not in SPLITS:
            raise ConfigError(f"benign.split must be one of {', '.join(SPLITS)}, got {benign.split!r}")
    return detector, benign


def yaml_error_line(path: Path, error: yaml.YAMLError) -> str:
    """One line for a YAML parse error: ``FILE:LINE:COLUMN: invalid YAML: what is wrong``."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or type(error).__name__
    context = getattr(error, "context", None)
    detail = f"{problem} ({context})" if context and context != problem else problem
    return f"{where}: invalid YAML: {' '.join(str(detail).split())}"


#: the scale a config runs at when none is asked for: the file's own settings (the paper's full scale)
DEFAULT_SCALE = "full"


def _merge(base: Any, override: Any) -> Any:
    """``override`` laid over ``base``: mappings merged key by key (recursively), anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in override.items()}}
    return override


def config_scales(raw: Any) -> list[str]:
    """The scales a parsed config offers: ``full`` (its own settings) and the names of its ``scales`` section."""
    scales = raw.get("scales") if isinstance(raw, dict) else None
    return [DEFAULT_SCALE, *(scales or {})]


def select_scale(raw: Any, scale: str | None = None) -> Any:
    """The config mapping at ``scale``: its own settings for ``full`` (or ``None``), else those with the
    overrides of its ``scales: {NAME: {...}}`` section laid over them (mappings such as ``victim`` merged key by
    key, lists and values replaced); the ``scales`` section itself is dropped. A ``ConfigError`` names the scales
    there are when ``scale`` is not one of them."""
    if not isinstance(raw, dict) or "scales" not in raw:
        if scale not in (None, DEFAULT_SCALE):
            raise ConfigError(f"the config has no scale {scale!r}; it runs at {DEFAULT_SCALE} only (no 'scales' "
                              "section)")
        return raw
    scales = raw["scales"]
    base = {k: v for k, v in raw.items() if k != "scales"}
    if not isinstance(scales, dict) or not all(isinstance(v, dict) for v in scales.values()):
        raise ConfigError("scales must map each scale's name to a mapping of the keys it overrides")
    if DEFAULT_SCALE in scales:
        raise ConfigError(f"scales: {DEFAULT_SCALE!r} is the config's own settings; name the other scales only")
    if scale in (None, DEFAULT_SCALE):
        return base
    if scale not in scales:
        raise ConfigError(f"the config has no scale {scale!r}; it has {', '.join(config_scales(raw))}")
    return _merge(base, scales[scale])


def read_config_file(path: str | Path, parse: Callable[[Any], Any]) -> Any:
    """``parse`` of the YAML in ``path``: a missing file is a ``FileNotFoundError``, invalid YAML and every
    ``ConfigError`` of ``parse`` one line led by the file's name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_line(path, e)) from None
    try:
        return parse(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_config(path: str | Path, *, scale: str | None = None) -> SweepConfig:
    """Read and validate a YAML sweep config, at ``scale`` (:func:`select_scale`; default its own settings)."""
    return read_config_file(path, lambda raw: parse_config(select_scale(raw, scale)))
