"""Points: one record per (defense, strength, attack, budget, seed), computed from the point's description alone.

:class:`PointCache` holds what points share (datasets, victims, transfer sets, fitted defenses, calibrated
detectors), loaded or rebuilt by key in each process; :func:`run_point` attacks one defended API and measures the
clone; :func:`run_unit` runs points that share their queries with their clones trained in one stacked pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal._registry import check_options, constructor_parameters
from modelsteal.attacks import attack_class
from modelsteal.attacks.base import Attack, StealResult, steal_together
from modelsteal.blackbox import PredictionAPI, QueryRefusedError
from modelsteal.data import DatasetSplits, load_dataset
from modelsteal.defenses import make_defense
from modelsteal.devices import resolve_device
from modelsteal.experiment.config import AttackConfig, DefenseConfig, SweepConfig, VictimConfig, point_key
from modelsteal.experiment.detection import detection_facts, detector_key, fit_point_detector, run_benign_client
from modelsteal.experiment.environment import file_sha256
from modelsteal.experiment.plan import Point
from modelsteal.experiment.transfer import build_transfer_set, seed_set
from modelsteal.experiment.validate import ATTACK_PROVIDED, check_architecture, check_train
from modelsteal.experiment.victims import (
    is_recipe_defense,
    load_or_train_victim,
    point_victim_config,
    victim_checkpoint_path,
)
from modelsteal.metrics import angular_deviation, attacker_accuracy, defense_cost, fidelity, perturbation_summary

ANGLE_SAMPLES = 128  # attacker queries on which the clone's gradient deviation is measured

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
        if transfer[1] is None and params["transfer_labels"].default is params["transfer_labels"].empty:
            raise ValueError(f"attack {acfg.name!r} needs labelled transfer data (transfer.source: dataset)")
        if transfer[1] is not None:
            kwargs["transfer_labels"] = transfer[1]
    if "seed_set" in params:
        kwargs["seed_set"] = seeds
    if "natural" in params and natural is not None:
        kwargs["natural"] = natural
    return cls(clone=clone, train=check_train(acfg.train), device=device, **kwargs)


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
        **{k: _plain(result.info[k]) for k in getattr(attack, "reported_info", ()) if k in result.info},
    }
    if result.transfer_x is not None and result.transfer_y is not None and result.transfer_y.ndim == 2:
        clean = api.posteriors(result.transfer_x).cpu()
        seen = perturbation_summary(clean, result.transfer_y.cpu())
        rec.update({f"query_{k}": v for k, v in seen.items() if k.endswith("_mean")})
        n = min(ANGLE_SAMPLES, len(clean))
        angles = angular_deviation(result.clone, result.transfer_x[:n], clean[:n], result.transfer_y[:n].cpu())
        rec["query_angle_mean"] = float(angles.mean())
    return rec


def refusal_facts(error: QueryRefusedError, api: PredictionAPI, *, seconds: float) -> dict[str, Any]:
    """The record of a point whose attack the API refused (a detector with ``response: refuse``): ``refused``,
    the queries it had bought (answered) and the message; no clone was trained, so no accuracy or fidelity."""
    bought = error.partial.queries if error.partial is not None else api.total_queries
    return {"refused": True, "refusal": str(error), "queries": bought, "attacker_accuracy": None, "fidelity": None,
            "attack_seconds": round(seconds, 2)}


def _plain(value: Any) -> Any:
    """A reported fact as the point's JSON can hold it (a tensor as a list)."""
    return value.tolist() if isinstance(value, Tensor) else value


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
        try:
            result = attack(api, budget=point.budget, seed=point.seed)
        except QueryRefusedError as e:  # the detector's refuse response stopped the attack: a result, not a crash
            rec.update(refusal_facts(e, api, seconds=time.perf_counter() - t1))
        else:
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
    starts, jobs, collect_seconds, refused = [], [], [], {}
    for i, p in enumerate(unit):
        t = time.perf_counter()
        rec, _, api, attack = _point_start(p, cache=cache)
        t1 = time.perf_counter()
        try:
            jobs.append(attack.begin(api, budget=p.budget, seed=p.seed))
        except QueryRefusedError as e:  # refused by the detector: recorded, no clone to train
            refused[i] = {**rec, **refusal_facts(e, api, seconds=time.perf_counter() - t1), **detection_facts(api),
                          "wall_seconds": round(time.perf_counter() - t, 3)}
        else:
            starts.append((rec, api, attack, detection_facts(api)))  # now: the next start resets the detector
            collect_seconds.append((t1 - t, time.perf_counter() - t1))
        if advance is not None:
            advance(0.5 if i not in refused else 1.0)
    records = _train_unit([p for i, p in enumerate(unit) if i not in refused], starts, jobs, collect_seconds,
                          cache=cache, advance=advance) if jobs else []
    trained = iter(records)
    return [refused[i] if i in refused else next(trained) for i in range(len(unit))]


def _train_unit(unit: list[Point], starts: list[tuple], jobs: list[Any], collect_seconds: list[tuple[float, float]],
                *, cache: PointCache, advance: Callable[[float], None] | None) -> list[dict[str, Any]]:
    """The clones of a unit's collected jobs trained together, and their records."""
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
