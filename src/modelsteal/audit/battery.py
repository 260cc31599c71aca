"""The attack battery: which registered attacks an audit runs, by name, with the options that make each variant.

A battery entry is a registered attack (:func:`~modelsteal.attacks.base.attack_class`) with a label and options;
adding an attacker to every audit is one line in :data:`BATTERY`. Attacks that exist only in some versions of the
toolkit (the adaptive attackers that know the defense) are listed in :data:`OPTIONAL` and join the battery when
the registry has them at run time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from modelsteal.attacks.base import attack_class, available_attacks
from modelsteal.experiment.config import AttackConfig


@dataclass(frozen=True)
class BatteryEntry:
    """One attacker of the battery: ``label`` (its row in the report), the registered attack ``name`` and the
    ``options`` that make this variant (``labels: argmax``: the attacker trains on the top-1 label of each
    answer); ``images``: it needs image inputs (the JB family differentiates the clone w.r.t. its input)."""

    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    images: bool = False
    summary: str = ""


#: the default battery, in report order
BATTERY: tuple[BatteryEntry, ...] = (
    BatteryEntry("knockoff-random", "knockoff", summary="Knockoff Nets, random strategy, soft answers"),
    BatteryEntry("knockoff-adaptive", "knockoff-adaptive",
                 summary="Knockoff Nets, adaptive (bandit) strategy over the pool's classes or clusters"),
    BatteryEntry("knockoff-argmax", "knockoff", {"labels": "argmax"},
                 summary="Knockoff Nets training on the top-1 label of each answer (argmax-label)"),
    BatteryEntry("jbda", "jbda", images=True, summary="Jacobian-based augmentation (Papernot et al.), soft answers"),
    BatteryEntry("jb-top-k", "jb-top-k", images=True, summary="JB-top-k (Juuti et al., PRADA), soft answers"),
    BatteryEntry("jbda-label-only", "jbda", {"labels": "argmax"}, images=True,
                 summary="JBDA on labels only, Papernot et al.'s label-only attacker"),
)

#: the attackers that know the defense or need no transfer set (:mod:`modelsteal.attacks.adaptive`, ActiveThief,
#: DFME, MAZE): run when named in ``--attackers`` (or ``all``), not by default. They cost 1.9x (ActiveThief),
#: 2.2x (semi-supervised) and 9.7x (D-DAE) Knockoff's time per query, D-DAE needs the suspected defense named in
#: its options, and DFME/MAZE need budgets far above the ladder's first rungs (``bench/adaptive_cost.py``).
OPTIONAL: tuple[BatteryEntry, ...] = (
    BatteryEntry("smoothing", "smoothing", summary="query smoothing: augmented copies per input, answers averaged"),
    BatteryEntry("active-thief", "active-thief", summary="ActiveThief (Pal et al.), active selection from the pool"),
    BatteryEntry("semi-supervised", "semi-supervised",
                 summary="Knockoff with a consistency loss on the unqueried pool (semi-supervised clone)"),
    BatteryEntry("d-dae", "d-dae", summary="D-DAE (Chen et al.): detect and restore the defense's perturbation"),
    BatteryEntry("dfme", "dfme", images=True, summary="DFME (Truong et al.), data-free, zeroth-order gradients"),
    BatteryEntry("maze", "maze", images=True, summary="MAZE (Kariyappa et al.), data-free, zeroth-order gradients"),
)
#: the attackers that face every defense at the top rung (the strongest against perturbing defenses: the
#: argmax attacker ignores everything a defense does that keeps the top-1 label)
DEFENSE_ATTACKERS: tuple[str, ...] = ("knockoff-random", "knockoff-argmax")

#: clone training in an audit: SGD with momentum 0.9, 10 epochs of batches of 64, at least :data:`MIN_STEPS` steps
#: on small rungs. Measured on the digits victim (Knockoff, 5,000 sample-patches queries, seed 0): 93.0% clone
#: accuracy, where momentum 0.5 gave 85.5% and batches of 128 with momentum 0.5 about 70% at the same cost (the
#: demo's 30 epochs with momentum 0.5 give 93.9% at three times the cost); an audit must not underrate the attacker
CLONE_TRAIN: dict[str, Any] = {"epochs": 10, "lr": 0.1, "momentum": 0.9, "batch_size": 64}
MIN_STEPS = 100


def known_entries() -> list[BatteryEntry]:
    """Every entry the toolkit can run now: :data:`BATTERY` plus the registered :data:`OPTIONAL` ones."""
    registered = set(available_attacks())
    return [e for e in (*BATTERY, *OPTIONAL) if e.name in registered]


def select(labels: list[str] | None, *, images: bool) -> list[BatteryEntry]:
    """The entries named by ``labels`` (``None``: the default :data:`BATTERY`; ``all``: the optional attackers
    too), in battery
    order; image-only attackers left out when the inputs are not images. A ``ValueError`` names an unknown
    label and lists the known ones."""
    known = known_entries()
    by_label = {e.label: e for e in known}
    if labels is None:
        chosen = [e for e in known if e in BATTERY]
    elif labels == ["all"]:
        chosen = known
    else:
        unknown = [lab for lab in labels if lab not in by_label]
        if unknown:
            raise ValueError(f"unknown attacker(s) {', '.join(unknown)}; known: {', '.join(by_label)}")
        chosen = [e for e in known if e.label in labels]
    if not images:
        chosen = [e for e in chosen if not e.images]
    if not chosen:
        raise ValueError("no attacker of the battery applies to this target")
    return chosen


def clone_epochs(budget: int, *, epochs: int = CLONE_TRAIN["epochs"], batch_size: int = CLONE_TRAIN["batch_size"],
                 min_steps: int = MIN_STEPS) -> int:
    """Epochs of a clone trained on ``budget`` answers: ``epochs``, or more on a small rung so that it takes at
    least ``min_steps`` optimisation steps (a clone of 100 answers would otherwise see 10 steps)."""
    batches = max(1, math.ceil(budget / batch_size))
    return max(epochs, math.ceil(min_steps / batches))


def attack_config(entry: BatteryEntry, *, budget: int, clone: str) -> AttackConfig:
    """The sweep-style :class:`~modelsteal.experiment.config.AttackConfig` of ``entry`` at ``budget``."""
    attack_class(entry.name)  # a ValueError naming the known attacks when missing
    train = {**CLONE_TRAIN, "epochs": clone_epochs(budget)}
    return AttackConfig(name=entry.name, clone=clone, train=train, options=dict(entry.options), label=entry.label)
