"""``modelsteal sweep CONFIG --out DIR``: defenses × strengths × attacks × budgets × seeds."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from modelsteal.cli._common import add_device
from modelsteal.determinism import enable_determinism
from modelsteal.experiment import SweepConfig, load_config, run_sweep
from modelsteal.experiment.executors import BACKENDS, make_executor
from modelsteal.experiment.plan import parse_shard, plan, shard
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
    p.add_argument("--scale", default=None, metavar="NAME",
                   help="run the config at this scale: a name of its `scales` section (e.g. cpu, the committed "
                   "CPU-scale runs); default full, the file's own settings")
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
    g = p.add_argument_group("scale-out (docs/scaling.md)")
    g.add_argument("--backend", default="serial", choices=BACKENDS,
                   help="where points run: this process (serial, default), local worker processes (pool) or Ray")
    g.add_argument("--workers", type=int, default=None,
                   help="worker processes (pool; default: all cores) or local Ray CPUs; one torch thread each")
    g.add_argument("--address", default=None,
                   help="Ray cluster to join: auto, or ray://HOST:PORT (default: start a local one)")
    g.add_argument("--gpus-per-task", type=float, default=0, help="GPUs each Ray task asks for (default 0)")
    g.add_argument("--stack-clones", type=int, default=8, metavar="N",
                   help="train up to N clones together when points share their queries (Knockoff under several "
                        "defenses); 1 trains each alone (default 8)")
    g.add_argument("--shard", default=None, metavar="I/N",
                   help="run only shard I of N of the plan (merge the shards' directories with `modelsteal results "
                        "merge`)")
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
    shard_of = parse_shard(args.shard) if args.shard is not None else None
    if args.stack_clones < 1:
        raise ValueError(f"--stack-clones must be >= 1 (1 trains every clone alone), got {args.stack_clones}")
    if args.cached_only and (args.backend != "serial" or args.workers is not None):
        raise ValueError("--cached-only computes nothing; --backend and --workers do not apply")
    executor = make_executor(args.backend, workers=args.workers, address=args.address, num_gpus=args.gpus_per_task)
    cfg = load_config(args.config, scale=args.scale)
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
        _print_detection(records)
        print(f"\n{len(records)} finished point(s) of {cfg.name} in {args.out}")
        return 0
    if cfg.deterministic:  # the config's `deterministic: true`, as `modelsteal --deterministic` (idempotent)
        enable_determinism(threads=getattr(args, "threads", None))
    mine = plan(cfg) if shard_of is None else shard(plan(cfg), *shard_of)
    cached = sum((Path(args.out) / "points" / f"{p.key}.json").exists() for p in mine)
    records = run_sweep(
        cfg,
        out_dir=args.out,
        progress=not args.quiet,
        device=None if args.device == "auto" else args.device,
        plots=not args.no_plots,
        executor=executor,
        stack_clones=args.stack_clones,
        shard_of=shard_of,
    )
    if not mine:  # more shards than groups of points: the config was checked, this machine has nothing to do
        groups = len({p.query_key for p in plan(cfg)})
        print(f"shard {args.shard} of {cfg.name} holds no point (the plan has {groups} group(s) of points sharing "
              f"their queries, dealt to {shard_of[1]} shards): no victim trained, nothing written to {args.out}")
        return 0
    print(format_table(records))
    _print_detection(records)
    out = Path(args.out)
    plots = "plots skipped" if args.no_plots else f"{len(list(out.glob('*.png')))} plot(s) in {out}"
    print(f"\n{len(mine) - cached} point(s) computed, {cached} already cached ({executor.name}); "
          f"wrote {out / 'results.csv'}; {plots}")
    return 0


def _print_detection(records: list[dict]) -> None:
    """With a detector: the detection rates (and benign false positives), as ``detection.csv`` has them."""
    from modelsteal.experiment.detection import format_detection

    table = format_detection(records)
    if table:
        print(f"\n{table}")
