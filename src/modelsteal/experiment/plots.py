"""Trade-off plots in the style of Orekondy et al. (ICLR 2020), Fig. 4: non-replicability (attacker
accuracy) against utility — the L1 perturbation (left) and the defender's accuracy (right) — one line per
defense, its operating points ordered by strength, the undefended point marked by a circle."""

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


def plot_tradeoffs(records: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """One PNG per (attack, budget): ``fig4-<attack>-b<budget>.png``. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        fig.tight_layout()
        name = f"fig4-{str(attack).replace('/', '_')}-b{budget}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths
