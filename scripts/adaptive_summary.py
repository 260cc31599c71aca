"""Issue 25's table from a sweep's results.csv: clone accuracy per defense x attacker, the protection each defense
keeps against its best attacker, and each attacker's wall time per 1,000 queries beside Knockoff's.

Usage: python scripts/adaptive_summary.py results/adaptive/mnist-cpu/results.csv [more.csv ...] --out FILE.md
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def load(paths: list[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for p in paths:
        with open(p, newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


def defense_name(r: dict[str, str]) -> str:
    s = r.get("strength") or ""
    return r["defense"] + (f" {float(s):g}" if s else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    missing = [p for p in args.csv if not Path(p).is_file()]
    if missing:
        print(f"adaptive_summary: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = load(args.csv)
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    secs: dict[str, list[float]] = defaultdict(list)
    defenses: list[str] = []
    attacks: list[str] = []
    for r in rows:
        d, a = defense_name(r), r["attack"]
        defenses += [d] if d not in defenses else []
        attacks += [a] if a not in attacks else []
        acc[(d, a)].append(float(r["attacker_accuracy"]))
        if r.get("attack_seconds") and float(r.get("queries") or 0) > 0:
            secs[a].append(float(r["attack_seconds"]) / (float(r["queries"]) / 1000))
    lines = ["| defense | " + " | ".join(attacks) + " | best attacker | protection kept (points) |",
             "|---" * (len(attacks) + 3) + "|"]
    base = acc.get(("none", "knockoff"))
    undefended = statistics.mean(base) if base else None
    for d in defenses:
        cells, best = [], None
        for a in attacks:
            v = acc.get((d, a))
            if not v:
                cells.append("–")
                continue
            m = statistics.mean(v)
            spread = f" ± {statistics.stdev(v) * 100:.1f}" if len(v) > 1 else ""
            cells.append(f"{m * 100:.1f}{spread}")
            if best is None or m > best[1]:
                best = (a, m)
        kept = f"{(undefended - best[1]) * 100:+.1f}" if best and undefended is not None and d != "none" else "–"
        lines.append(f"| {d} | " + " | ".join(cells) + f" | {best[0] if best else '–'} | {kept} |")
    lines += ["", "| attacker | seconds per 1,000 queries (median over points) | × Knockoff |", "|---|---|---|"]
    ko = statistics.median(secs["knockoff"]) if secs.get("knockoff") else None
    for a in attacks:
        if secs.get(a):
            m = statistics.median(secs[a])
            lines.append(f"| {a} | {m:.2f} | {m / ko:.2f} |" if ko else f"| {a} | {m:.2f} | – |")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
