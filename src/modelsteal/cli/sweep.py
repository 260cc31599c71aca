"""``modelsteal sweep CONFIG --out DIR``: defenses × strengths × attacks × budgets × seeds."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from modelsteal.cli._common import add_device
from modelsteal.determinism import enable_determinism
from modelsteal.experiment import SweepConfig, load_config, run_sweep
from modelsteal.experiment.results import format_table


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sweep",
        help="run a defense/attack sweep from a YAML config",
        description="Run every point of a sweep config (cached per point in DIR/points, so reruns "
        "and interrupted runs skip finished points); write DIR/results.csv, Fig.-4-style trade-off plots "
        "and, with two budgets or more, DIR/budget-curves.png (Fig. A3).",
    )
    p.add_argument("config", help="YAML sweep config (see configs/)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--budget", type=int, nargs="+", default=None, help="override the config's budgets")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="compute nothing: write results.csv and plots from the points already finished in DIR",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the config's seeds")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME",
                   help="run only the defenses and attacks with these names or labels (others are left out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device(p)
    return p


def restrict(cfg: SweepConfig, names: list[str]) -> SweepConfig:
    """``cfg`` with only the defenses and attacks named (by name or label) in ``names``; a kind none of
    ``names`` picks is kept whole (``--only dp-sgd`` keeps every attack)."""
    wanted = set(names)
    defenses = [d for d in cfg.defenses if {d.name, d.display} & wanted]
    attacks = [a for a in cfg.attacks if {a.name, a.display} & wanted]
    if not defenses and not attacks:
        known = sorted({d.display for d in cfg.defenses} | {a.display for a in cfg.attacks})
        raise ValueError(f"--only {' '.join(names)} names no defense or attack of {cfg.name}; "
                         f"known: {', '.join(known)}")
    return replace(cfg, defenses=defenses or cfg.defenses, attacks=attacks or cfg.attacks)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.budget:
        if any(b < 1 for b in args.budget):
            raise ValueError(f"--budget must be positive, got {args.budget}")
        cfg = cfg.with_budgets(args.budget)
    if args.seeds:
        cfg = replace(cfg, seeds=list(args.seeds))
    if args.only:
        cfg = restrict(cfg, args.only)
    if args.cached_only:
        from modelsteal.experiment.sweep import collect_sweep

        records = collect_sweep(cfg, out_dir=args.out, plots=not args.no_plots)
        print(format_table(records))
        print(f"\n{len(records)} finished point(s) of {cfg.name} in {args.out}")
        return 0
    if cfg.deterministic:  # the config's `deterministic: true`, as `modelsteal --deterministic` (idempotent)
        enable_determinism(threads=getattr(args, "threads", None))
    records = run_sweep(
        cfg,
        out_dir=args.out,
        progress=not args.quiet,
        device=None if args.device == "auto" else args.device,
        plots=not args.no_plots,
    )
    print(format_table(records))
    out = Path(args.out)
    plots = "plots skipped" if args.no_plots else f"{len(list(out.glob('*.png')))} plot(s) in {out}"
    print(f"\nwrote {out / 'results.csv'}; {plots}")
    return 0
