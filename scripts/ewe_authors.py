"""EWE transfer, pinned down (issue 27, item 3): the authors' setting (``--recipe-option preset=authors``) with
SNNL factor 32 and 0 beside our default recipe and a clean model, at several seeds.

Per seed and variant: the victim (the ``cnn`` builder, the nearest to the authors' 2-conv CNN), its test accuracy
and watermark success rate; an in-distribution argmax clone as in the authors' ``train.py`` (lines 232–268: the
victim's argmax labels on its own training inputs, a fresh model of the same architecture trained as long) and
its watermark success rate; a clean model (no watermark) trained like the victim, on the same triggers. Writes
``<out>.csv`` and prints the means table::

    OMP_NUM_THREADS=1 python scripts/ewe_authors.py --dataset mnist --seeds 0 1 2 \
        --out results/ownership/ewe-authors-mnist
    OMP_NUM_THREADS=1 python scripts/ewe_authors.py --dataset fashion-mnist --train-size 7200 --seeds 0 1 2 \
        --epochs 4 --warmup 2 --variants authors-32 authors-0 --out results/ownership/ewe-authors-fashion-mnist
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from modelsteal.data import load_dataset
from modelsteal.models import build_model
from modelsteal.training import TrainConfig, accuracy, make_recipe, predict_logits, train, watermark_rate


def variants(dataset: str, *, epochs: int, warmup: int) -> dict[str, tuple[dict, TrainConfig]]:
    """name -> (recipe options, training config); the authors' Adam 1e-3 / batch 512 for their preset."""
    adam = TrainConfig(epochs=epochs, lr=1e-3, optimizer="adam", batch_size=512)
    sgd = TrainConfig(epochs=epochs, lr=0.05, momentum=0.9)
    fashion = {"source_class": 8, "target_class": 0, "trigger_dataset": "mnist"} if dataset == "fashion-mnist" else {}
    return {
        "authors, SNNL 32": ({"preset": "authors", "warmup_epochs": warmup, **fashion}, adam),
        "authors, SNNL 0": ({"preset": "authors", "warmup_epochs": warmup, "snnl_weight": 0.0, **fashion}, adam),
        "ours (default, SNNL 8)": ({}, sgd),
    }


def clone_argmax(victim: nn.Module, data, *, arch: str, config: TrainConfig, seed: int) -> nn.Module:  # noqa: ANN001
    """The authors' extraction: argmax labels of the victim on its training inputs, a fresh model trained on them."""
    labels = predict_logits(victim, data.x_train).argmax(1).cpu()
    clone = build_model(arch, input_shape=data.input_shape, num_classes=data.num_classes, mean=data.mean,
                        std=data.std, seed=100 + seed)
    train(clone, data.x_train, labels, config=config, generator=torch.Generator().manual_seed(100 + seed))
    return clone.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--arch", default="cnn")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=20, help="the authors' 10 plain + 10 watermark epochs")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--variants", nargs="+", default=None, help="a subset of: authors-32, authors-0, ours")
    p.add_argument("--train-size", type=int, default=None,
                   help="train on the first N training images only (CPU scale; default: the whole split)")
    p.add_argument("--out", type=Path, default=Path("results/ownership/ewe-authors-mnist"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_dataset(args.dataset, seed=0)
    if args.train_size is not None:
        data = replace(data, x_train=data.x_train[: args.train_size], y_train=data.y_train[: args.train_size])
    rows = []
    for seed in args.seeds:
        clean = None
        chosen = variants(args.dataset, epochs=args.epochs, warmup=args.warmup)
        keys = dict(zip(("authors-32", "authors-0", "ours"), chosen, strict=True))
        if args.variants:
            chosen = {keys[k]: chosen[keys[k]] for k in args.variants}
        for name, (opts, cfg) in chosen.items():
            recipe = make_recipe("ewe", **opts)
            model = build_model(args.arch, input_shape=data.input_shape, num_classes=data.num_classes,
                                mean=data.mean, std=data.std, seed=seed)
            victim, hist = recipe.fit(model, data, config=cfg, generator=torch.Generator().manual_seed(seed),
                                      device="cpu")
            victim.eval()
            wm = hist.info["watermark"]
            clone = clone_argmax(victim, data, arch=args.arch, config=cfg, seed=seed)
            if clean is None or name.startswith("ours"):
                clean = build_model(args.arch, input_shape=data.input_shape, num_classes=data.num_classes,
                                    mean=data.mean, std=data.std, seed=200 + seed)
                train(clean, data.x_train, data.y_train, config=cfg, generator=torch.Generator().manual_seed(seed))
                clean.eval()
            row = {"dataset": args.dataset, "seed": seed, "variant": name,
                   "victim_acc": accuracy(victim, data.x_test, data.y_test),
                   "victim_wm": wm["victim_rate"], "clone_acc": accuracy(clone, data.x_test, data.y_test),
                   "clone_wm": watermark_rate(clone, wm["triggers"], wm["target_class"]),
                   "clean_acc": accuracy(clean, data.x_test, data.y_test),
                   "clean_wm": watermark_rate(clean, wm["triggers"], wm["target_class"]),
                   "warmup_wm": wm["null_rate_estimate"], "temperatures": ";".join(f"{t:.4g}" for t in
                                                                                   wm["temperatures"]),
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{args.out}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print("| variant | victim acc | victim wm | clone acc | clone wm | clean acc | clean wm |")
    print("|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["variant"] for r in rows):
        sel = [r for r in rows if r["variant"] == name]

        def m(k: str, sel: list = sel) -> str:
            vals = [r[k] for r in sel]
            return f"{sum(vals) / len(vals):.3f} ({min(vals):.2f}-{max(vals):.2f})"

        print(f"| {name} | {m('victim_acc')} | {m('victim_wm')} | {m('clone_acc')} | {m('clone_wm')} | "
              f"{m('clean_acc')} | {m('clean_wm')} |")
    print(f"total {time.perf_counter() - t0:.0f}s; wrote {args.out}.csv")


if __name__ == "__main__":
    main()
