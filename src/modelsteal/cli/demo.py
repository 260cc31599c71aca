"""``modelsteal demo``: the main job on the embedded digits data (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from modelsteal.cli._common import add_device
from modelsteal.experiment import run_sweep
from modelsteal.experiment.config import parse_config
from modelsteal.experiment.results import format_table


def demo_config_text() -> str:
    return resources.files("modelsteal.experiment").joinpath("demo.yaml").read_text()


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="train, steal and defend a digits classifier (a few minutes on a CPU)",
        description="Train a LeNet victim on scikit-learn's bundled digits, steal it with Knockoff "
        "Nets using natural-image patches, and defend it with MAD, MAD-argmax, reverse sigmoid, "
        "random noise and label-only. Prints the table and writes results.csv and plots. Runs on one torch "
        "thread unless the global --threads option says otherwise.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--print-config", action="store_true", help="print the demo's sweep config and exit")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> int:
    import yaml

    text = demo_config_text()
    if args.print_config:
        print(text)
        return 0
    cfg = parse_config(yaml.safe_load(text))
    if getattr(args, "threads", None) is None:
        # The demo's 8x8 models gain nothing from a second thread, and two torch threads thrash badly when
        # anything else holds the cores, each point taking many times longer. `--threads N` overrides.
        import torch

        torch.set_num_threads(1)
    t0 = time.perf_counter()
    records = run_sweep(cfg, out_dir=args.out, device=None if args.device == "auto" else args.device)
    print(format_table(records))
    out = Path(args.out)
    print(
        f"\n{len(records)} points in {time.perf_counter() - t0:.0f} s; wrote {out / 'results.csv'} and "
        f"{', '.join(p.name for p in sorted(out.glob('*.png')))} in {out}"
    )
    return 0
