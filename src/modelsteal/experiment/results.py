"""Writing sweep records: ``results.csv`` with fixed leading columns, ``provenance.json`` beside it (what the
results were made with), and a plain-text table."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = [
    "dataset",
    "defense",
    "strength",
    "attack",
    "budget",
    "seed",
    "victim_accuracy",
    "defender_accuracy",
    "attacker_accuracy",
    "fidelity",
    "l1_mean",
    "l2_mean",
    "hellinger_mean",
]


#: record fields kept in the points' JSON only (series, not one value per row)
JSON_ONLY = frozenset({"w_trace", "classes", "policy", "action_counts"})


def write_results(records: Sequence[dict[str, Any]], out_dir: str | Path) -> Path:
    """Write ``out_dir/results.csv`` atomically: the standard columns first, then any others (series such as
    ``w_trace`` stay in the points' JSON)."""
    out = Path(out_dir)
    extra = sorted({k for r in records for k in r} - set(COLUMNS) - JSON_ONLY)
    path = out / "results.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS + extra, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS + extra})
    tmp.replace(path)
    return path


#: the file beside ``results.csv`` that records the victim's SHA-256, the environment and each point's wall time
PROVENANCE_FILE = "provenance.json"


def read_provenance(out_dir: str | Path) -> dict[str, Any]:
    """``out_dir/provenance.json`` as a mapping (empty when there is none yet)."""
    path = Path(out_dir) / PROVENANCE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); restore it "
                         "from version control or delete it to start a new record") from None


def write_provenance(provenance: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/provenance.json`` atomically, with the per-point wall times summed (``wall_seconds_total``
    over ``points_timed`` points of ``provenance["points"]``)."""
    points = provenance.get("points", {})
    times = [p["wall_seconds"] for p in points.values() if isinstance(p.get("wall_seconds"), int | float)]
    data = {**provenance, "points_timed": len(times), "wall_seconds_total": round(sum(times), 3)}
    path = Path(out_dir) / PROVENANCE_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def merge_provenance(provenances: Sequence[dict[str, Any]], *, sources: Sequence[str]) -> dict[str, Any]:
    """One provenance for rows merged from several results directories (later ones win, as their rows do):
    the union of their victims, environments and points, the latest run's environment, and ``merged_from``
    (each source's directory, config name and hash). The config is kept only when every source recorded the
    same one; otherwise the merged directory records none (``modelsteal reproduce --config`` then names it)."""
    recorded = [p for p in provenances if p]
    merged: dict[str, Any] = {"merged_from": [
        {"dir": str(d), "config_name": p.get("config_name"), "config_hash": p.get("config_hash")}
        for d, p in zip(sources, provenances, strict=True)]}
    for p in recorded:
        for key in ("victims", "environments", "points"):
            merged[key] = {**merged.get(key, {}), **p.get(key, {})}
        merged.update({k: p[k] for k in ("environment", "environment_id", "victim_path", "victim_sha256")
                       if k in p})
    hashes = {p.get("config_hash") for p in provenances}
    if recorded and len(hashes) == 1 and len(recorded) == len(provenances):
        merged.update({k: recorded[-1][k] for k in ("config", "config_name", "config_hash") if k in recorded[-1]})
    previous = {p["victim_sha256"] for p in recorded if "victim_sha256" in p} - {merged.get("victim_sha256")}
    merged["previous_victim_sha256"] = sorted(previous)
    return merged


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``results.csv`` back, converting numeric fields."""

    def conv(v: str) -> Any:
        if v == "":
            return None
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f

    with open(path, newline="") as f:
        return [{k: conv(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def format_table(records: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A fixed-width text table of the records (accuracies as percentages)."""
    columns = list(
        columns
        or [
            "defense",
            "strength",
            "attack",
            "budget",
            "defender_accuracy",
            "attacker_accuracy",
            "fidelity",
            "l1_mean",
            "hellinger_mean",
        ]
    )
    pct = {"victim_accuracy", "defender_accuracy", "attacker_accuracy", "fidelity"}
    rows = [
        [(f"{100 * r[c]:.1f}" if c in pct and r.get(c) is not None else _fmt(r.get(c))) for c in columns]
        for r in records
    ]
    heads = [c.replace("_accuracy", " acc").replace("_mean", "") for c in columns]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def row_key(r: dict[str, Any]) -> tuple[Any, ...]:
    """What names a row of ``results.csv``: defense, strength, attack, budget, seed."""
    return tuple(r.get(k) for k in ("defense", "strength", "attack", "budget", "seed"))


def merge_result_dirs(dirs: Sequence[str | Path], *, out_dir: str | Path,
                      order: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Merge the results directories ``dirs`` (shards of one plan, or runs of a config extended later) into
    ``out_dir`` without recomputing: the union of their cached points (``points/*.json``), their rows (a row of a
    later directory replaces an earlier one with the same :func:`row_key`), and their provenance
    (:func:`merge_provenance`). ``order``, the records of the plan in order (e.g. a config's points), sorts the
    merged rows as one unsharded run would have written them; rows it does not name follow in the order given.
    Returns the merged rows; a directory without ``results.csv`` is a ``FileNotFoundError``."""
    import shutil

    paths = [Path(d) for d in dirs]
    for d in paths:
        if not (d / "results.csv").is_file():
            raise FileNotFoundError(f"{d / 'results.csv'} does not exist: not a results directory of "
                                    "`modelsteal sweep`")
    out = Path(out_dir)
    (out / "points").mkdir(parents=True, exist_ok=True)
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for d in paths:
        for r in read_results(d / "results.csv"):
            merged[row_key(r)] = r
        for point in sorted((d / "points").glob("*.json")) if (d / "points").is_dir() else ():
            target = out / "points" / point.name
            if target.resolve() != point.resolve():
                shutil.copyfile(point, target)
    rows = list(merged.values())
    if order is not None:
        rank = {row_key(r): i for i, r in enumerate(order)}
        rows.sort(key=lambda r: rank.get(row_key(r), len(rank)))
    provenance = merge_provenance([read_provenance(d) for d in paths], sources=[str(d) for d in paths])
    write_results(rows, out)
    write_provenance(provenance, out)
    return rows
