"""Running an audit's points: planned, packed into work units, run by a sweep executor, cached as they finish.

An audit point is one attacker at one budget against one defense operating point. Points are packed by
:func:`~modelsteal.experiment.plan.units` (Knockoff's clones under several defenses train in one stacked pass,
:func:`~modelsteal.attacks.base.steal_together`), run by an :mod:`~modelsteal.experiment.executors` executor
(``serial``, ``pool``, ``ray``) and cached like a sweep's points: ``DIR/points/<key>.json``, written atomically as
each unit finishes, so an audit stopped by Ctrl-C or ``kill -9`` resumes where it stopped. The key holds the
target file's SHA-256 (or the URL), the pool, the evaluation set, the attacker, the budget, the defense and
strength and the seed: a changed input recomputes, nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal.audit.data import AuditData
from modelsteal.audit.target import Target, open_target
from modelsteal.blackbox import BlackBox, PredictionAPI
from modelsteal.experiment.config import AttackConfig, DefenseConfig, point_key
from modelsteal.experiment.points import build_attack, point_defense
from modelsteal.metrics import argmax_accuracy, perturbation_summary
from modelsteal.training import predict_logits

UNDEFENDED = DefenseConfig(name="none")
#: the client name of the owner's own evaluation queries (a server counts them apart from the attackers')
EVAL_CLIENT = "audit-eval"


@dataclass(frozen=True, eq=False)
class AuditPoint:
    """One attacker (``attack``) at one ``budget`` against ``defense`` at ``strength``; ``context`` is the
    audit's identity (target, pool, evaluation set) that every key includes. Packs into work units like a sweep's
    :class:`~modelsteal.experiment.plan.Point` (``benign``, ``attack.name``, ``query_key``)."""

    attack: AttackConfig
    budget: int
    defense: DefenseConfig
    strength: float | None
    seed: int
    context: str
    benign: None = field(default=None, repr=False)

    @cached_property
    def key(self) -> str:
        return point_key(self.context, asdict(self.attack), self.budget, asdict(self.defense), self.strength,
                         self.seed)

    @cached_property
    def query_key(self) -> str:
        """Equal for points whose queries are the same (they differ in the defense only): they can stack."""
        return point_key(self.context, asdict(self.attack), self.budget, self.seed)

    def describe(self) -> dict[str, Any]:
        return {"attack": self.attack.display, "attack_name": self.attack.name, "budget": self.budget,
                "defense": self.defense.display, "strength": self.strength, "seed": self.seed}


def data_hash(*tensors: Tensor | None) -> str:
    """SHA-256 of tensors' bytes (the pool, the evaluation set): part of the audit's context key."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(b"none" if t is None else t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class AuditCache:
    """What every point of an audit shares, picklable so executors send it to workers once: how to reopen the
    target, the audit's data, the clone architecture, fitted defenses' state and per-operating-point utility.
    The target itself (a model or an HTTP client) is opened lazily in each process."""

    def __init__(self, *, target: Target, data: AuditData, clone: str, reference: Tensor,
                 device: str = "auto", target_data: Any = None) -> None:
        self.spec, self.key_, self.device_name = target.spec, target.key, str(device)
        self.data, self.clone, self.reference = data, clone, reference
        self.target_data = target_data
        self.fits: dict[str, dict[str, Any]] = {}
        self._utility: dict[str, dict[str, float]] = {}
        self._target: Target | None = target

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_target"] = None  # an HTTP client or a model on some device: reopened in the worker
        return state

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = open_target(self.spec, key=self.key_, device=self.device_name)
        return self._target

    @property
    def device(self) -> torch.device:
        from modelsteal.devices import resolve_device

        return resolve_device(self.device_name)

    def api(self, p: AuditPoint) -> BlackBox:
        """The black box point ``p`` attacks: the target itself undefended, or its model behind the defense."""
        if p.defense.name == "none":
            return self.target.blackbox
        model = self.target.model
        if model is None:
            raise ValueError("a defense comparison needs a local model (a URL's defense is the server's)")
        defense = point_defense(p.defense, p.strength, victim=model, data=self.target_data, fits=self.fits)
        return PredictionAPI(model, defense=defense, device=self.device)

    def utility(self, p: AuditPoint) -> dict[str, float]:
        """The benign user's view of ``p``'s operating point on the evaluation set: the accuracy of the defended
        answers (agreement with the undefended labels when there are no labels) and their L1/L2 distance to the
        undefended answers."""
        key = point_key(asdict(p.defense), p.strength)
        if key not in self._utility:  # undefended: the reference answers themselves (a URL is not asked twice)
            answers = self.reference if p.defense.name == "none" else \
                self.api(p).query(self.data.eval_x, client=EVAL_CLIENT).cpu()
            labels = self.data.eval_y if self.data.eval_y is not None else self.reference.argmax(1)
            sizes = perturbation_summary(self.reference, answers)
            self._utility[key] = {"defender_accuracy": argmax_accuracy(answers, labels),
                                  "l1_mean": sizes["l1_mean"], "l2_mean": sizes["l2_mean"]}
        return self._utility[key]


def measure(clone: nn.Module, cache: AuditCache) -> dict[str, float | None]:
    """The clone's accuracy on the labelled evaluation set (``None`` without labels) and its fidelity: top-1
    agreement with the target's undefended answers on the evaluation inputs."""
    pred = predict_logits(clone, cache.data.eval_x, device=cache.device).argmax(1).cpu()
    fid = float((pred == cache.reference.argmax(1)).float().mean())
    acc = None if cache.data.eval_y is None else float((pred == cache.data.eval_y).float().mean())
    return {"clone_accuracy": acc, "fidelity": fid}


def build_point_attack(p: AuditPoint, cache: AuditCache) -> Any:
    """The attack of ``p``, handed the audit's pool, pool classes and seeds."""
    d = cache.data
    return build_attack(p.attack, victim_arch=cache.clone, transfer=(d.pool, d.pool_labels), seeds=d.seeds,
                        device=cache.device)


def run_audit_unit(unit: list[AuditPoint], *, cache: AuditCache) -> list[dict[str, Any]]:
    """The records of one work unit: one point attacked and measured, or several points sharing their queries
    whose clones train together (the shared training time split evenly, as a sweep does)."""
    from modelsteal.attacks.base import steal_together

    t0, c0 = time.perf_counter(), time.process_time()
    starts = []
    if len(unit) == 1:
        p = unit[0]
        api, attack = cache.api(p), build_point_attack(p, cache)
        results, stacked = [attack(api, budget=p.budget, seed=p.seed)], False
    else:
        jobs = []
        for p in unit:
            attack = build_point_attack(p, cache)
            jobs.append(attack.begin(cache.api(p), budget=p.budget, seed=p.seed))
        results, stacked = steal_together(jobs)
    seconds, cpu = (time.perf_counter() - t0) / len(unit), (time.process_time() - c0) / len(unit)
    for p, result in zip(unit, results, strict=True):
        rec = {**p.describe(), "queries": result.queries, **measure(result.clone, cache), **cache.utility(p),
               "attack_seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3)}
        if stacked:
            rec["stacked_clones"] = len(unit)
        starts.append(rec)
    return starts


def store_point(out: Path, p: AuditPoint, rec: dict[str, Any]) -> None:
    """Cache one finished point's record atomically (a kill mid-write leaves no half file)."""
    path = out / "points" / f"{p.key}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(path)


def load_point(out: Path, p: AuditPoint) -> dict[str, Any] | None:
    path = out / "points" / f"{p.key}.json"
    return json.loads(path.read_text()) if path.exists() else None
