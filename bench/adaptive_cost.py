"""Wall time per 1,000 queries of issue 25's attackers beside Knockoff's, measured in one run on the digits MLP
(CPU, one thread). Each attack spends the same budget against the same undefended victim (D-DAE suspects MAD
eps 0.9, whose shadow answers it computes itself); the clone trains for the same epochs where the attack trains
one. Prints seconds per 1,000 queries and the ratio to Knockoff's.

Run: PYTHONPATH=src OMP_NUM_THREADS=1 python bench/adaptive_cost.py [--budget 1000]
"""

from __future__ import annotations

import argparse
import time

import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import attack_class
from modelsteal.data import load_dataset
from modelsteal.models import build_model
from modelsteal.training import TrainConfig, train

ATTACKS = {
    "knockoff": {},
    "knockoff-argmax": {"labels": "argmax"},
    "smoothing": {"copies": 5, "augment": "noise", "combine": "median"},
    "semi-supervised": {"consistency": 0.5, "shift": 1},
    "d-dae": {"defense": "mad", "strength": 0.9, "defense_options": {"norm": "l1"}, "shadow_models": 2,
              "shadow_inputs": 600},
    "active-thief": {"strategy": "k-center", "rounds": 5, "round_epochs": 3},
    "dfme": {"batch_size": 64, "generator_width": 32},
    "maze": {"batch_size": 64, "directions": 4, "generator_width": 32},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = load_dataset("digits")
    victim = build_model("mlp", input_shape=d.input_shape, num_classes=10, mean=d.mean, std=d.std, seed=0)
    train(victim, d.x_train, d.y_train, config=TrainConfig(epochs=8, lr=0.05, momentum=0.9),
          generator=torch.Generator().manual_seed(0))
    api = PredictionAPI(victim.eval())
    cfg = TrainConfig(epochs=10, lr=0.05, momentum=0.9)
    pool = torch.cat([d.x_train, d.x_val])  # the attacker's pool (the test split measures nothing here)
    labels = torch.cat([d.y_train, d.y_val])
    per_k: dict[str, float] = {}
    for name, opts in ATTACKS.items():
        cls = attack_class("knockoff" if name == "knockoff-argmax" else name)
        data = {"transfer_set": pool}
        if name == "d-dae":
            data["transfer_labels"] = labels
        if name in ("dfme", "maze"):
            data = {}
        attack = cls(clone="mlp", train=cfg, device="cpu", **data, **opts)
        t0 = time.perf_counter()
        result = attack(api, budget=args.budget, seed=0)
        per_k[name] = (time.perf_counter() - t0) / (result.queries / 1000)
    base = per_k["knockoff"]
    print(f"{'attack':18s} {'s / 1,000 queries':>18s} {'x Knockoff':>11s}")
    for name, s in per_k.items():
        print(f"{name:18s} {s:18.3f} {s / base:11.2f}")


if __name__ == "__main__":
    main()
