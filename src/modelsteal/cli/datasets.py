"""``modelsteal datasets``: list registered datasets and whether their files are present."""

from __future__ import annotations

import argparse

from modelsteal.data import DatasetNotFoundError, available_datasets, load_dataset


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("datasets", help="list datasets and whether they are available here")
    p.add_argument("--data-dir", default=None)
    return p


def run(args: argparse.Namespace) -> int:
    for name in available_datasets():
        try:
            print(f"{name:14s} {load_dataset(name, data_dir=args.data_dir).summary()}")
        except DatasetNotFoundError as e:
            print(f"{name:14s} not available: {e}")
    return 0
