"""False "stolen" verdicts on independent models, for DAWN, EWE and dataset inference, with each verifier's old null
and with the null estimated from independent reference models (issue 27, item 1).

The victim is trained on a private part of the training split. The owner trains ``--references`` reference models
(several architectures and seeds, true labels, on random halves of the non-private pool) and calibrates each
verifier on them (:mod:`modelsteal.ownership.null`: a Clopper-Pearson upper bound on the largest reference count
for EWE and DAWN, the largest reference mean difference for dataset inference). ``--independents`` other models
(other seeds, the same architectures, other random halves of the pool) play the innocent suspects: each is
verified once (verification seed 0), so the false-claim count is over independent models. Clones stolen through
the victim's DAWN-defended API (Knockoff soft and argmax, Knockoff through MAD then DAWN, JBDA from
``seed_images`` validation images; one attacker client each) and the same four clones of the EWE victim give the
claim rate (dataset inference's public samples leave JBDA's seed images out)::

    OMP_NUM_THREADS=1 python scripts/ownership_null.py --dataset digits --out results/ownership/null-digits.json

Prints, per method and null, the false claims at ``--alpha`` with the exact (Clopper-Pearson) 95% interval and the
binomial probability of at least that many under a test of level alpha, and the claims over clones.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal import PredictionAPI
from modelsteal.attacks import JBDA, KnockoffNets, TrainConfig
from modelsteal.data import load_dataset
from modelsteal.defenses import make_defense
from modelsteal.defenses.compose import Chain
from modelsteal.defenses.dawn import DAWN
from modelsteal.models import build_model
from modelsteal.ownership.dataset_inference import DatasetInference
from modelsteal.ownership.dawn import DAWNVerifier
from modelsteal.ownership.null import clopper_pearson_interval
from modelsteal.ownership.references import REFERENCE_ARCHS
from modelsteal.ownership.watermark import EWEVerifier
from modelsteal.training import accuracy, make_recipe, train

PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"arch": "mlp", "private": 500, "victim_epochs": 100, "epochs": 60, "budget": 700, "shuffle": False,
               "ewe_epochs": 10, "samples": 50, "fit_samples": 150, "jb_budget": 700, "seed_images": 100,
               "mad_epsilon": 0.5},
    "mnist": {"arch": "lenet", "private": 3000, "victim_epochs": 30, "epochs": 15, "budget": 3000, "shuffle": True,
              "ewe_epochs": 10, "samples": 50, "fit_samples": 150, "jb_budget": 2400, "seed_images": 150,
              "mad_epsilon": 0.5},
}
CLONES = ("knockoff-soft", "knockoff-argmax", "knockoff-mad", "jbda")


def fit(data, arch: str, seed: int, x: Tensor, y: Tensor, *, epochs: int) -> nn.Module:  # noqa: ANN001
    m = build_model(arch, input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std, seed=seed)
    train(m, x, y, config=TrainConfig(epochs=epochs, lr=0.05, momentum=0.9),
          generator=torch.Generator().manual_seed(seed))
    return m.eval()


class _Client:
    """All queries as one client of ``api`` (DAWN records per client)."""

    def __init__(self, api: PredictionAPI, client: str) -> None:
        self.api, self.client = api, client
        self.num_classes, self.input_shape = api.num_classes, api.input_shape

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        return self.api.query(x, client=self.client)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(PRESETS), default="digits")
    p.add_argument("--references", type=int, default=6)
    p.add_argument("--independents", type=int, default=24)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--skip", default="", help="comma-separated methods to skip (dawn, ewe, di)")
    p.add_argument("--epochs", type=int, help="epochs of each reference, independent and clone (default: preset)")
    args = p.parse_args()
    cfg = dict(PRESETS[args.dataset])
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    skip = set(filter(None, args.skip.split(",")))
    out = args.out or Path(f"results/ownership/null-{args.dataset}.json")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_dataset(args.dataset, seed=0)
    if cfg["shuffle"]:
        perm = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))
        data = replace(data, x_train=data.x_train[perm], y_train=data.y_train[perm])
    n_priv = cfg["private"]
    private = replace(data, x_train=data.x_train[:n_priv], y_train=data.y_train[:n_priv])
    pool_x, pool_y = data.x_train[n_priv:], data.y_train[n_priv:]
    seeds_x = data.x_val[: cfg["seed_images"]]
    # dataset inference's public samples (validation + test) leave out the images JBDA's attacker started from
    di_data = replace(private, x_val=data.x_val[cfg["seed_images"]:], y_val=data.y_val[cfg["seed_images"]:])

    def half(seed: int) -> Tensor:
        return torch.randperm(len(pool_x), generator=torch.Generator().manual_seed(seed))[: len(pool_x) // 2]

    def family(count: int, first_seed: int) -> dict[str, nn.Module]:
        models = {}
        for i in range(count):
            arch, seed = REFERENCE_ARCHS[i % len(REFERENCE_ARCHS)], first_seed + i
            idx = half(seed)
            models[f"{arch} s{seed}"] = fit(data, arch, seed, pool_x[idx], pool_y[idx], epochs=cfg["epochs"])
        return models

    refs = family(args.references, 1000)
    indeps = family(args.independents, 2000)
    print(f"trained {len(refs)} references and {len(indeps)} independents, {time.perf_counter() - t0:.0f}s",
          flush=True)
    acc = {k: accuracy(m, data.x_test, data.y_test) for k, m in {**refs, **indeps}.items()}
    victim = fit(data, cfg["arch"], 0, private.x_train, private.y_train, epochs=cfg["victim_epochs"])
    acc["victim"] = accuracy(victim, data.x_test, data.y_test)
    clone_cfg = TrainConfig(epochs=cfg["epochs"], lr=0.05, momentum=0.9)

    def steal(model: nn.Module, dawn: DAWN | None) -> dict[str, nn.Module]:
        """The four clones of ``model``, each through its own client of an API defended by ``dawn`` (if any)."""
        out = {}
        for name in CLONES:
            defense = dawn
            if name == "knockoff-mad":
                mad = make_defense("mad", strength=cfg["mad_epsilon"], norm="l1")
                defense = mad if dawn is None else Chain(mad, dawn)
            api = PredictionAPI(model, defense=defense)
            if name == "jbda":
                attack, budget = JBDA(seed_set=seeds_x, seed_size=None, clone=cfg["arch"], train=clone_cfg), \
                    cfg["jb_budget"]
            else:
                attack, budget = KnockoffNets(transfer_set=pool_x, clone=cfg["arch"], train=clone_cfg,
                                              labels="argmax" if name == "knockoff-argmax" else "soft"), cfg["budget"]
            out[name] = attack(_Client(api, name), budget=budget, seed=1).clone.eval()
            print(f"  stole {name} ({time.perf_counter() - t0:.0f}s)", flush=True)
        return out
    rows: list[dict[str, Any]] = []

    def record(method: str, null: str, group: str, name: str, verdict: Any) -> None:  # noqa: ANN401
        rows.append({"method": method, "null": null, "group": group, "model": name, "p_value": verdict.p_value,
                     "stolen": verdict.stolen, "test_accuracy": acc.get(name),
                     **{k: v for k, v in verdict.details.items() if isinstance(v, int | float)}})

    if "dawn" not in skip or "di" not in skip:
        dawn = DAWN(rate=0.1, key=f"null-{args.dataset}")
        clones = steal(victim, dawn)
        for k, m in clones.items():
            acc[k] = accuracy(m, data.x_test, data.y_test)
        print(f"victim {acc['victim']:.3f}, clones stolen, {time.perf_counter() - t0:.0f}s", flush=True)
    if "dawn" not in skip:
        for null in ("analytic", "references"):
            for clone_name in CLONES:
                v = DAWNVerifier.from_defense(dawn, clients=[clone_name], alpha=args.alpha).fit(victim)
                if null == "references":
                    v.calibrate(list(refs.values()))
                record("dawn", null, "clone", clone_name, v.verify(clones[clone_name], budget=100, seed=0))
                if clone_name == "knockoff-soft":
                    for name, m in indeps.items():
                        record("dawn", null, "independent", name, v.verify(m, budget=100, seed=0))
        print(f"dawn done, {time.perf_counter() - t0:.0f}s", flush=True)
    if "di" not in skip:
        di = DatasetInference(samples=cfg["samples"], fit_samples=cfg["fit_samples"], alpha=args.alpha)
        di.fit(victim, data=di_data)
        for null in ("paper (delta0 = 0)", "references"):
            if null == "references":
                di.calibrate(list(refs.values()), seeds=(0,))
            for name, m in {"victim": victim, **clones}.items():
                record("di", null, "clone" if name != "victim" else "victim", name, di.verify(m, budget=10**6))
            for name, m in indeps.items():
                record("di", null, "independent", name, di.verify(m, budget=10**6))
            print(f"di {null} done, {time.perf_counter() - t0:.0f}s", flush=True)
    if "ewe" not in skip:
        ewe_victim, _ = make_recipe("ewe").fit(
            build_model(cfg["arch"], input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std,
                        seed=0),
            private, config=TrainConfig(epochs=cfg["ewe_epochs"], lr=0.05, momentum=0.9),
            generator=torch.Generator().manual_seed(0), device="cpu")
        ewe_victim.eval()
        acc["ewe victim"] = accuracy(ewe_victim, data.x_test, data.y_test)
        eclones = {f"ewe {k}": m for k, m in steal(ewe_victim, None).items()}
        for k, m in eclones.items():
            acc[k] = accuracy(m, data.x_test, data.y_test)
        for null in ("recorded (warm-up, floor 1/K)", "references"):
            v = EWEVerifier(alpha=args.alpha).fit(ewe_victim)
            if null == "references":
                v.calibrate(list(refs.values()))
            for name, m in {"ewe victim": ewe_victim, **eclones}.items():
                record("ewe", null, "clone" if name != "ewe victim" else "victim", name, v.verify(m, budget=100))
            for name, m in indeps.items():
                record("ewe", null, "independent", name, v.verify(m, budget=100))
        print(f"ewe done, {time.perf_counter() - t0:.0f}s", flush=True)
    summary = summarise(rows, alpha=args.alpha)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "preset": cfg,
                               "accuracy": acc, "summary": summary, "rows": rows,
                               "seconds": time.perf_counter() - t0}, indent=1))
    print(table(summary))
    for s in summary:
        print(s["method"], s["null"], "clone p-values:",
              ", ".join(f"{k} {v:.2g}" for k, v in s["clone_p_values"].items()))
    print(f"total {time.perf_counter() - t0:.0f}s; wrote {out}")


def summarise(rows: list[dict[str, Any]], *, alpha: float) -> list[dict[str, Any]]:
    from scipy.stats import binom

    out = []
    for method, null in dict.fromkeys((r["method"], r["null"]) for r in rows):
        mine = [r for r in rows if r["method"] == method and r["null"] == null]
        ind = [r for r in mine if r["group"] == "independent"]
        cl = [r for r in mine if r["group"] == "clone"]
        k = sum(r["stolen"] for r in ind)
        lo, hi = clopper_pearson_interval(k, len(ind))
        out.append({"method": method, "null": null, "false_claims": k, "independents": len(ind),
                    "interval95": [lo, hi], "p_at_least_k_at_alpha": float(binom.sf(k - 1, len(ind), alpha)),
                    "clones_claimed": sum(r["stolen"] for r in cl), "clones": len(cl),
                    "clone_p_values": {r["model"]: r["p_value"] for r in cl},
                    "victim_p": next((r["p_value"] for r in mine if r["group"] == "victim"), None),
                    "max_independent_rate": max((r.get("success_rate", r.get("agreement_rate", float("nan")))
                                                 for r in ind), default=None),
                    "null_value": ind[0].get("null_rate", ind[0].get("chance", ind[0].get("null_shift")))
                    if ind else None})
    return out


def table(summary: list[dict[str, Any]]) -> str:
    lines = ["| method | null | false claims / independents | 95% interval | P(>= k) at alpha | clones claimed | "
             "null value |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        lo, hi = s["interval95"]
        lines.append(f"| {s['method']} | {s['null']} | {s['false_claims']}/{s['independents']} | "
                     f"[{lo:.3f}, {hi:.3f}] | {s['p_at_least_k_at_alpha']:.3g} | {s['clones_claimed']}/{s['clones']} | "
                     f"{s['null_value']:.3g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
