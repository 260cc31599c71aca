"""Issue 25's table from sweeps' results.csv files: clone accuracy per defense x attacker (mean ± standard deviation
over seeds), the protection each defense keeps against its best attacker (with its seed spread), and each attacker's
time per 1,000 queries beside Knockoff's; optionally a heat map of the table as a PNG.

Rows met twice (a stage file and the full results.csv) count once. An attacker measured at another budget than the
table's (the data-free attackers at their own) gets its own column, named with its budget.

Protection kept by a defense = the best undefended clone (Knockoff's on MNIST) minus the best attacker's clone under
that defense, in points. With several seeds: the best attacker is the one with the highest mean, and the spread is
that of the per-seed differences over the seeds both were run with (mean ± sd, n seeds).

Usage: python scripts/adaptive_summary.py results/adaptive/mnist-cpu/results.csv [more.csv ...] --out FILE.md
       [--png FILE.png] [--title TEXT]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

ORDER = ("knockoff", "knockoff-argmax", "smoothing", "semi-supervised", "semi-supervised-rotation", "d-dae",
         "active-thief", "dfme", "maze")  # columns in this order (others after, as met)


def _column_order(a: str) -> tuple[int, str]:
    name = a.split(" (")[0]
    return (ORDER.index(name) if name in ORDER else len(ORDER), a)


def load(paths: list[str]) -> list[dict[str, str]]:
    rows: dict[tuple[str, ...], dict[str, str]] = {}
    for p in paths:
        with open(p, newline="") as f:
            for r in csv.DictReader(f):
                rows[(r["defense"], r.get("strength") or "", r["attack"], r["budget"], r["seed"])] = r
    return list(rows.values())


def defense_name(r: dict[str, str]) -> str:
    s = r.get("strength") or ""
    return r["defense"] + (f" {float(s):g}" if s else "")


def _k(budget: int) -> str:
    return f"{budget // 1000}K" if budget % 1000 == 0 else str(budget)


def _mean_sd(values: list[float]) -> str:
    m = statistics.mean(values) * 100
    return f"{m:.1f} ± {statistics.stdev(values) * 100:.1f}" if len(values) > 1 else f"{m:.1f}"


def table(rows: list[dict[str, str]]) -> tuple[str, list[str], list[str], dict[tuple[str, str], dict[int, float]]]:
    """The markdown table, its defenses and attackers (columns), and accuracy per (defense, attacker) per seed."""
    main_budget = Counter(int(r["budget"]) for r in rows).most_common(1)[0][0]
    acc: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    secs: dict[str, list[float]] = defaultdict(list)
    defenses: list[str] = []
    attacks: list[str] = []
    for r in rows:
        b = int(r["budget"])
        d, a = defense_name(r), r["attack"] + ("" if b == main_budget else f" ({_k(b)})")
        defenses += [d] if d not in defenses else []
        attacks += [a] if a not in attacks else []
        acc[(d, a)][int(r["seed"])] = float(r["attacker_accuracy"])
        if r.get("attack_seconds") and float(r.get("queries") or 0) > 0:
            secs[a].append(float(r["attack_seconds"]) / (float(r["queries"]) / 1000))
    attacks.sort(key=_column_order)
    base_attack = best_undefended(attacks, acc)
    base = acc[("none", base_attack)] if base_attack else {}
    lines = [f"Clone accuracy (%) at {main_budget:,} queries (other budgets in the column name); mean ± sd over seeds "
             f"where more than one was run. Protection kept: the best undefended clone ({base_attack}) minus the best "
             "defended one, in points.", "",
             "| defense | " + " | ".join(attacks) + " | best attacker | protection kept (points) |",
             "|---" * (len(attacks) + 3) + "|"]
    for d in defenses:
        cells, best = [], None
        for a in attacks:
            v = acc.get((d, a))
            if not v:
                cells.append("–")
                continue
            cells.append(_mean_sd(list(v.values())))
            m = statistics.mean(v.values())
            if best is None or m > best[1]:
                best = (a, m)
        kept = "–"
        if best and base and d != "none":
            by_seed = acc[(d, best[0])]
            common = sorted(set(by_seed) & set(base))
            diffs = [(base[s] - by_seed[s]) * 100 for s in common]
            if len(diffs) > 1:
                kept = f"{statistics.mean(diffs):+.1f} ± {statistics.stdev(diffs):.1f} ({len(diffs)} seeds)"
            else:
                kept = f"{(statistics.mean(base.values()) - best[1]) * 100:+.1f}"
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {best[0] if best else '–'} | {kept} |")
    lines += seeded_protection(defenses, attacks, acc)
    lines += ["", "| attacker | seconds per 1,000 queries (median over points) | × Knockoff |", "|---|---|---|"]
    ko = statistics.median(secs["knockoff"]) if secs.get("knockoff") else None
    for a in attacks:
        if secs.get(a):
            m = statistics.median(secs[a])
            lines.append(f"| {a} | {m:.2f} | {m / ko:.2f} |" if ko else f"| {a} | {m:.2f} | – |")
    return "\n".join(lines) + "\n", defenses, attacks, acc


def best_undefended(attacks: list[str], acc: dict[tuple[str, str], dict[int, float]], *,
                    min_seeds: int = 1) -> str | None:
    """The attacker whose undefended clone is best on average, among those run at ``min_seeds`` seeds or more."""
    run = [a for a in attacks if len(acc.get(("none", a), {})) >= min_seeds]
    return max(run, key=lambda a: statistics.mean(acc[("none", a)].values())) if run else None


def seeded_protection(defenses: list[str], attacks: list[str],
                      acc: dict[tuple[str, str], dict[int, float]]) -> list[str]:
    """Protection kept against the best attacker among those run at more than one seed, measured from the best
    undefended attacker also run at more than one seed (the same seeds): per-seed differences, mean ± sd, range."""
    base_attack = best_undefended(attacks, acc, min_seeds=2)
    if base_attack is None:
        return []
    base = acc[("none", base_attack)]
    lines = ["", f"Protection kept against the best attacker run at several seeds (the undefended {base_attack} "
             "clone minus it, per seed, in points):", "",
             "| defense | attacker | seeds | clone (mean ± sd) | protection kept (mean ± sd) | range |",
             "|---|---|---|---|---|---|"]
    for d in defenses:
        if d == "none":
            continue
        best = None
        for a in attacks:
            v = acc.get((d, a), {})
            common = sorted(set(v) & set(base))
            if len(common) > 1 and (best is None or statistics.mean(v[s] for s in common) > best[1]):
                best = (a, statistics.mean(v[s] for s in common), common)
        if best is None:
            continue
        a, _, common = best
        diffs = [(base[s] - acc[(d, a)][s]) * 100 for s in common]
        clone = [acc[(d, a)][s] for s in common]
        lines.append(f"| {d} | {a} | {', '.join(map(str, common))} | {_mean_sd(clone)} | "
                     f"{statistics.mean(diffs):+.1f} ± {statistics.stdev(diffs):.1f} | "
                     f"{min(diffs):+.1f} … {max(diffs):+.1f} |")
    return lines


def heatmap(path: str, defenses: list[str], attacks: list[str], acc: dict[tuple[str, str], dict[int, float]],
            title: str) -> None:
    """Clone accuracy per defense (rows) x attacker (columns), the value written in each cell; blank: not run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((len(defenses), len(attacks)), np.nan)
    for i, d in enumerate(defenses):
        for j, a in enumerate(attacks):
            if acc.get((d, a)):
                grid[i, j] = statistics.mean(acc[(d, a)].values()) * 100
    fig, ax = plt.subplots(figsize=(max(1.3 * len(attacks) + 2.5, 7.0), 0.55 * len(defenses) + 1.8))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i in range(len(defenses)):
        for j in range(len(attacks)):
            if np.isnan(grid[i, j]):
                ax.text(j, i, "not run", ha="center", va="center", fontsize=7, color="0.6")
            else:
                n = len(acc[(defenses[i], attacks[j])])
                ax.text(j, i, f"{grid[i, j]:.1f}" + (f"\n({n} seeds)" if n > 1 else ""), ha="center", va="center",
                        fontsize=8, color="white" if grid[i, j] < 60 else "black")
    ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
    ax.set_yticks(range(len(defenses)), defenses)
    ax.set_xlabel("attacker")
    ax.set_ylabel("defense")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="clone accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--out", default=None)
    ap.add_argument("--png", default=None, help="also draw the table as a heat map here")
    ap.add_argument("--title", default="clone accuracy per defense x attacker")
    args = ap.parse_args(argv)
    missing = [p for p in args.csv if not Path(p).is_file()]
    if missing:
        print(f"adaptive_summary: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = load(args.csv)
    if not rows:
        print(f"adaptive_summary: no rows in {', '.join(args.csv)}", file=sys.stderr)
        return 2
    text, defenses, attacks, acc = table(rows)
    if args.out:
        Path(args.out).write_text(text)
    if args.png:
        heatmap(args.png, defenses, attacks, acc, args.title)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
