"""``modelsteal.audit``: how many queries (and how much money) it takes to clone a model, and which defense to
deploy, in one call. See ``docs/audit.md`` for every number it reports."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from modelsteal.attacks.base import attack_class, available_attacks
from modelsteal.audit import analysis
from modelsteal.audit.battery import DEFENSE_ATTACKERS, attack_config, select
from modelsteal.audit.data import prepare_data, reference_data
from modelsteal.audit.ladder import budget_ladder
from modelsteal.audit.run import (
    EVAL_CLIENT,
    UNDEFENDED,
    AuditCache,
    AuditPoint,
    build_point_attack,
    data_hash,
    load_point,
    run_audit_unit,
    store_point,
)
from modelsteal.audit.target import Target, open_target
from modelsteal.experiment.config import DefenseConfig, point_key
from modelsteal.experiment.environment import file_sha256

#: the defenses compared when none are named, and their default strengths (else the class's example strength
#: at x0.5, x1, x2)
DEFAULT_DEFENSES = ("mad", "reverse-sigmoid")
DEFAULT_STRENGTHS: dict[str, list[float]] = {
    "mad": [0.1, 0.5, 1.0], "mad-argmax": [0.25, 0.5, 1.0], "reverse-sigmoid": [0.1, 0.3, 1.0],
    "random-noise": [20.0, 80.0, 160.0], "top-k": [1, 2, 3], "rounding": [1, 2],
}


def parse_defense(text: str) -> DefenseConfig:
    """``NAME`` or ``NAME:S1,S2,…`` (strengths) as a :class:`DefenseConfig`, checked at every strength (nothing is
    trained); a ``ValueError`` names the defense and what is wrong."""
    from modelsteal.defenses import available_defenses
    from modelsteal.defenses.base import defense_class
    from modelsteal.experiment.validate import check_defense

    name, _, rest = str(text).partition(":")
    name = name.strip().lower().replace("_", "-")
    if name not in available_defenses() or name in ("none", "identity"):
        known = [d for d in available_defenses() if d not in ("identity",)]
        raise ValueError(f"--defenses: unknown defense {name!r}; known: {', '.join(known)}")
    cls = defense_class(name)
    if rest:
        try:
            strengths: list[Any] = [float(s) if "." in s or "e" in s else int(s) for s in rest.split(",")]
        except ValueError:
            raise ValueError(f"--defenses {text}: strengths must be numbers, e.g. {name}:0.1,0.5") from None
    elif cls.strength_param is None:
        strengths = [None]
    elif name in DEFAULT_STRENGTHS:
        strengths = list(DEFAULT_STRENGTHS[name])
    elif cls.example_strength is not None:
        strengths = [cls.example_strength * f for f in (0.5, 1.0, 2.0)]
    else:
        raise ValueError(f"--defenses {name}: give strengths, e.g. {name}:0.1,0.5")
    d = DefenseConfig(name=name, strengths=strengths)
    for s in strengths:
        try:
            check_defense(d, s)
        except ValueError as e:
            raise ValueError(f"--defenses {text} at strength {s}: {e}") from None
    return d


def _context(target: Target, data: Any, clone: str) -> str:
    ident = target.spec if target.is_url else file_sha256(Path(target.spec))
    return point_key(ident, data_hash(data.pool, data.pool_labels, data.seeds, data.eval_x, data.eval_y), clone)


def plan_points(entries: Sequence[Any], defense_entries: Sequence[Any], defenses: Sequence[DefenseConfig], *,
                ladder: Sequence[int], clone: str, context: str, seed: int = 0) -> list[AuditPoint]:
    """The audit's points: every attacker at every rung undefended, then the defense attackers at the top rung
    against each defense at each strength."""
    points = [AuditPoint(attack=attack_config(e, budget=b, clone=clone), budget=b, defense=UNDEFENDED, strength=None,
                         seed=seed, context=context) for e in entries for b in ladder]
    top = ladder[-1]
    for d in defenses:
        for s in d.strengths:
            points += [AuditPoint(attack=attack_config(e, budget=top, clone=clone), budget=top, defense=d, strength=s,
                                  seed=seed, context=context) for e in defense_entries]
    return points


def _reference(target: Target, data: Any, *, out: Path | None, context: str) -> torch.Tensor:
    """The target's undefended answers on the evaluation inputs: the local model's posteriors, or the URL's
    answers (queried once as :data:`EVAL_CLIENT`, cached in ``out`` so a resumed audit does not pay again)."""
    if target.model is not None:
        return target.blackbox.posteriors(data.eval_x).cpu()
    if out is None:
        return target.blackbox.query(data.eval_x, client=EVAL_CLIENT).cpu()
    path = out / f"reference-{context}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    answers = target.blackbox.query(data.eval_x, client=EVAL_CLIENT).cpu()
    torch.save(answers, path)
    return answers


def check_key_budget(target: Target, *, needed: int) -> None:
    """For a URL: refuse to start when ``/v1/usage`` leaves fewer than ``needed`` queries for this key."""
    if not target.is_url:
        return
    usage = target.blackbox.usage()
    remaining = usage.get("remaining")
    if remaining is not None and remaining < needed:
        raise ValueError(f"the key has {remaining} queries left (of {usage.get('budget')}), the audit needs {needed} "
                         "(every attacker at every rung, plus the evaluation inputs); pass a smaller --budget, fewer "
                         "--attacks, or ask for a larger budget")


def audit(
    target: str | Path,
    *,
    pool: Sequence[str] | str,
    test: str | None = None,
    budget: int = 10_000,
    price_per_query: float | None = None,
    defenses: Sequence[str] | None = None,
    attacks: Sequence[str] | None = None,
    defense_attacks: Sequence[str] | None = None,
    max_accuracy_lost: float = 0.01,
    out: str | Path | None = None,
    key: str | None = None,
    backend: str = "auto",
    workers: int | None = None,
    stack_clones: int = 8,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Audit ``target`` (a model file or an ``http(s)://`` URL with ``key``): the battery of attackers from
    ``pool`` at every rung of the budget ladder up to ``budget``, and for a local model each of ``defenses``
    (``NAME`` or ``NAME:S1,S2``; default :data:`DEFAULT_DEFENSES`, ``[]`` for none) at its strengths against the
    ``defense_attacks`` at the top rung. Returns the report as a dict (``records``: one per point; ``attacks``,
    ``defenses``, ``recommendation``: what the report shows) and, with ``out``, writes ``report.html``,
    ``report.json`` and CSVs there, caching each point in ``out/points`` (a rerun resumes). Example::

        report = modelsteal.audit("victim.pt", pool=["sample-patches"], test="digits", budget=5000)
        report["attacks"][0]["queries_to_90"]
    """
    from modelsteal.experiment.executors import make_executor

    t_start, cpu_start = time.perf_counter(), time.process_time()
    timing: dict[str, float] = {}
    pool_sources = [pool] if isinstance(pool, str) else list(pool)
    ladder = budget_ladder(int(budget))
    if price_per_query is not None and price_per_query < 0:
        raise ValueError(f"--price-per-query must be >= 0, got {price_per_query}")
    if not 0 <= max_accuracy_lost <= 1:
        raise ValueError(f"--max-accuracy-lost must be in [0, 1] (a fraction: 0.01 is one point), "
                         f"got {max_accuracy_lost}")
    if stack_clones < 1:
        raise ValueError(f"--stack-clones must be >= 1, got {stack_clones}")
    if backend == "auto":  # a pool of up to two processes on a machine with two cores or more
        cores = os.cpu_count() or 1
        backend, workers = ("pool", workers or min(2, cores)) if cores > 1 or workers else ("serial", None)
    executor = make_executor(backend, workers=workers)
    tgt = open_target(target, key=key, device=device)
    defense_cfgs = [parse_defense(d) for d in (DEFAULT_DEFENSES if defenses is None and tgt.model is not None
                                               else defenses or ())]
    if defense_cfgs and tgt.model is None:
        raise ValueError("--defenses needs a local model: a URL's answers already carry the server's defense")
    images = len(tgt.input_shape) == 3
    entries = select(list(attacks) if attacks else None, images=images)
    defense_entries = select(list(defense_attacks or DEFENSE_ATTACKERS), images=images) if defense_cfgs else []
    clone = tgt.meta.get("arch") or "lenet"
    target_data = reference_data(tgt.meta, tgt.input_shape)
    target_data = target_data if hasattr(target_data, "x_train") else None
    for d in defense_cfgs:
        from modelsteal.defenses.base import defense_class

        if defense_class(d.name).needs_fit and target_data is None:
            raise ValueError(f"--defenses {d.name} must be fitted on the target's training data, which is not here")
    t = time.perf_counter()
    data = prepare_data(pool_sources, test, meta=tgt.meta, input_shape=tgt.input_shape,
                        num_classes=tgt.num_classes, seed=seed)
    timing["data_seconds"] = time.perf_counter() - t
    context = _context(tgt, data, clone)
    points = plan_points(entries, defense_entries, defense_cfgs, ladder=ladder, clone=clone, context=context,
                         seed=seed)
    outdir = Path(out) if out is not None else None
    done: dict[str, dict[str, Any]] = {}
    if outdir is not None:
        for p in points:
            rec = load_point(outdir, p)
            if rec is not None:
                done[p.key] = rec
    todo = [p for p in points if p.key not in done]
    ref_cached = outdir is not None and (outdir / f"reference-{context}.pt").exists()
    check_key_budget(tgt, needed=sum(p.budget for p in todo) + (0 if ref_cached else len(data.eval_x)))
    cache = AuditCache(target=tgt, data=data, clone=clone, reference=torch.empty(0), device=device,
                       target_data=target_data)
    for p in {p.attack.display: p for p in points}.values():  # every attacker built before any query
        build_point_attack(p, cache)
    if outdir is not None:  # only once every input has been accepted
        (outdir / "points").mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    reference = _reference(tgt, data, out=outdir, context=context)
    cache.reference = reference
    victim_accuracy = 1.0 if data.eval_y is None else float((reference.argmax(1) == data.eval_y).float().mean())
    timing["reference_seconds"] = time.perf_counter() - t
    stackable = [n for n in available_attacks() if attack_class(n).stackable]
    t = time.perf_counter()
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="audit: clones", unit="clone")
    n_cached = len(points) - len(todo)
    try:
        failure = _run(todo, done, executor=executor, cache=cache, outdir=outdir, bar=bar, stack=stack_clones,
                       stackable=stackable)
        strongest = _strongest(done, points, entries, top=ladder[-1]) if defense_cfgs and failure is None else None
        if strongest is not None and strongest.label not in {e.label for e in defense_entries}:
            # the strongest attacker of the ladder faces every defense too: a recommendation that leaves it out
            # would be made against weaker attackers than the owner's real one
            defense_entries = [*defense_entries, strongest]
            extra = plan_points([], [strongest], defense_cfgs, ladder=ladder, clone=clone, context=context, seed=seed)
            points += extra
            more = []
            for p in extra:
                rec = load_point(outdir, p) if outdir is not None else None
                if rec is None:
                    more.append(p)
                else:
                    done[p.key] = rec
            n_cached += len(extra) - len(more)
            if progress and more and bar is None:
                from tqdm.auto import tqdm

                bar = tqdm(total=0, desc="audit: clones", unit="clone")
            if bar is not None and more:
                bar.total += len(more)
                bar.refresh()
            todo += more
            failure = _run(more, done, executor=executor, cache=cache, outdir=outdir, bar=bar, stack=stack_clones,
                           stackable=stackable)
    finally:
        if bar is not None:
            bar.close()
    timing["clones_seconds"] = time.perf_counter() - t
    records = [done[p.key] for p in points if p.key in done]
    report = build_report(records, target=tgt, data=data, ladder=ladder, entries=entries,
                          defense_entries=defense_entries, defenses=defense_cfgs, victim_accuracy=victim_accuracy,
                          price_per_query=price_per_query, max_accuracy_lost=max_accuracy_lost,
                          computed=len(records) - n_cached, cached=n_cached)
    timing["total_seconds"] = time.perf_counter() - t_start
    timing["cpu_seconds"] = time.process_time() - cpu_start  # this process (not pool or Ray workers)
    report["timing"] = {k: round(v, 2) for k, v in timing.items()}
    report["backend"] = executor.describe()
    if outdir is not None:
        t = time.perf_counter()
        from modelsteal.audit.report import write_report

        write_report(report, outdir)
        report["timing"]["report_seconds"] = round(time.perf_counter() - t, 2)
        (outdir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    if failure is not None:
        raise ValueError(f"the target refused a query ({type(failure).__name__}: {failure}) after "
                         f"{len(records)} of {len(points)} clones; what was measured is in "
                         f"{outdir / 'report.html' if outdir else 'the records'}") from None
    return report


def _run(todo: list[AuditPoint], done: dict[str, dict[str, Any]], *, executor: Any, cache: AuditCache,
         outdir: Path | None, bar: Any, stack: int, stackable: list[str]) -> BaseException | None:
    """Run the points ``todo`` (packed into units, stacked where they share queries), caching each record as its
    unit finishes; returns the refusal that stopped them (a spent key, a detector), or ``None``."""
    from modelsteal.blackbox import BudgetExceededError, QueryRefusedError
    from modelsteal.experiment.plan import units

    work = units(todo, stack=stack, stackable=stackable)
    try:
        for i, records in executor.run(run_audit_unit, work, cache=cache):
            for p, rec in zip(work[i], records, strict=True):
                done[p.key] = rec
                if outdir is not None:
                    store_point(outdir, p, rec)
            if bar is not None:
                bar.update(len(work[i]))
    except (BudgetExceededError, QueryRefusedError) as e:  # report what was measured, then say why it stopped
        return e
    return None


def _strongest(done: dict[str, dict[str, Any]], points: list[AuditPoint], entries: Sequence[Any], *,
               top: int) -> Any:
    """The battery entry whose undefended clone at the top rung scored best (``None`` when none finished)."""
    scores = {p.attack.display: analysis.score(done[p.key]) for p in points
              if p.key in done and p.budget == top and p.defense.name == "none"}
    ranked = [e for e in entries if e.label in scores]
    return max(ranked, key=lambda e: scores[e.label]) if ranked else None


def build_report(records: list[dict[str, Any]], *, target: Target, data: Any, ladder: list[int], entries: Any,
                 defense_entries: Any, defenses: Sequence[DefenseConfig], victim_accuracy: float,
                 price_per_query: float | None, max_accuracy_lost: float, computed: int, cached: int) -> dict[str, Any]:
    """The report's content from the records (what :func:`audit` returns and ``report.json`` holds)."""
    labels = [e.label for e in entries]
    summaries = analysis.attack_summaries(records, attacks=labels, victim_accuracy=victim_accuracy,
                                          price_per_query=price_per_query)
    rows = analysis.defense_rows(records, top=ladder[-1], victim_accuracy=victim_accuracy,
                                 attackers=[e.label for e in defense_entries]) if defenses else []
    rec = analysis.recommend(rows, max_accuracy_lost=max_accuracy_lost) if rows else None
    return {
        "target": target.describe(),
        "pool": data.pool_description,
        "measured_on": data.eval_description,
        "labelled": data.eval_y is not None,
        "victim_accuracy": victim_accuracy,
        "ladder": ladder,
        "price_per_query": price_per_query,
        "max_accuracy_lost": max_accuracy_lost,
        "battery": [{"attack": e.label, "registered_as": e.name, "options": e.options, "summary": e.summary}
                    for e in entries],
        "defense_attackers": [e.label for e in defense_entries],
        "defenses_compared": [{"defense": d.name, "strengths": d.strengths} for d in defenses],
        "attacks": summaries,
        "defenses": rows,
        "recommendation": rec,
        "points": {"total": computed + cached, "computed": computed, "cached": cached},
        "seconds_by_attack": {lab: round(sum(r.get("attack_seconds", 0) for r in records if r["attack"] == lab), 1)
                              for lab in dict.fromkeys(r["attack"] for r in records)},
        "records": records,
    }
