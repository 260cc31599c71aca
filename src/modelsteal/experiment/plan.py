"""A sweep as a plan: the list of its points, each a frozen description with a stable cache key.

:func:`plan` expands a :class:`~modelsteal.experiment.config.SweepConfig` into :class:`Point` s in the config's
order (defenses × strengths × attacks × budgets × seeds). A point names everything its record depends on — the
victim's config, the transfer set, the output format, the defense and its strength, the attack, the budget and
the seed — and nothing else, so :attr:`Point.key` is the same in every process and on every machine, and equals
the key under which ``DIR/points/<key>.json`` caches its record (:func:`~modelsteal.experiment.sweep.sweep_point_key`).

:func:`shard` keeps the part of a plan that machine ``i`` of ``n`` runs (``modelsteal sweep --shard i/n``);
:func:`units` packs the points still to run into work units: a unit is one point, or up to ``stack`` points
whose attack queries the same inputs (Knockoff on one transfer set at one budget and seed: only the answers
differ with the defense), whose clones then train together (:mod:`modelsteal.training.stacked`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from typing import Any

from modelsteal.experiment.config import (
    AttackConfig,
    BenignConfig,
    DefenseConfig,
    DetectorConfig,
    SweepConfig,
    TransferConfig,
    VictimConfig,
    point_key,
)


@dataclass(frozen=True, eq=False)
class Point:
    """One point of a sweep; equal and hashed by :attr:`key` (picklable, so it travels to worker processes)."""

    victim: VictimConfig
    transfer: TransferConfig
    output: str
    eval_size: int | None
    defense: DefenseConfig
    strength: float | None
    attack: AttackConfig
    budget: int
    seed: int
    device: str = "auto"
    deterministic: bool = False
    #: the detector watching the point's API (``None``: none), and for a benign client's point its settings
    detector: DetectorConfig | None = None
    benign: BenignConfig | None = None

    @cached_property
    def key(self) -> str:
        """The point's cache key: everything that determines its record (the defense's list of strengths left
        out, so adding operating points keeps the finished ones; device and determinism left out too)."""
        return self.key_with(legacy=False)

    def key_with(self, *, legacy: bool) -> str:
        """The key, or with ``legacy=True`` the earlier one that included the defense's strength list."""
        d = asdict(self.defense)
        if not legacy:
            d.pop("strengths")
        parts: list[Any] = [self.victim.identity(), asdict(self.transfer), self.output, self.eval_size, d,
                            self.strength, asdict(self.attack), self.budget, self.seed]
        if self.detector is not None:  # points without one keep the keys they had before detectors
            parts.append({"detector": asdict(self.detector),
                          "benign": None if self.benign is None else asdict(self.benign)})
        return point_key(*parts)

    @cached_property
    def query_key(self) -> str:
        """What fixes the attack's queries when they do not depend on the answers: the victim's data (through
        its config), the transfer set, the attack and its training settings, the budget and the seed. Points
        sharing it (they differ in defense and strength) can train their clones in one pass."""
        return point_key(self.victim.identity(), asdict(self.transfer), asdict(self.attack), self.budget, self.seed)

    def describe(self) -> dict[str, Any]:
        """The row labels of the point's record."""
        labels = {"defense": self.defense.display, "strength": self.strength, "attack": self.attack.display,
                  "budget": self.budget, "seed": self.seed}
        if self.detector is not None:
            labels["response"] = self.detector.response
        return labels

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        d = self.describe()
        return f"Point({d['defense']}@{d['strength']}, {d['attack']}, budget={d['budget']}, seed={d['seed']})"


#: the attack label of a benign client's points
BENIGN = "benign"


def plan(cfg: SweepConfig) -> list[Point]:
    """Every point of ``cfg`` in the config's order (defenses, strengths, the detector's responses, attacks,
    budgets, seeds, then — with a ``benign`` section — that operating point's benign clients, attack ``benign``,
    seed = client index, budget = its queries, 0 for the whole split); a strength is kept as the config writes it
    (``1`` and ``1.0`` hash differently, and earlier caches used the config's)."""
    detectors = [None] if cfg.detector is None else [replace(cfg.detector, response=r)
                                                      for r in cfg.detector.responses]
    points = []
    for d in cfg.defenses:
        for s in d.strengths:
            for det in detectors:
                common = {"victim": cfg.victim, "transfer": cfg.transfer, "output": cfg.output,
                          "eval_size": cfg.eval_size, "defense": d, "strength": s, "device": cfg.device,
                          "deterministic": cfg.deterministic, "detector": det}
                points += [Point(attack=a, budget=b, seed=seed, **common)
                           for a in cfg.attacks for b in cfg.budgets for seed in cfg.seeds]
                if cfg.benign is not None:
                    points += [Point(attack=AttackConfig(name=BENIGN), budget=cfg.benign.queries or 0, seed=i,
                                     benign=cfg.benign, **common) for i in range(cfg.benign.clients)]
    return points


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` as ``(i, n)`` with ``0 <= i < n``; a one-line ``ValueError`` otherwise."""
    parts = str(text).split("/")
    try:
        i, n = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--shard must be I/N with integers, e.g. 0/2, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need N >= 1 and 0 <= I < N (shards are numbered 0 to N-1)")
    return i, n


def shard(points: Sequence[Point], index: int, count: int) -> list[Point]:
    """The points of shard ``index`` of ``count``: whole groups of points sharing their queries (so a shard can
    still stack its clones) dealt round-robin in plan order; the shards of one plan partition it."""
    groups: dict[str, int] = {}
    for p in points:
        groups.setdefault(p.query_key, len(groups))
    return [p for p in points if groups[p.query_key] % count == index]


def units(points: Iterable[Point], *, stack: int = 1, stackable: Iterable[str] = ()) -> list[list[Point]]:
    """The work units of ``points`` in plan order: single points, or up to ``stack`` points of one
    :attr:`Point.query_key` whose attack's name is in ``stackable`` (attacks whose queries do not depend on the
    answers), packed in order of first appearance."""
    if stack < 1:
        raise ValueError(f"--stack-clones must be >= 1 (1 trains every clone alone), got {stack}")
    names = {n.strip().lower() for n in stackable}
    out: list[list[Point]] = []
    open_units: dict[str, list[Point]] = {}
    for p in points:
        if stack == 1 or p.benign is not None or p.attack.name.strip().lower() not in names:
            out.append([p])
            continue
        unit = open_units.get(p.query_key)
        if unit is None or len(unit) >= stack:
            unit = []
            open_units[p.query_key] = unit
            out.append(unit)
        unit.append(p)
    return out
