"""``modelsteal ownership CONFIG``: DAWN and dataset-inference verdicts on a victim, clones stolen through its
DAWN-defended API, and independent models (:mod:`modelsteal.experiment.ownership`)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ownership",
        help="ownership experiment: verdicts of DAWN and dataset inference on stolen and independent models",
        description="Train a victim on a private part of a dataset, serve it behind DAWN, steal clones through it "
        "(one client each), train independent models, and verify every model with DAWN and dataset inference "
        "(Blind Walk, MinGD). Writes one JSON (the config's `out`) and prints the verdict tables. "
        "See docs/ownership.md; configs/ownership/*.yaml are the committed runs.",
    )
    p.add_argument("config", help="an ownership config (YAML; e.g. configs/ownership/digits.yaml)")
    p.add_argument("--out", default=None, help="the JSON to write (default: the config's `out`, else "
                   "results/ownership/<dataset>.json)")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from modelsteal.experiment.config import ConfigError
    from modelsteal.experiment.ownership import format_claims, run_ownership
    from modelsteal.experiment.ownership_config import load_ownership_config
    from modelsteal.experiment.validate import validate_ownership

    cfg = load_ownership_config(args.config)
    if getattr(args, "threads", None) is None:  # small models: one thread, as the committed runs
        torch.set_num_threads(1)
    log = (lambda _: None) if args.quiet else (lambda s: print(s, flush=True))
    try:
        validate_ownership(cfg)
        report = run_ownership(cfg, out=args.out, log=log)
    except ConfigError as e:  # a value the config or its dataset refuses, before any training
        raise ConfigError(f"{args.config}: {e}") from None
    print(format_claims(report["rows"]))
    print(f"total {report['total_seconds']:.0f}s; wrote {report['config']['out']}")
    return 0
