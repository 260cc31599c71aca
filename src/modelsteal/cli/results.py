"""``modelsteal results list|merge|export DIR...``: look at, merge and export sweep results without recomputing."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from modelsteal.experiment.results import merge_result_dirs, read_provenance, read_results


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "results",
        help="list, merge or export sweep results (no recomputation)",
        description="List results directories, merge several (e.g. the shards of `modelsteal sweep --shard I/N` "
        "run on other machines) into one, or export one as CSV or JSON.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("list", help="what each directory holds: config, rows, points, victims (distinct "
                            "SHA-256), environments")
    ls.add_argument("dirs", nargs="+", metavar="DIR")
    mg = actions.add_parser("merge", help="merge directories into --out: points, rows (plan order), provenance")
    mg.add_argument("dirs", nargs="+", metavar="DIR")
    mg.add_argument("--out", required=True, help="the merged directory (may be one of DIR)")
    mg.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ex = actions.add_parser("export", help="one directory's rows as CSV or JSON, to stdout or --out")
    ex.add_argument("dir", metavar="DIR")
    ex.add_argument("--format", choices=("csv", "json"), default="csv")
    ex.add_argument("--out", default=None, help="file to write (default: stdout)")
    return p


def _rows(d: Path) -> list[dict[str, Any]]:
    if not (d / "results.csv").is_file():
        raise FileNotFoundError(f"{d / 'results.csv'} does not exist: not a results directory of `modelsteal sweep`")
    return read_results(d / "results.csv")


def _planned(prov: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The rows' labels of every point of the recorded config, in plan order (``None`` without a config)."""
    if "config" not in prov:
        return None
    from modelsteal.experiment.config import parse_config
    from modelsteal.experiment.plan import plan

    return [p.describe() for p in plan(parse_config(prov["config"]))]


def _list(dirs: list[str]) -> int:
    for name in dirs:
        d = Path(name)
        rows, prov = _rows(d), read_provenance(d)
        planned = _planned(prov)
        points = len(list((d / "points").glob("*.json"))) if (d / "points").is_dir() else 0
        plan_txt = f" of {len(planned)} planned" if planned is not None else ""
        print(f"{d}: {prov.get('config_name', '(no config recorded)')}, {len(rows)} row(s){plan_txt}, "
              f"{points} cached point(s), {len(set(prov.get('victims', {}).values()))} victim(s), "
              f"{len(prov.get('environments', {}))} environment(s)"
              + (f", merged from {len(prov['merged_from'])}" if prov.get("merged_from") else ""))
    return 0


def _merge(args: argparse.Namespace) -> int:
    provs = [read_provenance(d) for d in args.dirs if (Path(d) / "results.csv").is_file()]
    hashes = {p.get("config_hash") for p in provs}
    order = _planned(provs[-1]) if provs and len(hashes) == 1 and len(provs) == len(args.dirs) else None
    rows = merge_result_dirs(args.dirs, out_dir=args.out, order=order)
    if not args.no_plots:
        from modelsteal.experiment.plots import plot_sweep

        plot_sweep(rows, args.out)
    note = "in plan order" if order is not None else "in the order given (the directories record different configs)"
    print(f"merged {len(args.dirs)} director(ies): {len(rows)} row(s) {note} -> {Path(args.out) / 'results.csv'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    rows = _rows(Path(args.dir))
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        if args.format == "json":
            json.dump(rows, out, indent=1)
            out.write("\n")
        else:
            columns = list(dict.fromkeys(k for r in rows for k in r))
            w = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
            w.writeheader()
            w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in columns} for r in rows)
    finally:
        if args.out:
            out.close()
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args.dirs)
    if args.action == "merge":
        return _merge(args)
    return _export(args)
