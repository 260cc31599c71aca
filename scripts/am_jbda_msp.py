"""How confident the outlier-exposure MNIST victim is on JBDA's queries (issue 27, item 6): the distribution of the
victim's maximum softmax probability (MSP) on the queries of our JBDA and of the "authors' code" JBDA preset, the
statistic Adaptive Misinformation's gate thresholds (Kariyappa & Qureshi, *Defending Against Model Stealing
Attacks with Adaptive Misinformation*, CVPR 2020, Fig. 2 and Eq. 5; their Fig. 2 is on CIFAR-10).

The two attackers are the ``jbda`` and ``jbda-authors`` points of
``configs/adaptive-misinformation/am-fig4-mnist-jbda.yaml`` at ``--scale cpu`` (the same options and clone training),
against the undefended victim of that config, seed images drawn from the victim's validation split (seed 0). Writes
``<out>.csv`` (per attacker and augmentation round: n, median MSP, fractions above 0.9 / 0.95 / 0.99)::

    OMP_NUM_THREADS=1 python scripts/am_jbda_msp.py --out results/am/am-jbda-msp-mnist-oe
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import JBDA, TrainConfig
from modelsteal.data import load_dataset
from modelsteal.models import load_checkpoint

VICTIM = Path("results/victims/mnist-lenet-oe-kana-outlier-exposure-88e09b06d744c50b.pt")

#: label -> (JBDA options, clone training, budget), as the config's points
ATTACKERS: dict[str, tuple[dict[str, Any], TrainConfig, int]] = {
    "jbda (ours: lambda 0.1, clipped, 150 seeds, 6 rounds)": (
        {"seed_size": 150, "rounds": 6}, TrainConfig(epochs=10, lr=0.1, momentum=0.5, batch_size=64), 9600),
    "jbda-authors (lambda 0.2 normalised, unclipped, 128 seeds, 4 augmentations)": (
        {"seed_size": 128, "rounds": 4, "step": 0.2, "clip": None, "normalize": [[0.1307], [0.3081]]},
        TrainConfig(epochs=10, lr=0.01, momentum=0.9, batch_size=64), 9600),
}


def summary(msp: torch.Tensor, *, attacker: str, part: str) -> dict[str, Any]:
    """Median MSP and the fractions above 0.9, 0.95 (AM's tau in the config's middle point) and 0.99."""
    return {"attacker": attacker, "queries": part, "n": len(msp), "median_msp": float(msp.median()),
            **{f"frac_above_{t}": float((msp > t).float().mean()) for t in (0.9, 0.95, 0.99)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--victim", type=Path, default=VICTIM)
    p.add_argument("--out", type=Path, default=Path("results/am/am-jbda-msp-mnist-oe"))
    args = p.parse_args()
    torch.set_num_threads(1)
    victim, _ = load_checkpoint(args.victim)
    victim.eval()
    data = load_dataset("mnist", seed=0)
    rows = []
    with torch.no_grad():
        rows.append(summary(torch.softmax(victim(data.x_test), 1).amax(1), attacker="benign", part="test split"))
    for label, (options, train, budget) in ATTACKERS.items():
        t = time.perf_counter()
        seeds = data.x_val[torch.randperm(len(data.x_val), generator=torch.Generator().manual_seed(0))]
        result = JBDA(seed_set=seeds, clone="lenet", train=train, device="cpu", **options)(
            PredictionAPI(victim), budget=budget, seed=0)
        with torch.no_grad():
            msp = torch.softmax(victim(result.transfer_x), 1).amax(1)
        rows.append(summary(msp, attacker=label, part="all"))
        made_in = result.info["made_in_round"]
        for r in sorted(set(made_in.tolist())):
            rows.append(summary(msp[made_in == r], attacker=label, part=f"round {r}"))
        print(f"{label}: {len(msp)} queries, {time.perf_counter() - t:.0f}s", flush=True)
    for r in rows:
        print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{args.out}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {args.out}.csv")


if __name__ == "__main__":
    main()
