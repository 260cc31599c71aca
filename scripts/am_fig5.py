"""AM's Fig. 5: CDFs of the Hellinger distance between the true and the served answers, AM against MAD at equal
defender accuracy, on Knockoff's queries.

Kariyappa & Qureshi, *Defending Against Model Stealing Attacks with Adaptive Misinformation*, CVPR 2020,
Sec. 5.3 and Fig. 5: "comparing AM and PP for the
same defender accuracy (92%) ... the predictions of PP have lower Hellinger distance indicating a higher correlation
with the true predictions". Hellinger distance per row: ``||√y − √ỹ||₂ / √2``
(:func:`modelsteal.metrics.hellinger_distance`).

Setting: the outlier-exposure MNIST LeNet of ``configs/adaptive-misinformation/am-fig4-mnist.yaml --scale cpu``
(``--victim``); AM (Eq. 9–11,
ν = 1000) at ``--tau`` with f̂ trained ``--fhat-epochs`` epochs by Eq. 7 (:meth:`Defense.fit`, seed 0); MAD (L1, last
layer) at the ε whose defender accuracy is closest to AM's, found by bisection over ``[--eps-lo, --eps-hi]``
(defender accuracy falls as ε grows); defender accuracy is the served answers' top-1 accuracy on the victim's test
split; Knockoff's queries: ``--queries`` images of ``letters`` (all splits, seed 0), as the sweep's transfer set.
Writes ``am-fig5.csv`` (quantiles per defense) and ``am-fig5.png`` in ``--out``::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/am_fig5.py --out results/am
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from modelsteal import PredictionAPI
from modelsteal.data import load_dataset
from modelsteal.defenses import make_defense
from modelsteal.defenses.base import Defense
from modelsteal.metrics import argmax_accuracy, hellinger_distance
from modelsteal.models import load_checkpoint

VICTIM = Path("results/victims/mnist-lenet-oe-kana-outlier-exposure-88e09b06d744c50b.pt")
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def served(victim: nn.Module, defense: Defense | None, x: Tensor) -> Tensor:
    """The answers of an API serving ``victim`` behind ``defense`` (one client, batches of 256)."""
    return PredictionAPI(victim, defense=defense, batch_size=256).query(x)


def defender_accuracy(victim: nn.Module, defense: Defense | None, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy of the served answers on ``(x, y)``."""
    return argmax_accuracy(served(victim, defense, x), y)


def mad_at_accuracy(victim: nn.Module, target: float, x: Tensor, y: Tensor, *, lo: float, hi: float,
                    steps: int) -> tuple[float, float]:
    """``(ε, defender accuracy)`` of the MAD whose defender accuracy is closest to ``target`` among the bisection's
    points (accuracy falls as ε grows)."""
    best = (lo, defender_accuracy(victim, make_defense("mad", strength=lo, norm="l1"), x, y))
    for _ in range(steps):
        mid = (lo + hi) / 2
        acc = defender_accuracy(victim, make_defense("mad", strength=mid, norm="l1"), x, y)
        print(f"  MAD eps {mid:.4f}: defender accuracy {acc:.4f}", flush=True)
        if abs(acc - target) < abs(best[1] - target):
            best = (mid, acc)
        lo, hi = (mid, hi) if acc > target else (lo, mid)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--victim", type=Path, default=VICTIM)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tau", type=float, default=0.995, help="AM's threshold (0.995: 92.2%% in am-fig4-mnist-cpu)")
    p.add_argument("--fhat-epochs", type=int, default=10)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--eps-lo", type=float, default=0.9)
    p.add_argument("--eps-hi", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    if not args.victim.exists():
        p.error(f"victim {args.victim} not found (run configs/adaptive-misinformation/am-fig4-mnist.yaml "
                "--scale cpu first)")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    victim, meta = load_checkpoint(args.victim)
    victim.eval()
    data = load_dataset(meta["dataset"], seed=0)
    letters = load_dataset("letters", seed=0)
    pool = torch.cat([letters.x_train, letters.x_val, letters.x_test])
    x = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[: args.queries]]

    am = make_defense("am", strength=args.tau, nu=1000.0, train={"epochs": args.fhat_epochs})
    am.fit(victim, data, generator=torch.Generator().manual_seed(0))
    am_acc = defender_accuracy(victim, am, data.x_test, data.y_test)
    print(f"AM tau {args.tau}: defender accuracy {am_acc:.4f}", flush=True)
    eps, mad_acc = mad_at_accuracy(victim, am_acc, data.x_test, data.y_test, lo=args.eps_lo, hi=args.eps_hi,
                                   steps=args.steps)
    print(f"MAD eps {eps:.4f}: defender accuracy {mad_acc:.4f}", flush=True)

    true = served(victim, None, x)
    dists = {
        f"AM (tau {args.tau}, defender acc. {100 * am_acc:.1f}%)": hellinger_distance(true, served(victim, am, x)),
        f"MAD (eps {eps:.3f}, defender acc. {100 * mad_acc:.1f}%)":
            hellinger_distance(true, served(victim, make_defense("mad", strength=eps, norm="l1"), x)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, d in dists.items():
        v = d.numpy()
        rows.append({"defense": name, "queries": len(v), "mean": float(v.mean()),
                     **{f"q{int(100 * q)}": float(np.quantile(v, q)) for q in QUANTILES},
                     "share_above_0.5": float((v > 0.5).mean())})
    with open(args.out / "am-fig5.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot(dists, args.out / "am-fig5.png", queries=len(x))
    for r in rows:
        share = 100 * r["share_above_0.5"]
        print(f"{r['defense']:45s} mean {r['mean']:.3f}  median {r['q50']:.3f}  >0.5: {share:.1f}%")
    print(f"wrote {args.out / 'am-fig5.csv'} and am-fig5.png in {time.perf_counter() - t0:.0f}s")


def plot(dists: dict[str, Tensor], path: Path, *, queries: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, d in dists.items():
        v = np.sort(d.numpy())
        ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=name)
    ax.set_xlabel("Hellinger distance between true and served answer")
    ax.set_ylabel("CDF")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"MNIST LeNet (OE), {queries} Knockoff queries (letters)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


if __name__ == "__main__":
    main()
