"""``modelsteal train``: train a victim and save a self-describing checkpoint."""

from __future__ import annotations

import argparse

from modelsteal.cli._common import add_device, parse_options
from modelsteal.data import available_datasets, load_dataset
from modelsteal.devices import resolve_device
from modelsteal.experiment.victims import recipe_checkpoint_meta, train_victim
from modelsteal.models import ARCHITECTURES, save_checkpoint
from modelsteal.ownership.commitments import commitment_digest
from modelsteal.training import TrainConfig, accuracy, available_recipes, make_recipe


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
    p.add_argument("--recipe", default="plain",
                   help=f"how to train: {', '.join(available_recipes())} (default plain)")
    p.add_argument("--recipe-option", action="append", metavar="KEY=VALUE",
                   help="a recipe option, repeatable: outlier-exposure weight=0.5 outliers=kana; "
                   "dp-sgd noise_multiplier=1.0 max_grad_norm=1.0 delta=1e-5 poisson=true")
    p.add_argument("--seed", type=int, default=0, help="the model's initialisation and batch order")
    p.add_argument("--data-seed", type=int, default=None,
                   help="the seed of the train/validation/test split (default: --seed); recorded in the checkpoint")
    p.add_argument("--commit-dawn-key", default=None, metavar="KEY",
                   help="commit the checkpoint to this DAWN key (its fingerprint), the key the served API will use, "
                   "so that verify --method dawn refuses records made with another")
    p.add_argument("--data-dir", default=None, help="where the dataset's files are")
    p.add_argument("--download", action="store_true", help="download the dataset if it is not found")
    p.add_argument("--out", required=True, help="checkpoint path to write")
    add_device(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Name the flag of a nonsensical number before any data is loaded (``--epochs 0`` would save an
    untrained model)."""
    checks = [("--epochs", args.epochs, args.epochs >= 1, ">= 1 (0 would save an untrained model)"),
              ("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
              ("--lr", args.lr, args.lr > 0, "> 0"),
              ("--momentum", args.momentum, args.momentum >= 0, ">= 0"),
              ("--weight-decay", args.weight_decay, args.weight_decay >= 0, ">= 0"),
              ("--lr-step", args.lr_step, args.lr_step is None or args.lr_step >= 1, ">= 1")]
    for flag, value, ok, want in checks:
        if not ok:
            raise ValueError(f"{flag} must be {want}, got {value}")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    device = resolve_device(args.device)
    options = parse_options(args.recipe_option, flag="--recipe-option")
    recipe = make_recipe(args.recipe, **options)
    check = getattr(recipe, "check_victim_data", None)
    if check is not None:
        check(args.dataset)
    cfg = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        momentum=args.momentum,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        lr_step=args.lr_step,
        optimizer=args.optimizer,
    )
    if args.commit_dawn_key is not None and not args.commit_dawn_key:
        raise ValueError("--commit-dawn-key needs a non-empty key")
    data_seed = args.seed if args.data_seed is None else args.data_seed
    data = load_dataset(args.dataset, data_dir=args.data_dir, download=args.download, seed=data_seed)
    print(data.summary())
    model, hist = train_victim(data, arch=args.arch, config=cfg, recipe=recipe, seed=args.seed, device=device)
    commitments = training_commitments(data, hist.info.get("watermark"), dawn_key=args.commit_dawn_key)
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
        extra={**recipe_checkpoint_meta(hist, recipe), "data_seed": data_seed,  # the split: verify reloads it
               "commitments": commitments},
    )
    print(
        f"validation accuracy {100 * val_acc:.2f}% (best epoch {hist.best_epoch}), test accuracy {100 * test_acc:.2f}%"
    )
    if "dp" in hist.info:
        dp = hist.info["dp"]
        fixed = " (BatchNorm replaced by GroupNorm with Opacus' ModuleValidator)" if dp["module_fix"] else ""
        print(f"DP-SGD: ε = {dp['epsilon']:.3f} at δ = {dp['delta']:.3g} (σ = {dp['noise_multiplier']:g}, "
              f"C = {dp['max_grad_norm']:g}, {dp['steps']} steps, sample rate {dp['sample_rate']:.4g}){fixed}")
    print(f"saved {path}")
    print(f"commitment {commitment_digest(commitments)} ({', '.join(sorted(commitments))}): publish it now "
          "(verify --commitment checks a later claim against it)")
    return 0


def training_commitments(data: object, watermark: dict | None, *, dawn_key: str | None) -> dict[str, str]:
    """What the checkpoint commits to (:mod:`modelsteal.ownership.commitments`): the private training split,
    the EWE trigger set when there is one, the DAWN key when given."""
    from modelsteal.defenses.dawn import key_fingerprint
    from modelsteal.ownership.commitments import private_data_commitment, trigger_commitment

    out = {"private_data": private_data_commitment(data.x_train, data.y_train)}
    if watermark is not None:
        out["ewe_triggers"] = trigger_commitment(watermark["triggers"], watermark["target_class"])
    if dawn_key is not None:
        out["dawn_key"] = key_fingerprint(dawn_key)
    return out
