"""``modelsteal reproduce``: re-run committed points of a results directory and compare."""

from __future__ import annotations

import argparse

from modelsteal.cli._common import add_device


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from modelsteal.experiment.reproduce import DEFAULT_TOLERANCES

    defaults = ", ".join(f"{v:g} for {k} attacks" for k, v in DEFAULT_TOLERANCES.items())
    p = sub.add_parser(
        "reproduce",
        help="re-run committed points of a results directory from its committed victim and compare",
        description="Re-run the first N rows (or the rows named by --rows) of DIR/results.csv as one-point "
        "sweeps from the victim checkpoint the results were made with (its SHA-256 is checked against "
        "DIR/provenance.json), and print committed vs now per point, with a note where the victim's or the "
        "defender's accuracy did not come out as committed. Exit code 0 when every point is within the "
        "tolerance, 1 otherwise.",
    )
    p.add_argument("dir", help="a results directory written by `modelsteal sweep` (results.csv + provenance.json)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--points", type=int, default=1, help="how many rows to re-run, from the top (default 1)")
    which.add_argument("--rows", type=int, nargs="+", metavar="I",
                       help="re-run these rows of results.csv instead (1 = the first row under the header)")
    p.add_argument("--tolerance", type=float, default=None,
                   help=f"largest |now - committed| in accuracy that counts as reproduced (default: the "
                   f"across-kernel spread measured in docs/reproduction.md, {defaults} (JB family))")
    p.add_argument("--metric", default="attacker_accuracy", help="results.csv column to compare")
    p.add_argument("--config", default=None,
                   help="for results made before provenance was recorded: the config file they were made with")
    p.add_argument("--scale", default=None, metavar="NAME",
                   help="with --config: the scale the results were made at (a name of the config's `scales` "
                   "section, e.g. cpu; default full, the file's own settings)")
    p.add_argument("--record", action="store_true",
                   help="with --config: when every re-run point reproduces (the victim's accuracy exactly), write "
                   "DIR/provenance.json (marked reconstructed) and fill results.csv's victim_sha256")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from modelsteal.experiment.reproduce import committed_config, record_reconstructed, reproduce

    if args.record and args.config is None:
        raise ValueError("--record writes the provenance of results made before it was recorded; it needs "
                         "--config CONFIG")
    device = None if args.device == "auto" else args.device  # auto: the recorded config's device
    results = reproduce(args.dir, points=args.points, rows=args.rows, tolerance=args.tolerance,
                        metric=args.metric, device=device, config=args.config, scale=args.scale,
                        progress=not args.quiet)
    width = max(len(c.point) for c in results)
    print(f"{'point':{width}s}  committed      now     diff  within")
    for c in results:
        changed = "".join(f"  ({column} {was:.4f} committed, {now:.4f} now)"
                          for column, (was, now) in c.changed().items())
        print(f"{c.point:{width}s}  {c.committed:9.4f}  {c.now:7.4f}  {c.difference:+7.4f}  "
              f"{'yes' if c.within else 'NO '} ±{c.tolerance:g}{changed}")
    bad = sum(not c.within for c in results)
    tolerances = "/".join(f"{t:g}" for t in sorted({c.tolerance for c in results}))
    print(f"{len(results) - bad} of {len(results)} point(s) reproduced within {tolerances} ({args.metric})")
    if args.record:
        try:
            path = record_reconstructed(Path(args.dir), committed_config(Path(args.dir), config=args.config,
                                                                          scale=args.scale)[0],
                                        results, device=device)
        except ValueError as e:  # a result, not a mistake: the table above says which point
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"recorded {path} (reconstructed from {args.config}) and victim_sha256 in results.csv")
    return 1 if bad else 0
