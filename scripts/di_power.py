"""Dataset inference's power against the victim's generalisation gap (issue 27, item 2).

Victims (LeNet) are trained to convergence on private sets of decreasing size, so their gap (train − test
accuracy) ranges from large to small. For each: dataset inference (Blind Walk, labels only) is fitted on the victim
and verifies the victim itself, a Knockoff clone (soft labels, queries from the non-private pool) and an
independent model (true labels on other pool samples), at ``--seeds`` verification seeds each, with two walks: our
default (10 unit L2 directions, 30 steps of 0.1) and a longer walk (``--wide-step``, ``--wide-steps``) that tests
the *saturation* explanation — a walk that never leaves the class within its cap gives the capped distance, a
feature with no margin in it (``saturated`` is the fraction of such features). Writes a CSV (one row per model,
walk and seed) and a PNG of the median p-value (bars: min to max over seeds) against the gap::

    OMP_NUM_THREADS=1 python scripts/di_power.py --dataset fashion-mnist --out results/ownership/di-power-fashion-mnist
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import replace
from pathlib import Path

import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import KnockoffNets, TrainConfig
from modelsteal.data import load_dataset
from modelsteal.experiment.ownership import fit_true_labels as fit
from modelsteal.ownership.dataset_inference import DatasetInference
from modelsteal.training import accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--arch", default="lenet")
    p.add_argument("--sizes", type=int, nargs="+", default=[250, 1000, 4000])
    p.add_argument("--sample-epochs", type=int, default=60_000, help="epochs = max(15, this / private size)")
    p.add_argument("--pool", type=int, default=6000, help="non-private samples (Knockoff queries, independent)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--fit-samples", type=int, default=100)
    p.add_argument("--wide-step", type=float, default=0.5)
    p.add_argument("--wide-steps", type=int, default=40)
    p.add_argument("--out", type=Path, default=Path("results/ownership/di-power-fashion-mnist"))
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_dataset(args.dataset, seed=0)
    perm = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))
    data = replace(data, x_train=data.x_train[perm], y_train=data.y_train[perm])
    pool_x, pool_y = data.x_train[-args.pool:], data.y_train[-args.pool:]
    half = len(pool_x) // 2
    independent = fit(data, args.arch, 7, pool_x[half:], pool_y[half:], epochs=30)
    walks = {"default (0.1 x 30)": {}, f"wide ({args.wide_step:g} x {args.wide_steps})":
             {"step_size": args.wide_step, "steps": args.wide_steps}}
    rows = []
    for n in args.sizes:
        epochs = max(15, args.sample_epochs // n)
        private = replace(data, x_train=data.x_train[:n], y_train=data.y_train[:n])
        victim = fit(data, args.arch, 0, private.x_train, private.y_train, epochs=epochs)
        train_acc = accuracy(victim, private.x_train, private.y_train)
        test_acc = accuracy(victim, data.x_test, data.y_test)
        clone = KnockoffNets(transfer_set=pool_x[:half], clone=args.arch,
                             train=TrainConfig(epochs=30, lr=0.05, momentum=0.9))(
            PredictionAPI(victim), budget=half, seed=1).clone.eval()
        models = {"victim": victim, "knockoff clone": clone, "independent": independent}
        accs = {k: accuracy(m, data.x_test, data.y_test) for k, m in models.items()}
        print(f"private {n}, {epochs} epochs: train {train_acc:.3f} test {test_acc:.3f} gap "
              f"{train_acc - test_acc:.3f}; clone {accs['knockoff clone']:.3f}, {time.perf_counter() - t0:.0f}s",
              flush=True)
        for walk, opts in walks.items():
            di = DatasetInference(samples=args.samples, fit_samples=args.fit_samples, alpha=0.01, **opts)
            di.fit(victim, data=private)
            for name, m in models.items():
                for seed in range(args.seeds):
                    v = di.verify(m, budget=10**7, seed=seed)
                    rows.append({"private": n, "epochs": epochs, "train_acc": train_acc, "test_acc": test_acc,
                                 "gap": train_acc - test_acc, "model": name, "model_test_acc": accs[name],
                                 "walk": walk, "seed": seed, "p_value": v.p_value,
                                 "saturated": v.details["saturated"], "delta_mu": v.details["delta_mu"],
                                 "queries": v.queries})
                ps = sorted(r["p_value"] for r in rows[-args.seeds:])
                print(f"  {walk:20s} {name:15s} median p {ps[len(ps) // 2]:.3g} (min {ps[0]:.2g}, max {ps[-1]:.2g}) "
                      f"saturated {rows[-1]['saturated']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{args.out}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    plot(rows, f"{args.out}.png", title=f"dataset inference (Blind Walk) on {args.dataset} {args.arch} victims")
    print(f"total {time.perf_counter() - t0:.0f}s; wrote {args.out}.csv and .png")


def plot(rows: list[dict], path: str, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    walks = list(dict.fromkeys(r["walk"] for r in rows))
    for ax, walk in zip(axes, walks, strict=False):
        for name, colour in (("victim", "C0"), ("knockoff clone", "C1"), ("independent", "C2")):
            pts = []
            for n in dict.fromkeys(r["private"] for r in rows):
                sel = sorted(r["p_value"] for r in rows if r["walk"] == walk and r["model"] == name
                             and r["private"] == n)
                gap = next(r["gap"] for r in rows if r["private"] == n)
                pts.append((gap, sel[len(sel) // 2], sel[0], sel[-1]))
            pts.sort()
            g, med, lo, hi = zip(*pts, strict=True)
            ax.errorbar(g, med, yerr=[[m - x for m, x in zip(med, lo, strict=True)],
                                      [x - m for m, x in zip(med, hi, strict=True)]],
                        marker="o", capsize=3, color=colour, label=name)
        ax.axhline(0.01, color="k", ls="--", lw=0.8, label="alpha = 0.01")
        ax.set_yscale("log")
        ax.set_xlabel("victim's generalisation gap (train - test accuracy)")
        ax.set_title(f"walk: {walk}")
    axes[0].set_ylabel("p-value (median; bars min-max over seeds)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
