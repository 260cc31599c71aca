"""DAWN and dataset-inference verdicts on a digits victim, Knockoff clones of it, and independent models.

The victim (an MLP) is trained on a private part of digits' training split and served behind DAWN (rate r);
Knockoff Nets (``modelsteal.attacks.KnockoffNets``) steals it with soft and with argmax labels from a transfer
pool of the other training samples; independent models of several architectures and seeds are trained on
random halves of that pool with true labels (never on the victim's private samples, never on the victim's
answers). Each model is verified with DAWN (the attacker's recorded queries), dataset inference with Blind Walk
(labels only) and with MinGD (white-box), each over several verification seeds. Writes one JSON and prints the
tables of docs/ownership.md::

    OMP_NUM_THREADS=1 python scripts/ownership_digits.py --out results/ownership/digits.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import KnockoffNets, TrainConfig
from modelsteal.data import load_dataset
from modelsteal.defenses.dawn import DAWN
from modelsteal.models import build_model
from modelsteal.ownership.dataset_inference import DatasetInference
from modelsteal.ownership.dawn import DAWNVerifier
from modelsteal.training import accuracy, train

INDEPENDENT = [("mlp", 11), ("mlp", 12), ("lenet", 13), ("lenet", 14), ("cnn", 15)]


def fit(data, arch: str, seed: int, x, y, *, epochs: int):
    m = build_model(arch, input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std, seed=seed)
    train(m, x, y, config=TrainConfig(epochs=epochs, lr=0.05, momentum=0.9),
          generator=torch.Generator().manual_seed(seed))
    return m.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("results/ownership/digits.json"))
    p.add_argument("--private", type=int, default=500, help="victim's private training samples")
    p.add_argument("--rate", type=float, default=0.1, help="DAWN's rate r")
    p.add_argument("--budget", type=int, default=700, help="Knockoff's query budget")
    p.add_argument("--seeds", type=int, default=5, help="verification seeds per model")
    p.add_argument("--samples", type=int, default=50, help="dataset inference's m")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_dataset("digits", seed=0)
    private = replace(data, x_train=data.x_train[: args.private], y_train=data.y_train[: args.private])
    pool_x, pool_y = data.x_train[args.private:], data.y_train[args.private:]
    victim = fit(data, "mlp", 0, private.x_train, private.y_train, epochs=100)

    models = {"victim (source)": victim}
    dawn = DAWN(rate=args.rate, key="ownership-digits")
    for labels in ("soft", "argmax"):
        api = PredictionAPI(victim, defense=dawn)
        attack = KnockoffNets(transfer_set=pool_x, clone="mlp", labels=labels,
                              train=TrainConfig(epochs=60, lr=0.05, momentum=0.9))
        # one attacker client per clone, so each clone is checked against the queries it made
        models[f"knockoff {labels}"] = attack(_Client(api, f"knockoff-{labels}"), budget=args.budget, seed=1).clone
    for arch, seed in INDEPENDENT:
        idx = torch.randperm(len(pool_x), generator=torch.Generator().manual_seed(seed))[: len(pool_x) // 2]
        models[f"independent {arch} s{seed}"] = fit(data, arch, seed, pool_x[idx], pool_y[idx], epochs=100)
    print(f"trained {len(models)} models in {time.perf_counter() - t0:.0f}s; defender accuracy cost of DAWN "
          f"r={args.rate}: {_cost(victim, dawn, data):.3f}")

    verifiers = {
        "dawn": lambda client: DAWNVerifier.from_defense(dawn, clients=[client], alpha=0.01).fit(victim),
        "di-blind-walk": lambda _: DatasetInference(samples=args.samples, fit_samples=150, alpha=0.01).fit(
            victim, data=private),
        "di-mingd": lambda _: DatasetInference(embedding="mingd", samples=args.samples, fit_samples=150,
                                               mingd_steps=60, alpha=0.01).fit(victim, data=private),
    }
    rows = []
    for method, make in verifiers.items():
        shared = None if method == "dawn" else make(None)
        for name, model in models.items():
            client = "knockoff-argmax" if "argmax" in name else "knockoff-soft"
            v = make(client) if method == "dawn" else shared
            for seed in range(args.seeds):
                t = time.perf_counter()
                verdict = v.verify(model, budget=100 if method == "dawn" else 200_000, seed=seed)
                rows.append({"model": name, "method": method, "seed": seed, "p_value": verdict.p_value,
                             "queries": verdict.queries, "seconds": time.perf_counter() - t,
                             "test_accuracy": accuracy(model, data.x_test, data.y_test),
                             **{k: v_ for k, v_ in verdict.details.items() if isinstance(v_, int | float)}})
            print(_line(rows[-args.seeds:]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1))
    print(_fp_table(rows))
    print(f"total {time.perf_counter() - t0:.0f}s; wrote {args.out}")


class _Client:
    """A black box that sends every query as one client of ``api`` (DAWN records per client)."""

    def __init__(self, api: PredictionAPI, client: str) -> None:
        self.api, self.client = api, client
        self.num_classes, self.input_shape = api.num_classes, api.input_shape

    def query(self, x, *, client: str = "default"):
        return self.api.query(x, client=self.client)


def _cost(victim, dawn: DAWN, data) -> float:
    """Accuracy lost on the test split when answers go through DAWN (a fresh client, not recorded for tests)."""
    probe = DAWN(rate=dawn.rate, key=dawn.key, quantum=dawn.quantum)
    out = PredictionAPI(victim, defense=probe).query(data.x_test)
    return accuracy(victim, data.x_test, data.y_test) - float((out.argmax(1) == data.y_test).float().mean())


def _line(rows: list[dict]) -> str:
    ps = sorted(r["p_value"] for r in rows)
    med = ps[len(ps) // 2]
    q = rows[0]["queries"]
    s = sum(r["seconds"] for r in rows) / len(rows)
    return (f"{rows[0]['method']:14s} {rows[0]['model']:24s} acc {rows[0]['test_accuracy']:.3f}  median p "
            f"{med:.2g}  max p {ps[-1]:.2g}  queries {q}  {s:.2f}s")


def _fp_table(rows: list[dict]) -> str:
    out = ["method           stolen claimed (of seeds) @0.01/@0.05   independents flagged @0.01/@0.05"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        stolen = [r for r in mine if not r["model"].startswith("independent")]
        indep = [r for r in mine if r["model"].startswith("independent")]

        def frac(rs, a):
            return f"{sum(r['p_value'] < a for r in rs)}/{len(rs)}"

        out.append(f"{method:16s} {frac(stolen, 0.01):>7s} / {frac(stolen, 0.05):<7s}"
                   f"                      {frac(indep, 0.01):>7s} / {frac(indep, 0.05)}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
