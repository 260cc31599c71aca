"""``modelsteal train``: train a victim and save a self-describing checkpoint."""

from __future__ import annotations

import argparse

from modelsteal.attacks import TrainConfig
from modelsteal.attacks._training import accuracy
from modelsteal.cli._common import add_device
from modelsteal.data import available_datasets, load_dataset
from modelsteal.experiment.sweep import resolve_device, train_victim
from modelsteal.models import ARCHITECTURES, save_checkpoint


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a victim model and save a checkpoint",
        description="Train a victim on a registered dataset; the checkpoint records architecture, "
        "dataset and preprocessing so later commands need only its path.",
    )
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(available_datasets())}")
    p.add_argument("--arch", default="lenet", choices=sorted(ARCHITECTURES))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--lr-step", type=int, default=None, help="decay the learning rate by 10x every N epochs")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="where the dataset's files are")
    p.add_argument("--download", action="store_true", help="download the dataset if it is not found")
    p.add_argument("--out", required=True, help="checkpoint path to write")
    add_device(p)
    return p


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download, seed=args.seed)
    print(data.summary())
    cfg = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        momentum=args.momentum,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        lr_step=args.lr_step,
        optimizer=args.optimizer,
    )
    model, hist = train_victim(data, arch=args.arch, config=cfg, seed=args.seed, device=device)
    val_acc = accuracy(model, data.x_val, data.y_val, device=device)
    test_acc = accuracy(model, data.x_test, data.y_test, device=device)
    path = save_checkpoint(
        model,
        args.out,
        dataset=data.name,
        metrics={
            "val_accuracy": val_acc,
            "test_accuracy": test_acc,
            "best_epoch": hist.best_epoch,
            "epochs": args.epochs,
        },
    )
    print(
        f"validation accuracy {100 * val_acc:.2f}% (best epoch {hist.best_epoch}), test accuracy {100 * test_acc:.2f}%"
    )
    print(f"saved {path}")
    return 0
