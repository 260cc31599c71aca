"""Plots of a sweep, in the style of Orekondy et al. (ICLR 2020).

- Fig. 4: non-replicability (attacker accuracy) against utility — the L1 perturbation (left) and the
  defender's accuracy (right) — one line per defense, its operating points ordered by strength, the
  undefended point marked by a circle (:func:`plot_tradeoffs`);
- Fig. A3: attacker accuracy against the query budget, one line per attack and defense operating point
  (:func:`plot_budget_curves`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _mean_by(records: Sequence[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[tuple(r.get(k) for k in keys)].append(r)
    out = []
    for k, rs in groups.items():
        row = dict(zip(keys, k, strict=True))
        for m in ("attacker_accuracy", "defender_accuracy", "l1_mean", "victim_accuracy"):
            vals = [r[m] for r in rs if r.get(m) is not None]
            row[m] = sum(vals) / len(vals) if vals else None
        out.append(row)
    return out


def load_pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (matplotlib is imported only when plotting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write (110 dpi) and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    load_pyplot().close(fig)
    return path


def plot_sweep(records: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Every plot a sweep's records support: the trade-offs and, with two budgets or more, the budget curves
    (of the records with a clone: benign clients train none), and with a stateful detector the statistic over
    queries (:func:`plot_detection`)."""
    clones = [r for r in records if r.get("attacker_accuracy") is not None]
    paths = plot_tradeoffs(clones, out_dir) + plot_budget_curves(clones, out_dir) if clones else []
    return paths + plot_detection(records, out_dir)


def plot_detection(records: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """``detection-w.png``: PRADA's Shapiro-Wilk ``W`` over each point's stream (its busiest client's), one
    panel per (defense, strength, attack), one line per seed (benign clients: one per client), the detector's
    δ dashed; a flagged run is drawn in red, one never flagged in blue. ``[]`` when no record has a trace."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("w_trace"):
            groups[(r["defense"], r.get("strength"), r.get("response", "none"), r["attack"])].append(r)
    if not groups:
        return []
    plt = load_pyplot()
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, sharey=True)
    lows = [w for rs in groups.values() for r in rs for _, w in r["w_trace"]]
    bottom = max(0.0, min(lows) - 0.02)
    for ax, ((defense, strength, response, attack), rs) in zip(axes.flat, groups.items(), strict=False):
        for r in rs:
            n, w = zip(*r["w_trace"], strict=True)
            ax.plot(n, w, lw=0.8, alpha=0.7, color="C3" if r.get("detected") else "C0")
        deltas = {r.get("detector_delta") for r in rs} - {None}
        for d in deltas:
            ax.axhline(d, color="k", ls="--", lw=0.8)
        hit = sum(bool(r.get("detected")) for r in rs)
        what = "flagged" if attack == "benign" else "detected"
        where = "" if defense in ("none", "undefended") else f" vs {defense}" + (
            f" {strength:g}" if strength is not None else "")
        where += "" if response == "none" else f", {response}"
        ax.set_title(f"{attack}{where}: {hit}/{len(rs)} {what}", fontsize=9)
        ax.set_ylim(bottom, 1.0)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("distances in the stream (≈ queries)")
    for ax in axes[:, 0]:
        ax.set_ylabel("Shapiro-Wilk W")
    names = sorted({str(r["dataset"]) for rs in groups.values() for r in rs if r.get("dataset")})
    fig.suptitle(f"{', '.join(names)}: PRADA's W over each client's stream (dashed: δ)", fontsize=10)
    return [save_figure(fig, Path(out_dir) / "detection-w.png")]


def plot_budget_curves(records: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Fig. A3: ``budget-curves.png``, attacker accuracy against the query budget (log scale).

    One line per (attack, defense, strength) with the mean over seeds; where a point has several seeds a
    band spans their minimum and maximum. The victim's accuracy is the dashed line. Nothing is written
    (and ``[]`` returned) when the records hold fewer than two budgets.
    """
    if len({r["budget"] for r in records}) < 2:
        return []
    groups: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        groups[(r["attack"], r["defense"], r.get("strength"))][int(r["budget"])].append(100 * r["attacker_accuracy"])
    plt = load_pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    attacks = sorted({k[0] for k in groups}, key=str)
    colour = {a: f"C{i % 10}" for i, a in enumerate(attacks)}  # one colour per attack, a line style per defense
    styles = ("--", ":", "-.")
    defended = sorted({k[1:] for k in groups if k[1] not in ("none", "undefended", "identity")}, key=str)
    for (attack, defense, strength), by_budget in sorted(groups.items(), key=lambda kv: str(kv[0])):
        xs = sorted(by_budget)
        accs = [by_budget[b] for b in xs]
        undefended = defense in ("none", "undefended", "identity")
        label = attack if undefended else f"{attack} vs {defense}" + (f" {strength:g}" if strength is not None else "")
        ls = "-" if undefended else styles[defended.index((defense, strength)) % len(styles)]
        means = [sum(a) / len(a) for a in accs]
        ax.plot(xs, means, marker="o" if undefended else "x", ls=ls, color=colour[attack], label=label)
        if any(len(a) > 1 for a in accs):
            ax.fill_between(xs, [min(a) for a in accs], [max(a) for a in accs], color=colour[attack], alpha=0.15)
    victim = [r["victim_accuracy"] for r in records if r.get("victim_accuracy") is not None]
    if victim:
        ax.axhline(100 * sum(victim) / len(victim), color="grey", lw=0.8, ls=":", label="victim")
    ax.set_xscale("log")
    names = sorted({str(r["dataset"]) for r in records if r.get("dataset")})
    title = f"{', '.join(names)}: " * bool(names) + "attacker accuracy against budget"
    ax.set(xlabel="query budget B", ylabel="attacker accuracy (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return [save_figure(fig, Path(out_dir) / "budget-curves.png")]


def plot_tradeoffs(records: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """One PNG per (attack, budget): ``fig4-<attack>-b<budget>.png``. Returns the written paths."""
    plt = load_pyplot()

    out = Path(out_dir)
    rows = _mean_by(records, ("attack", "budget", "defense", "strength"))
    paths = []
    for attack, budget in sorted({(r["attack"], r["budget"]) for r in rows}, key=str):
        sel = [r for r in rows if r["attack"] == attack and r["budget"] == budget]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        undefended = [r for r in sel if r["defense"] in ("none", "undefended", "identity")]
        for defense in sorted({r["defense"] for r in sel} - {"none", "undefended", "identity"}):
            pts = sorted(
                (r for r in sel if r["defense"] == defense), key=lambda r: (r["strength"] is None, r["strength"] or 0)
            )
            pts = undefended[:1] + pts
            for ax, ykey in zip(axes, ("l1_mean", "defender_accuracy"), strict=True):
                ax.plot(
                    [100 * p["attacker_accuracy"] for p in pts],
                    [p[ykey] * (100 if ykey == "defender_accuracy" else 1) for p in pts],
                    marker="x",
                    label=defense,
                )
        for u in undefended[:1]:
            axes[0].plot(100 * u["attacker_accuracy"], u["l1_mean"], "ko", label="undefended")
            axes[1].plot(100 * u["attacker_accuracy"], 100 * u["defender_accuracy"], "ko", label="undefended")
        axes[0].set(
            xlabel="attacker accuracy (%) ↓", ylabel="L1 perturbation ↓", title=f"{attack}, B={budget}: utility = L1"
        )
        axes[1].set(
            xlabel="attacker accuracy (%) ↓",
            ylabel="defender accuracy (%) ↑",
            title=f"{attack}, B={budget}: utility = accuracy",
        )
        lo = min([100 * r["attacker_accuracy"] for r in sel] + [100 * r["defender_accuracy"] for r in sel]) - 5
        axes[1].plot([lo, 100], [lo, 100], color="grey", lw=0.8, ls="--")
        for ax in axes:
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8, loc="lower right")
        paths.append(save_figure(fig, out / f"fig4-{str(attack).replace('/', '_')}-b{budget}.png"))
    return paths
