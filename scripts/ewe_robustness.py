"""EWE robustness at CPU scale (digits, MNIST or Fashion-MNIST; MLP): the watermark after Knockoff extraction (soft
and argmax labels), fine-tuning and pruning, against the task accuracy each costs; EWE (snnl_weight 8) beside the
plain watermark (snnl_weight 0, the same triggers) and independent models.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/ewe_robustness.py --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 .venv/bin/python scripts/ewe_robustness.py --dataset mnist --seeds 0 1 2

Writes results/ownership/ewe_robustness.csv (one row per seed, victim and derived model) and
results/ownership/ewe_robustness.md (means over seeds); for another dataset than digits
ewe_robustness-<dataset>.csv / .md. The verdict of each row is the ``ewe`` verifier's at
alpha 0.05 with 50 queries and the null rate recorded in the victim (its warm-up model's rate, floored at 1/K).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from torch import nn

from modelsteal import PredictionAPI
from modelsteal.attacks.knockoff import KnockoffNets
from modelsteal.data import load_dataset
from modelsteal.models import build_model
from modelsteal.ownership import make_verifier
from modelsteal.training import TrainConfig, accuracy, make_recipe, train, watermark_rate

CFG = TrainConfig(epochs=10, lr=0.05, momentum=0.9)
CLONE_CFG = TrainConfig(epochs=20, lr=0.05, momentum=0.9)
PRUNE = (0.5, 0.8, 0.9, 0.95)


def victim(data, *, seed: int, weight: float) -> nn.Module:
    model = build_model("mlp", input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std, seed=seed)
    model, _ = make_recipe("ewe", snnl_weight=weight).fit(model, data, config=CFG,
                                                          generator=torch.Generator().manual_seed(seed), device="cpu")
    return model


def independent(data, *, seed: int) -> nn.Module:
    model = build_model("mlp", input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std,
                        seed=500 + seed)
    train(model, data.x_train, data.y_train, config=CFG, val=(data.x_val, data.y_val),
          generator=torch.Generator().manual_seed(500 + seed))
    return model.eval()


def knockoff(model: nn.Module, data, *, labels: str, seed: int) -> nn.Module:
    """Knockoff (random) with the victim's own training inputs as the transfer set (a same-distribution attacker)."""
    attack = KnockoffNets(transfer_set=torch.cat([data.x_train, data.x_val]), clone="mlp", train=CLONE_CFG,
                          labels=labels)
    return attack(PredictionAPI(model), budget=len(data.x_train) + len(data.x_val), seed=seed).clone.eval()


def fine_tune(model: nn.Module, data, *, seed: int) -> nn.Module:
    """The victim fine-tuned on the validation split's true labels (the attacker's small labelled set)."""
    tuned = build_model("mlp", input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std, seed=0)
    tuned.load_state_dict(model.state_dict())
    train(tuned, data.x_val, data.y_val, config=TrainConfig(epochs=20, lr=0.01, momentum=0.9),
          generator=torch.Generator().manual_seed(seed))
    return tuned.eval()


def prune(model: nn.Module, data, *, fraction: float) -> nn.Module:
    """Global magnitude pruning of every linear layer's weights (the smallest ``fraction`` set to 0)."""
    pruned = build_model("mlp", input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std, seed=0)
    pruned.load_state_dict(model.state_dict())
    weights = [m.weight for m in pruned.modules() if isinstance(m, nn.Linear)]
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    cut = flat.kthvalue(max(1, int(fraction * len(flat)))).values
    with torch.no_grad():
        for w in weights:
            w.mul_((w.abs() > cut).float())
    return pruned.eval()


def rows_for_seed(data, seed: int) -> list[dict]:
    rows = []
    ind = independent(data, seed=seed)
    for kind, weight in (("ewe", 8.0), ("plain", 0.0)):
        t0 = time.perf_counter()
        v = victim(data, seed=seed, weight=weight)
        fit_s = time.perf_counter() - t0
        verifier = make_verifier("ewe", alpha=0.05).fit(v)
        suspects = {"victim": v, "knockoff-soft": knockoff(v, data, labels="soft", seed=seed),
                    "knockoff-argmax": knockoff(v, data, labels="argmax", seed=seed),
                    "fine-tune": fine_tune(v, data, seed=seed), "independent": ind}
        suspects.update({f"prune-{f:g}": prune(v, data, fraction=f) for f in PRUNE})
        for name, model in suspects.items():
            t0 = time.perf_counter()
            verdict = verifier.verify(model, budget=50, seed=seed)
            rows.append({"seed": seed, "watermark": kind, "model": name,
                         "wm_rate": watermark_rate(model, verifier.triggers, verifier.target_class),
                         "test_acc": accuracy(model, data.x_test, data.y_test), "p_value": verdict.p_value,
                         "stolen": verdict.stolen, "null_rate": verdict.details["null_rate"],
                         "queries_for_95": verdict.details["queries_for_95"], "verify_s": time.perf_counter() - t0,
                         "victim_fit_s": fit_s})
        print(f"seed {seed} {kind}: " + ", ".join(f"{r['model']} {r['wm_rate']:.2f}/{r['test_acc']:.3f}"
                                                  for r in rows if r["watermark"] == kind), flush=True)
    return rows


def table(rows: list[dict], *, dataset: str = "digits") -> str:
    names = list(dict.fromkeys(r["model"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Means over seeds {seeds} ({dataset}, MLP; verifier: 50 queries, alpha 0.05).", "",
             "| model | EWE wm rate | EWE test acc | EWE stolen | plain wm rate | plain test acc | plain stolen |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        cells = []
        for kind in ("ewe", "plain"):
            sel = [r for r in rows if r["model"] == name and r["watermark"] == kind]
            cells += [f"{sum(r['wm_rate'] for r in sel) / len(sel):.2f}",
                      f"{sum(r['test_acc'] for r in sel) / len(sel):.3f}",
                      f"{sum(r['stolen'] for r in sel)}/{len(sel)}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=Path("results/ownership"))
    p.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist"], default="digits")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset, seed=0)
    t0 = time.perf_counter()
    rows = [r for s in args.seeds for r in rows_for_seed(data, s)]
    stem = "ewe_robustness" if args.dataset == "digits" else f"ewe_robustness-{args.dataset}"
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (args.out / f"{stem}.md").write_text(table(rows, dataset=args.dataset))
    print(table(rows, dataset=args.dataset))
    print(f"{time.perf_counter() - t0:.0f}s; wrote {args.out / stem}.csv and .md")


if __name__ == "__main__":
    main()
