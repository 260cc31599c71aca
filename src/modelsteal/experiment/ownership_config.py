"""Ownership experiment configuration: one frozen dataclass read from a YAML mapping, per-dataset presets.

An ownership experiment (:func:`~modelsteal.experiment.ownership.run_ownership`) trains a victim on a private
part of a dataset, serves it behind DAWN, steals clones through that API, trains independent models, and verifies
every model with DAWN and dataset inference. A config names the ``dataset``; every other key defaults to that
dataset's preset (:data:`PRESETS`), and a key given as ``null`` keeps the preset too. Example
(``configs/ownership/digits.yaml``)::

    name: ownership-digits
    dataset: digits
    out: results/ownership/digits.json

Values are checked by :func:`~modelsteal.experiment.validate.validate_ownership`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from modelsteal.experiment.config import ConfigError, read_config_file

#: the attacks an ownership experiment steals clones with (each its own client of the DAWN-defended API)
OWNERSHIP_ATTACKS = ("knockoff-soft", "knockoff-argmax", "knockoff-mad", "jbda", "jb-top3")

#: per-dataset defaults; digits' are the setting of docs/ownership.md's "Results on digits"
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "arch": "mlp", "private": 500, "victim_epochs": 100, "clone_epochs": 60, "indep_epochs": 100,
        "budget": 700, "jb_budget": 700, "seed_images": 100, "indep_size": None, "shuffle": False,
        "attacks": "knockoff-soft,knockoff-argmax", "samples": 50, "fit_samples": 150,
        "mingd_samples": 50, "mingd_fit_samples": 150, "mingd_steps": 60, "mingd_seeds": None,
        "independent": "mlp:11,mlp:12,lenet:13,lenet:14,cnn:15",
    },
    "mnist": {
        "arch": "lenet", "private": 3000, "victim_epochs": 30, "clone_epochs": 30, "indep_epochs": 30,
        "budget": 3000, "jb_budget": 2400, "seed_images": 150, "indep_size": None, "shuffle": True,
        "attacks": ",".join(OWNERSHIP_ATTACKS), "samples": 50, "fit_samples": 150,
        "mingd_samples": 30, "mingd_fit_samples": 150, "mingd_steps": 30, "mingd_seeds": 3,
        "independent": "mlp:11,mlp:12,lenet:13,lenet:14,cnn:15",
    },
    "fashion-mnist": {
        "arch": "lenet", "private": 10000, "victim_epochs": 20, "clone_epochs": 30, "indep_epochs": 20,
        "budget": 3000, "jb_budget": 2400, "seed_images": 150, "indep_size": 5000, "shuffle": True,
        "attacks": ",".join(OWNERSHIP_ATTACKS), "samples": 50, "fit_samples": 150,
        "mingd_samples": 30, "mingd_fit_samples": 150, "mingd_steps": 30, "mingd_seeds": 3,
        "independent": "mlp:11,mlp:12,lenet:13,lenet:14,cnn:15",
    },
}

#: defaults of the keys no preset sets
COMMON = {"rate": 0.1, "seeds": 5, "mad_epsilon": 0.5, "dawn_budget": 100}


@dataclass(frozen=True)
class OwnershipConfig:
    """One ownership experiment, every value resolved (preset or given).

    The victim (``arch``) trains for ``victim_epochs`` on the first ``private`` training samples (the training
    and validation splits shuffled first when ``shuffle``: class-ordered splits would give a private part of a
    few classes) and answers through DAWN at rate ``rate``. Each of ``attacks`` steals a clone as its own client
    (Knockoff with ``budget`` queries from the rest of the training split, ``knockoff-mad`` through MAD at
    ``mad_epsilon`` then DAWN; JBDA and JB-top3 with ``jb_budget`` queries from ``seed_images`` validation
    images); ``independent`` models (``arch:seed``) train on ``indep_size`` samples of the non-private pool
    (default half of it) with true labels. Verifiers: DAWN (``dawn_budget`` queries), dataset inference with
    Blind Walk (``samples``, ``fit_samples``) and MinGD (``mingd_*``), each over ``seeds`` verification seeds
    (``mingd_seeds`` for MinGD, default ``seeds``)."""

    dataset: str
    arch: str
    private: int
    rate: float
    budget: int
    jb_budget: int
    seed_images: int
    mad_epsilon: float
    attacks: tuple[str, ...]
    independent: tuple[str, ...]
    indep_size: int | None
    victim_epochs: int
    clone_epochs: int
    indep_epochs: int
    seeds: int
    samples: int
    fit_samples: int
    mingd_samples: int
    mingd_fit_samples: int
    mingd_steps: int
    mingd_seeds: int | None
    dawn_budget: int
    shuffle: bool
    name: str = "ownership"
    out: str | None = None

    @property
    def verification_seeds_mingd(self) -> int:
        return self.mingd_seeds or self.seeds

    @property
    def output_path(self) -> Path:
        return Path(self.out or f"results/ownership/{self.dataset}.json")

    def independents(self) -> list[tuple[str, int]]:
        """``(arch, seed)`` of each independent model."""
        return [(spec.split(":")[0], int(spec.split(":")[1])) for spec in self.independent]


def _names(value: Any, key: str) -> tuple[str, ...]:
    """A comma-separated string or a list of strings as a tuple of non-empty names."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise ConfigError(f"{key} must be a comma-separated string or a list of strings, got {value!r}")


def parse_ownership_config(raw: Any) -> OwnershipConfig:
    """An :class:`OwnershipConfig` from a parsed YAML mapping: unknown keys refused, the dataset's preset filling
    every key not given (or given as ``null``). Values are checked by
    :func:`~modelsteal.experiment.validate.validate_ownership`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"an ownership config must be a YAML mapping, got {type(raw).__name__}")
    raw = {str(k).replace("-", "_"): v for k, v in raw.items()}
    allowed = {f.name for f in fields(OwnershipConfig)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    dataset = raw.get("dataset", "digits")
    if dataset not in PRESETS:
        raise ConfigError(f"dataset must be one of {', '.join(sorted(PRESETS))}, got {dataset!r}")
    values = {**COMMON, **PRESETS[dataset]}
    values.update({k: v for k, v in raw.items() if v is not None})
    values["dataset"] = dataset
    values["attacks"] = _names(values["attacks"], "attacks")
    values["independent"] = _names(values["independent"], "independent")
    return OwnershipConfig(**values)


def load_ownership_config(path: str | Path) -> OwnershipConfig:
    """Read and parse an ownership config file (a ``ConfigError`` naming the file and the key otherwise)."""
    return read_config_file(path, parse_ownership_config)
