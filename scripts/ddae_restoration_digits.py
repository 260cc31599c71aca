"""D-DAE restoration on the digits MLP: held-out L1 distance to the clean answers before and after restoring,
per suspected defense (docs/adaptive-attacks.md). Run: PYTHONPATH=src python scripts/ddae_restoration_digits.py"""

import torch

from modelsteal import PredictionAPI
from modelsteal.attacks.adaptive import DDAE
from modelsteal.blackbox import QueryBudget
from modelsteal.data import load_dataset
from modelsteal.models import build_model
from modelsteal.training import TrainConfig, train

SUSPECTS = [
    {"name": "mad", "strength": 0.9, "options": {"norm": "l1"}},
    {"name": "mad-argmax", "strength": 0.9, "options": {"norm": "l1"}},
    {"name": "am", "strength": 0.95, "options": {"train": {"epochs": 5}}},
    {"name": "reverse-sigmoid", "strength": 0.2, "options": {"gamma": 0.4}},
    {"name": "random-noise", "strength": 1.0},
    {"name": "rounding", "strength": 1},
    {"name": "label-only"},
]


def main() -> None:
    d = load_dataset("digits")
    victim = build_model("mlp", input_shape=d.input_shape, num_classes=10, mean=d.mean, std=d.std, seed=0)
    train(victim, d.x_train, d.y_train, config=TrainConfig(epochs=8, lr=0.05, momentum=0.9),
          generator=torch.Generator().manual_seed(0))
    attack = DDAE(transfer_set=d.x_train, transfer_labels=d.y_train, defense=SUSPECTS, shadow_models=2,
                  shadow_inputs=600, restorer_epochs=30, clone="mlp",
                  train=TrainConfig(epochs=6, lr=0.05, momentum=0.9), device="cpu")
    rest = attack.learn(QueryBudget(PredictionAPI(victim.eval()), budget=1), torch.Generator().manual_seed(0))
    for name, v in rest.heldout.items():
        kept = "restorer kept" if name in rest.restorers else "restorer dropped"
        print(f"{name:16s} defended L1 {v['defended']:.3f}  restored L1 {v['restored']:.3f}  ({kept})")


if __name__ == "__main__":
    main()
