"""Re-run committed points of a results directory and compare them with what was committed.

A results directory written by :func:`~modelsteal.experiment.sweep.run_sweep` holds ``results.csv`` and
``provenance.json`` (the config as run and the victim checkpoint's SHA-256). :func:`reproduce` takes the
first ``points`` rows of the CSV, re-runs each as a one-point sweep from the *committed* victim (refusing a
victim file whose SHA-256 differs from the recorded one) into a scratch directory, and reports the
committed and the new attacker accuracy and whether they agree within ``tolerance``; beside it, whether the
victim's and the defender's accuracy came out as committed (a different victim or defense shows there first).

Results made before provenance was recorded are re-run from the config they were made with (``config=``); once
every re-run point reproduced (the victim's accuracy exactly), :func:`record_reconstructed` writes their
``provenance.json``, marked ``reconstructed`` with the points that were checked.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modelsteal.experiment.config import DefenseConfig, SweepConfig, load_config, parse_config
from modelsteal.experiment.environment import file_sha256
from modelsteal.experiment.results import read_provenance, read_results, write_provenance, write_results

#: default agreement in accuracy, per attack family: the largest across-kernel move measured on the committed
#: PP points (docs/reproduction.md, "the spread"), rounded up. Attacks with a fixed transfer set (Knockoff and
#: its variants) moved by at most 1.3 points under other CPU kernels; the JB family builds its queries from the
#: signs of the clone's gradients, so a last-bit difference changes the queries and a run moved by up to 16.3
#: points (JB-top3 under MAD), as much as another seed. Same-machine re-runs agree exactly.
DEFAULT_TOLERANCES = {"transfer-set": 0.02, "synthetic": 0.17}


def default_tolerance(attack: str) -> float:
    """The default tolerance for a point of ``attack`` (its registry name): the synthetic-query family
    (``jbda``, ``jb-self``, ``jb-top-k``) or the rest, whose queries come from a fixed transfer set."""
    family = "synthetic" if attack.strip().lower().startswith("jb") else "transfer-set"
    return DEFAULT_TOLERANCES[family]


@dataclass(frozen=True)
class Comparison:
    """One re-run point: the committed and the new value of ``metric``."""

    point: str
    committed: float
    now: float
    tolerance: float
    #: ``column: (committed, now)`` for the victim's and the defender's accuracy of the point
    checks: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: ``(defense, strength, attack, budget, seed)`` and the re-run's wall time
    key: tuple[Any, ...] = ()
    wall_seconds: float = 0.0

    @property
    def difference(self) -> float:
        return self.now - self.committed

    @property
    def within(self) -> bool:
        return abs(self.difference) <= self.tolerance

    def changed(self, *, atol: float = 1e-6) -> dict[str, tuple[float, float]]:
        """The checked columns that did not come out as committed."""
        return {k: v for k, v in self.checks.items() if abs(v[1] - v[0]) > atol}


def resolve_recorded_path(path: str | Path, *, out_dir: Path, recorded_out: str | Path | None = None) -> Path:
    """Where a path recorded in a results folder's provenance is now, for the folder at ``out_dir`` (which may
    be a copy, renamed, read from another working directory).

    A relative path was recorded relative to the sweep's working directory. When the folder recorded where it
    was written (``recorded_out``, provenance's ``out_dir``), the path is taken relative to it and resolved
    against ``out_dir``; otherwise the longest tail of the path that exists under ``out_dir`` is taken
    (``results/reproduce-digits/victim.pt`` → ``out_dir/victim.pt``). Absolute paths, and paths found
    neither way, are returned as recorded (then relative to the working directory, as before).
    """
    p = Path(path)
    if p.is_absolute():
        return p
    if recorded_out is not None:
        moved = Path(os.path.normpath(out_dir / os.path.relpath(p, recorded_out)))
        if moved.exists():
            return moved
    for i in range(len(p.parts)):
        tail = out_dir.joinpath(*p.parts[i:])
        if tail.exists():
            return tail
    return p


def _resolve_paths(cfg: SweepConfig, out_dir: Path, prov: dict[str, Any]) -> SweepConfig:
    """``cfg`` with its victim checkpoint and data folders resolved against the results folder."""
    recorded_out = prov.get("out_dir")

    def move(value: str | None) -> str | None:
        return None if value is None else str(resolve_recorded_path(value, out_dir=out_dir,
                                                                   recorded_out=recorded_out))

    victim = replace(cfg.victim, checkpoint=move(cfg.victim.checkpoint), data_dir=move(cfg.victim.data_dir))
    return replace(cfg, victim=victim, transfer=replace(cfg.transfer, data_dir=move(cfg.transfer.data_dir)))


def committed_config(out_dir: Path, *, config: str | Path | None = None,
                     scale: str | None = None) -> tuple[SweepConfig, dict[str, Any]]:
    """The config a results directory was made with (its recorded paths resolved against ``out_dir``,
    :func:`resolve_recorded_path`) and its provenance."""
    cfg, prov = _committed_config(out_dir, config=config, scale=scale)
    return _resolve_paths(cfg, out_dir, prov), prov


def _committed_config(out_dir: Path, *, config: str | Path | None = None,
                      scale: str | None = None) -> tuple[SweepConfig, dict[str, Any]]:
    """The config a results directory was made with and its provenance. A directory made before provenance
    was recorded needs ``config``, the file it was made with (its budgets and seeds are taken from the rows,
    as the sweep's ``--budget``/``--seeds`` overrides set them); ``ValueError`` otherwise."""
    if not (out_dir / "results.csv").exists():
        raise FileNotFoundError(f"{out_dir} has no results.csv: not a results directory of `modelsteal sweep`")
    prov = read_provenance(out_dir)
    if "config" in prov:
        if config is not None or scale is not None:
            raise ValueError(f"{out_dir}/provenance.json records the config it was made with; --config and --scale "
                             "are only for results made before provenance was recorded")
        return parse_config(prov["config"]), prov
    if config is None:
        raise ValueError(f"{out_dir} does not record the config (made before provenance was recorded): pass the "
                         "config it was made with, --config CONFIG")
    cfg, rows = load_config(config, scale=scale), read_results(out_dir / "results.csv")
    cfg = replace(cfg, budgets=sorted({int(r["budget"]) for r in rows}), seeds=sorted({int(r["seed"]) for r in rows}))
    for row in rows:  # every committed row must be a point of the config, not only the ones re-run
        point_config(cfg, row)
    return cfg, prov


def check_victim(cfg: SweepConfig, prov: dict[str, Any]) -> Path:
    """The committed victim checkpoint, checked against the recorded SHA-256."""
    if not cfg.victim.checkpoint:
        raise ValueError("the config trains its victim instead of naming a committed `victim.checkpoint`; "
                         "reproduce needs the victim the results were made with")
    path = Path(cfg.victim.checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"the committed victim {path} is missing")
    sha = file_sha256(path)
    if prov.get("victim_sha256") and sha != prov["victim_sha256"]:
        raise ValueError(f"victim {path} has sha256 {sha[:12]}, the results were made with "
                         f"{prov['victim_sha256'][:12]}")
    return path


def point_config(cfg: SweepConfig, row: dict[str, Any]) -> SweepConfig:
    """``cfg`` reduced to the one point of ``row`` (defense entry, strength, attack, budget, seed; the detector's
    response of the row, and no benign clients)."""
    if row["attack"] == "benign" and cfg.benign is not None:
        raise ValueError(f"row {_describe(row)} is a benign client's (no clone to compare); re-run an attack's row")
    strength = row.get("strength")
    defense = next((d for d in cfg.defenses if d.display == row["defense"]
                    and any(_same(s, strength) for s in d.strengths)), None)
    attack = next((a for a in cfg.attacks if a.display == row["attack"]), None)
    if defense is None or attack is None:
        raise ValueError(f"row {_describe(row)} matches no defense/attack of the recorded config")
    if int(row["budget"]) not in cfg.budgets or int(row["seed"]) not in cfg.seeds:
        raise ValueError(f"row {_describe(row)} has a budget or seed the recorded config does not sweep")
    one = DefenseConfig(name=defense.name, strengths=[strength], options=defense.options, label=defense.label)
    detector = cfg.detector
    if detector is not None and len(detector.responses) > 1:
        detector = replace(detector, response=row.get("response") or detector.responses[0])
    return replace(cfg, defenses=[one], attacks=[attack], budgets=[int(row["budget"])],
                   seeds=[int(row["seed"])], detector=detector, benign=None)


#: the columns that must come out as committed for a point to count as made from the same victim and defense
CHECKED = ("victim_accuracy", "defender_accuracy")


def select_rows(rows: Sequence[dict[str, Any]], *, points: int = 1, rows_wanted: Sequence[int] | None = None
                ) -> list[dict[str, Any]]:
    """The first ``points`` rows, or the 1-based rows ``rows_wanted`` of ``results.csv`` (in that order)."""
    if rows_wanted is None:
        if points < 1:
            raise ValueError(f"--points must be >= 1, got {points}")
        return list(rows[:points])
    bad = [i for i in rows_wanted if not 1 <= i <= len(rows)]
    if bad:
        raise ValueError(f"--rows {bad[0]} is not a row of results.csv (it has rows 1 to {len(rows)})")
    return [rows[i - 1] for i in rows_wanted]


def reproduce(out_dir: str | Path, *, points: int = 1, rows: Sequence[int] | None = None,
              tolerance: float | None = None, metric: str = "attacker_accuracy", device: str | None = None,
              config: str | Path | None = None, scale: str | None = None,
              progress: bool = False) -> list[Comparison]:
    """Re-run the first ``points`` rows (or the 1-based ``rows``) of ``out_dir/results.csv`` from the committed
    victim (on ``device``, default the recorded config's), each compared within ``tolerance`` (default: the
    attack family's, :func:`default_tolerance`). ``config``: the config file of results made before
    provenance was recorded (then :func:`record_reconstructed` can write their provenance), at ``scale`` (one
    of its ``scales``; default its own settings)."""
    from modelsteal.experiment.sweep import run_sweep

    if tolerance is not None and tolerance < 0:
        raise ValueError(f"--tolerance must be >= 0, got {tolerance}")
    out_dir = Path(out_dir)
    cfg, prov = committed_config(out_dir, config=config, scale=scale)
    check_victim(cfg, prov)
    chosen = select_rows(read_results(out_dir / "results.csv"), points=points, rows_wanted=rows)
    if chosen and metric not in chosen[0]:
        raise ValueError(f"results.csv has no column {metric!r}")
    configs = [(row, point_config(cfg, row)) for row in chosen]  # every row matched before any work
    out: list[Comparison] = []
    for row, pcfg in configs:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="modelsteal-reproduce-") as scratch:
            (record_now,) = run_sweep(pcfg, out_dir=scratch, progress=progress, device=device, plots=False)
        checks = {c: (float(row[c]), float(record_now[c])) for c in CHECKED
                  if isinstance(row.get(c), int | float) and c in record_now}
        tol = default_tolerance(pcfg.attacks[0].name) if tolerance is None else tolerance
        out.append(Comparison(_describe(row), float(row[metric]), float(record_now[metric]), tol,
                              checks=checks, key=_key(row), wall_seconds=round(time.perf_counter() - t0, 3)))
    return out


def record_reconstructed(out_dir: Path, cfg: SweepConfig, comparisons: Sequence[Comparison], *,
                         device: str | None = None) -> Path:
    """Write the provenance of results made before it was recorded, once re-running ``comparisons`` from the
    committed victims reproduced each of them within its tolerance, with the victim's and the defender's
    accuracy exactly as committed, and checked every victim the rows were made with: the config (as run), the
    victim files' SHA-256 (also filled into ``results.csv``'s ``victim_sha256``), this machine's environment,
    and a ``reconstructed`` entry naming the points checked.
    The environment is the one of the check, not of the original run: the note says so."""
    from modelsteal.devices import resolve_device
    from modelsteal.experiment.provenance import start_provenance
    from modelsteal.experiment.victims import sweep_victim_paths

    failed = [c.point for c in comparisons if not c.within or c.changed()]
    if failed or not comparisons:
        raise ValueError(f"not recording the provenance of {out_dir}: "
                         + (f"{failed[0]} did not reproduce" if failed else "no point was re-run"))
    rows = read_results(out_dir / "results.csv")
    every = sweep_victim_paths(cfg, out_dir=out_dir)
    paths = {_key(r)[:2]: every[_key(r)[:2]] for r in rows}  # the victims the committed rows were made with
    missing = sorted({str(p) for p in paths.values() if not p.exists()})
    if missing:
        raise FileNotFoundError(f"not recording the provenance of {out_dir}: victim {missing[0]} is missing "
                                "(re-run a point of each defended victim first)")
    checked = {str(paths[c.key[:2]]) for c in comparisons}
    unchecked = sorted({str(p) for p in paths.values()} - checked)
    if unchecked:
        first = next(i for i, r in enumerate(rows, 1) if str(paths[_key(r)[:2]]) == unchecked[0])
        raise ValueError(f"not recording the provenance of {out_dir}: no re-run point checked victim "
                         f"{unchecked[0]} (add one of its rows, e.g. --rows {first})")
    shas = {str(p): file_sha256(p) for p in set(paths.values())}
    for row in rows:
        row["victim_sha256"] = shas[str(paths[_key(row)[:2]])]
    prov = start_provenance(cfg, out=out_dir, device=resolve_device(device or cfg.device),
                            victim_path=Path(cfg.victim.checkpoint))
    prov["victims"] = shas
    prov["reconstructed"] = {
        "note": "made before provenance was recorded; the config, the victim files and this environment were "
                "recorded when the points below were re-run from those victims and reproduced (environment: "
                "the machine of that check, not necessarily of the original run; the other points' wall times "
                "are unknown, results.csv's attack_seconds has their attack time)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "points_checked": [{"point": c.point, "committed": c.committed, "now": c.now, "tolerance": c.tolerance,
                            "wall_seconds": c.wall_seconds} for c in comparisons],
        "max_abs_difference": max((abs(c.difference) for c in comparisons), default=0.0),
    }
    write_results(rows, out_dir)
    return write_provenance(prov, out_dir)


def _number(v: Any) -> float | None:
    return None if v is None else float(v)


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["defense"], _number(row.get("strength")), row["attack"], int(row["budget"]), int(row["seed"]))


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= 1e-12 * max(1.0, abs(float(a)))


def _describe(row: dict[str, Any]) -> str:
    strength = "" if row.get("strength") is None else f" {row['strength']}"
    return f"{row['defense']}{strength} / {row['attack']} / budget {row['budget']} / seed {row['seed']}"
