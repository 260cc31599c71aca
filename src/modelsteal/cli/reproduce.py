"""``modelsteal reproduce``: re-run committed points of a results directory and compare."""

from __future__ import annotations

import argparse

from modelsteal.cli._common import add_device


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from modelsteal.experiment.reproduce import DEFAULT_TOLERANCE

    p = sub.add_parser(
        "reproduce",
        help="re-run committed points of a results directory from its committed victim and compare",
        description="Re-run the first N rows of DIR/results.csv as one-point sweeps from the victim checkpoint "
        "the results were made with (its SHA-256 is checked against DIR/provenance.json), and print committed "
        "vs now per point. Exit code 0 when every point is within the tolerance, 1 otherwise.",
    )
    p.add_argument("dir", help="a results directory written by `modelsteal sweep` (results.csv + provenance.json)")
    p.add_argument("--points", type=int, default=1, help="how many rows to re-run, from the top (default 1)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest |now - committed| in accuracy that counts as reproduced (default "
                   f"{DEFAULT_TOLERANCE}, provisional: see docs/reproduction.md)")
    p.add_argument("--metric", default="attacker_accuracy", help="results.csv column to compare")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> int:
    from modelsteal.experiment.reproduce import reproduce

    device = None if args.device == "auto" else args.device  # auto: the recorded config's device
    results = reproduce(args.dir, points=args.points, tolerance=args.tolerance, metric=args.metric,
                        device=device, progress=not args.quiet)
    width = max(len(c.point) for c in results)
    print(f"{'point':{width}s}  committed      now     diff  within ±{args.tolerance:g}")
    for c in results:
        print(f"{c.point:{width}s}  {c.committed:9.4f}  {c.now:7.4f}  {c.difference:+7.4f}  "
              f"{'yes' if c.within else 'NO'}")
    bad = sum(not c.within for c in results)
    print(f"{len(results) - bad} of {len(results)} point(s) reproduced within {args.tolerance:g} ({args.metric})")
    return 1 if bad else 0
