"""``modelsteal audit --target MODEL|URL --pool SOURCE… --out DIR``: how stealable is this API, which defense."""

from __future__ import annotations

import argparse
from pathlib import Path

from modelsteal.cli._common import add_device
from modelsteal.experiment.executors import BACKENDS


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "audit",
        help="how many queries (and how much money) it takes to clone a model, and which defense to deploy",
        description="Run the attack battery at a geometric ladder of budgets against a model file or a "
        "prediction API, compare defenses for a local model, and write DIR/report.html (one self-contained "
        "page), report.json and CSVs. Points are cached in DIR/points: an interrupted audit resumes. "
        "See docs/audit.md.",
    )
    p.add_argument("--target", required=True, help="a modelsteal checkpoint, or http(s)://host:port of a server")
    p.add_argument("--key", default=None, help="API key for an HTTP target")
    p.add_argument("--pool", nargs="+", required=True, metavar="SOURCE",
                   help="the attacker's data: sample-patches, a dataset NAME[:SPLIT], image-folder:PATH; several "
                        "are joined")
    p.add_argument("--test", default=None, metavar="SOURCE",
                   help="the owner's labelled data (a dataset NAME[:SPLIT], test split by default, or "
                        "image-folder:PATH); without it clones are measured by agreement on held-out pool inputs")
    p.add_argument("--budget", type=int, default=10_000, help="the ladder's top rung, in queries (default 10,000)")
    p.add_argument("--price-per-query", type=float, default=None, metavar="P",
                   help="what one query costs the attacker (money to reach 90%% / 95%% is reported)")
    p.add_argument("--defenses", nargs="*", default=None, metavar="NAME[:S1,S2]",
                   help="defenses to compare for a local model (default: mad reverse-sigmoid, 3 strengths each; "
                        "none given: no comparison)")
    p.add_argument("--attacks", nargs="+", default=None, metavar="LABEL",
                   help="attackers of the battery to run (default: the default battery that applies; all: the adaptive "
                        "attackers too)")
    p.add_argument("--defense-attacks", nargs="+", default=None, metavar="LABEL",
                   help="attackers that face every defense at the top rung (default: knockoff-random "
                        "knockoff-argmax)")
    p.add_argument("--max-accuracy-lost", type=float, default=0.01, metavar="F",
                   help="the recommendation's constraint: benign accuracy lost at most F (default 0.01: one point)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device(p)
    g = p.add_argument_group("scale-out (docs/scaling.md)")
    g.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="where clones train, as in sweep; auto (default): a pool of two worker processes when the "
                        "machine has two cores or more, else serial")
    g.add_argument("--workers", type=int, default=None, help="worker processes (pool) or local Ray CPUs")
    g.add_argument("--stack-clones", type=int, default=8, metavar="N",
                   help="train up to N clones together when they share their queries (default 8)")
    return p


def run(args: argparse.Namespace) -> int:
    from modelsteal.audit.core import audit
    from modelsteal.audit.report import format_headline

    if getattr(args, "threads", None) is None:  # small clones: one thread beats two on a busy machine
        import torch

        torch.set_num_threads(1)
    report = audit(args.target, pool=args.pool, test=args.test, budget=args.budget,
                   price_per_query=args.price_per_query, defenses=args.defenses, attacks=args.attacks,
                   defense_attacks=args.defense_attacks, max_accuracy_lost=args.max_accuracy_lost, out=args.out,
                   key=args.key, backend=args.backend, workers=args.workers, stack_clones=args.stack_clones,
                   seed=args.seed, device=args.device, progress=not args.quiet)
    print(format_headline(report))
    pts = report["points"]
    print(f"\n{pts['computed']} clone(s) trained, {pts['cached']} from the cache, in "
          f"{report['timing']['total_seconds']:.0f} s; report: {Path(args.out) / 'report.html'}")
    return 0
