"""Sweeps: defenses × strengths × attacks × budgets × seeds, one record per point.

:func:`run_sweep` validates the config (:mod:`~modelsteal.experiment.validate`), plans its points
(:mod:`~modelsteal.experiment.plan`), makes the victims and fitted defenses once
(:mod:`~modelsteal.experiment.victims`) and runs the points (:mod:`~modelsteal.experiment.points`) on an executor.
Each point's record is cached as ``DIR/points/<key>.json`` as soon as it is finished and ``DIR/results.csv``
is rewritten after every point, so an interrupted or repeated sweep recomputes nothing already done.
Every budget's clone is trained from scratch (no warm start from a smaller budget). ``DIR/provenance.json``
records what the results were made with (:mod:`~modelsteal.experiment.provenance`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from modelsteal.attacks import attack_class
from modelsteal.attacks.base import available_attacks
from modelsteal.data import DatasetSplits, load_dataset
from modelsteal.determinism import enable_determinism
from modelsteal.devices import resolve_device
from modelsteal.experiment.config import SweepConfig, config_entry, point_key
from modelsteal.experiment.detection import write_detection
from modelsteal.experiment.executors import Executor, make_executor
from modelsteal.experiment.plan import Point, plan, shard, units
from modelsteal.experiment.points import PointCache, build_attack, point_defense, run_unit
from modelsteal.experiment.provenance import recipe_victim_sha, start_provenance
from modelsteal.experiment.results import write_provenance, write_results
from modelsteal.experiment.transfer import build_transfer_set, seed_set
from modelsteal.experiment.validate import validate_data, validate_sweep
from modelsteal.experiment.victims import (
    is_recipe_defense,
    load_or_train_victim,
    point_victim_config,
    victim_checkpoint_path,
)


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
    """Check the config against the victim's dataset (:func:`~modelsteal.experiment.validate.validate_data`),
    build the transfer and seed sets of ``cfg`` and every attack once (so a bad option value is an error before
    any training), then load or train the victim (:func:`~modelsteal.experiment.victims.load_or_train_victim`)."""
    v = cfg.victim
    data = load_dataset(v.dataset, data_dir=v.data_dir, seed=v.seed)
    validate_data(cfg, data)
    transfer, seeds = build_transfer_set(cfg.transfer, victim_data=data), seed_set(cfg.transfer, victim_data=data)
    for i, acfg in enumerate(cfg.attacks):
        with config_entry(f"attacks[{i}] ({acfg.name})"):
            build_attack(acfg, victim_arch=v.arch, transfer=transfer, seeds=seeds, device=device, natural=data.x_test)
    victim, _, acc, _ = load_or_train_victim(v, out_dir=out_dir, device=device, progress=progress, data=data)
    return SweepInputs(victim, data, acc, transfer, seeds)


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
    bar, finished = None, 0
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"sweep {cfg.name}", unit="point",
                   bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}]")
    try:  # the bar moves per clone inside a stacked unit, on every executor
        for i, records in executor.run(run_unit, work, cache=cache, advance=None if bar is None else bar.update):
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
            recipe_victim_sha(prov, cache.victim_path(vcfg), out=out)
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
