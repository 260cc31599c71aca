"""Merge the ``results.csv`` of several sweep runs of one config into one directory, with its plots.

For a config extended after it was run (e.g. the DP-SGD curve added to ``configs/pp-fig4-mnist-cpu.yaml``):
run only the new entries (``modelsteal sweep CONFIG --only dp-sgd --out NEW``), then

    python scripts/merge_results.py results/pp/pp-fig4-mnist-cpu NEW --out results/pp/pp-fig4-mnist-cpu

The same as ``modelsteal results merge DIR... --out OUT`` (which also sorts rows in plan order when every
directory recorded the same config). Rows are kept in the order given; a row of a later directory replaces an
earlier one with the same
(defense, strength, attack, budget, seed). Their ``provenance.json`` files are merged too
(``merge_provenance``: victims, environments and per-point wall times joined; the config kept only when
every directory recorded the same one, so after an ``--only`` run the merged directory names no config and
``modelsteal reproduce OUT --config CONFIG`` takes it from the file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelsteal.experiment.plots import plot_sweep
from modelsteal.experiment.results import merge_result_dirs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="directories holding results.csv")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    try:
        records = merge_result_dirs(args.dirs, out_dir=args.out)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    plot_sweep(records, args.out)
    print(f"{len(records)} rows -> {Path(args.out) / 'results.csv'} (and plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
