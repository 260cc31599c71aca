"""What the report reads off an audit's records: curves per attacker, queries (and money) to reach a share of the
victim's accuracy, the defense comparison at the top rung, and the recommended operating point.

The measure is the clone's accuracy on the owner's labelled test set, compared with the target's own accuracy
there; without labels it is the clone's agreement with the target (fidelity), compared with 1 (the target
agrees with itself)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelsteal.audit.ladder import first_reaching

#: the shares of the victim's accuracy the report gives queries for
SHARES = (0.90, 0.95)


def score(rec: dict[str, Any]) -> float:
    """The number an attacker is ranked by: clone accuracy when there are labels, else fidelity."""
    acc = rec.get("clone_accuracy")
    return float(acc) if acc is not None else float(rec["fidelity"])


def undefended(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["defense"] == "none"]


def attack_summaries(records: Sequence[dict[str, Any]], *, attacks: Sequence[str], victim_accuracy: float,
                     price_per_query: float | None) -> list[dict[str, Any]]:
    """Per attacker, in battery order: its undefended curve (``budget``, ``queries``, ``clone_accuracy``,
    ``fidelity`` per rung) and, for each share in :data:`SHARES`, the first rung whose clone reaches
    ``share × victim_accuracy`` (``queries_to_90``; ``None``: not reached within the ladder) and what those queries
    cost at ``price_per_query`` (``money_to_90``)."""
    out = []
    for label in attacks:
        rows = sorted((r for r in undefended(records) if r["attack"] == label), key=lambda r: r["budget"])
        if not rows:
            continue
        curve = [{k: r.get(k) for k in ("budget", "queries", "clone_accuracy", "fidelity")} for r in rows]
        s: dict[str, Any] = {"attack": label, "curve": curve, "top": curve[-1]}
        for share in SHARES:
            tag = f"{round(share * 100)}"
            rung = first_reaching([r["budget"] for r in rows], [score(r) for r in rows], share * victim_accuracy)
            s[f"queries_to_{tag}"] = rung
            s[f"money_to_{tag}"] = None if rung is None or price_per_query is None else rung * price_per_query
        out.append(s)
    return out


def defense_rows(records: Sequence[dict[str, Any]], *, top: int, victim_accuracy: float,
                 attackers: Sequence[str]) -> list[dict[str, Any]]:
    """One row per operating point (undefended first, then each defense at each strength) at the top rung:
    the benign user's accuracy and accuracy lost, the mean L1 distance of the answers, and the best of
    ``attackers``' clones there (``best_attacker``, ``best_clone``: its accuracy or, without labels, fidelity)."""
    points: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in records:
        if r["budget"] == top and r["attack"] in attackers:
            points.setdefault((r["defense"], r["strength"]), []).append(r)
    rows = []
    for (defense, strength), recs in points.items():
        best = max(recs, key=score)
        first = recs[0]
        rows.append({"defense": defense, "strength": strength, "defender_accuracy": first["defender_accuracy"],
                     "accuracy_lost": victim_accuracy - first["defender_accuracy"], "l1_mean": first["l1_mean"],
                     "best_attacker": best["attack"], "best_clone": score(best),
                     "clones": {r["attack"]: score(r) for r in recs}})
    rows.sort(key=lambda r: (r["defense"] != "none", r["defense"], r["strength"] if r["strength"] is not None else 0))
    return rows


def recommend(rows: Sequence[dict[str, Any]], *, max_accuracy_lost: float) -> dict[str, Any] | None:
    """The operating point that leaves the best attacker's clone weakest among those costing the benign user at
    most ``max_accuracy_lost`` accuracy (ties: the smaller L1 perturbation); the undefended row counts (it costs
    nothing), so the answer may be "no defense". ``None`` when there is no row."""
    allowed = [r for r in rows if r["accuracy_lost"] <= max_accuracy_lost + 1e-12]
    if not allowed:
        return None
    return min(allowed, key=lambda r: (r["best_clone"], r["l1_mean"]))
