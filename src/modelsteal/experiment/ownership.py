"""Ownership experiments: DAWN and dataset-inference verdicts on a victim, on clones stolen through its
DAWN-defended API, and on independent models (``modelsteal ownership CONFIG``).

The victim is trained on a private part of the dataset's training split and served behind DAWN (Szyller,
Atli, Marchal and Asokan, "DAWN: Dynamic Adversarial Watermarking of Neural Networks", ACM Multimedia 2021; rate
r). Clones are stolen through that API, one attacker client per clone (DAWN records each client's queries apart):
Knockoff Nets (Orekondy, Schiele and Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models", CVPR
2019) with soft and with argmax labels from a transfer pool of the other training samples, Knockoff through MAD
then DAWN (Orekondy, Schiele and Fritz, "Prediction Poisoning: Towards Defenses Against DNN Model Stealing
Attacks", ICLR 2020; composed by :class:`~modelsteal.defenses.compose.Chain`), JBDA (Papernot et al., "Practical
Black-Box Attacks against Machine Learning", AsiaCCS 2017) and JB-top3 (Juuti, Szyller, Marchal and Asokan,
"PRADA: Protecting Against DNN Model Stealing Attacks", EuroS&P 2019) from a seed set of validation images.
Independent models of several architectures and seeds are trained on random parts of the non-private pool with
true labels (never on the victim's private samples, never on the victim's answers). Each model is verified with
DAWN (the attacker's recorded queries) and dataset inference (Maini, Yaghini and Papernot, "Dataset Inference:
Ownership Resolution in Machine Learning", ICLR 2021) with Blind Walk (labels only) and MinGD (white-box), each
over several verification seeds. The config (:mod:`~modelsteal.experiment.ownership_config`) is checked by
:func:`~modelsteal.experiment.validate.validate_ownership` before anything is loaded or trained.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal.attacks import JBDA, JBTopK, KnockoffNets, TrainConfig
from modelsteal.blackbox import PredictionAPI
from modelsteal.data import DatasetSplits, load_dataset
from modelsteal.defenses import make_defense
from modelsteal.defenses.base import Defense
from modelsteal.defenses.compose import Chain
from modelsteal.defenses.dawn import DAWN
from modelsteal.experiment.ownership_config import OwnershipConfig
from modelsteal.experiment.validate import validate_ownership, validate_ownership_data
from modelsteal.models import build_model
from modelsteal.ownership.dataset_inference import DatasetInference
from modelsteal.ownership.dawn import DAWNVerifier
from modelsteal.training import accuracy, train

#: the dataset-inference verifiers' query budget: large enough never to bind (they stop at their samples)
DI_BUDGET = 200_000


class ClientView:
    """A black box that sends every query as one client of ``api`` (DAWN records per client), whatever client
    the caller names."""

    def __init__(self, api: PredictionAPI, client: str) -> None:
        self.api, self.client = api, client
        self.num_classes, self.input_shape = api.num_classes, api.input_shape

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        return self.api.query(x, client=self.client)


def fit_true_labels(data: DatasetSplits, arch: str, seed: int, x: Tensor, y: Tensor, *, epochs: int) -> nn.Module:
    """``arch`` trained on ``(x, y)`` with true labels (SGD lr 0.05, momentum 0.9), seeded by ``seed``."""
    m = build_model(arch, input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std, seed=seed)
    train(m, x, y, config=TrainConfig(epochs=epochs, lr=0.05, momentum=0.9),
          generator=torch.Generator().manual_seed(seed))
    return m.eval()


def ownership_data(cfg: OwnershipConfig) -> DatasetSplits:
    """The dataset (seed 0), its training and validation splits shuffled (seeds 0 and 1) when ``cfg.shuffle``."""
    data = load_dataset(cfg.dataset, seed=0)
    validate_ownership_data(cfg, data)
    if cfg.shuffle:  # class-ordered splits would give a private part (and a seed set) of a few classes
        perm = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))
        vperm = torch.randperm(len(data.x_val), generator=torch.Generator().manual_seed(1))
        data = replace(data, x_train=data.x_train[perm], y_train=data.y_train[perm],
                       x_val=data.x_val[vperm], y_val=data.y_val[vperm])
    return data


def steal_clones(cfg: OwnershipConfig, victim: nn.Module, dawn: DAWN, *, pool_x: Tensor, seeds_x: Tensor,
                 log: Callable[[str], None]) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]]]:
    """One clone per attack of ``cfg``, each stolen as its own client of the DAWN-defended API (seed 1)."""
    models: dict[str, nn.Module] = {}
    info: dict[str, dict[str, Any]] = {}
    clone_cfg = TrainConfig(epochs=cfg.clone_epochs, lr=0.05, momentum=0.9)
    for name in cfg.attacks:
        t = time.perf_counter()
        defense: Defense = dawn
        if name == "knockoff-mad":
            defense = Chain(make_defense("mad", strength=cfg.mad_epsilon, norm="l1"), dawn)
        api = PredictionAPI(victim, defense=defense)
        if name.startswith("knockoff"):
            attack = KnockoffNets(transfer_set=pool_x, clone=cfg.arch, train=clone_cfg,
                                  labels="argmax" if name == "knockoff-argmax" else "soft")
            budget = cfg.budget
        elif name == "jbda":
            attack = JBDA(seed_set=seeds_x, seed_size=None, clone=cfg.arch, train=clone_cfg)
            budget = cfg.jb_budget
        else:
            attack = JBTopK(seed_set=seeds_x, seed_size=None, k=3, clone=cfg.arch, train=clone_cfg)
            budget = cfg.jb_budget
        result = attack(ClientView(api, name), budget=budget, seed=1)
        models[name] = result.clone.eval()
        info[name] = {"train_seconds": time.perf_counter() - t, "client": name, "attack_queries": result.queries,
                      "dawn_records": len(dawn.state_dict(name)["labels"])}
        log(f"stole {name}: {result.queries} queries, {info[name]['dawn_records']} DAWN records, "
            f"{info[name]['train_seconds']:.0f}s")
    return models, info


def verify_all(cfg: OwnershipConfig, victim: nn.Module, dawn: DAWN, models: dict[str, nn.Module],
               info: dict[str, dict[str, Any]], *, di_data: DatasetSplits,
               log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every model verified by DAWN (against its own client's records; the victim and the independents against
    the first attack's), Blind Walk and MinGD dataset inference, over the verification seeds: one row each."""
    reference = cfg.attacks[0]
    verifiers: dict[str, tuple[Callable[[str], Any], int, int]] = {
        "dawn": (lambda client: DAWNVerifier.from_defense(dawn, clients=[client], alpha=0.01).fit(victim),
                 cfg.dawn_budget, cfg.seeds),
        "di-blind-walk": (lambda _: DatasetInference(samples=cfg.samples, fit_samples=cfg.fit_samples,
                                                     alpha=0.01).fit(victim, data=di_data), DI_BUDGET, cfg.seeds),
        "di-mingd": (lambda _: DatasetInference(embedding="mingd", samples=cfg.mingd_samples,
                                                fit_samples=cfg.mingd_fit_samples, mingd_steps=cfg.mingd_steps,
                                                alpha=0.01).fit(victim, data=di_data), DI_BUDGET,
                     cfg.verification_seeds_mingd),
    }
    rows: list[dict[str, Any]] = []
    fit_seconds: dict[str, float] = {}
    for method, (make, budget, n_seeds) in verifiers.items():
        t = time.perf_counter()
        shared = None if method == "dawn" else make("")
        fit_seconds[method] = time.perf_counter() - t
        for name, model in models.items():
            client = info[name]["client"] or reference
            v = make(client) if method == "dawn" else shared
            for seed in range(n_seeds):
                t = time.perf_counter()
                verdict = v.verify(model, budget=budget, seed=seed)
                rows.append({"model": name, "method": method, "seed": seed, "p_value": verdict.p_value,
                             "queries": verdict.queries, "seconds": time.perf_counter() - t,
                             "test_accuracy": info[name]["test_accuracy"],
                             **({"dawn_records_of": client} if method == "dawn" else {}),
                             **{k: x for k, x in verdict.details.items() if isinstance(x, int | float)}})
            log(format_line(rows[-n_seeds:]))
    return rows, fit_seconds


def run_ownership(cfg: OwnershipConfig, *, out: str | Path | None = None,
                  log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Run the ownership experiment of ``cfg`` and write its JSON (``out``, default ``cfg.output_path``):
    ``config``, ``models`` (test accuracy, training time, client), ``verifier_fit_seconds``, ``total_seconds``
    and ``rows`` (one per model, verifier and verification seed: the p-value and the verifier's details)."""
    validate_ownership(cfg)
    path = Path(out) if out is not None else cfg.output_path
    t0 = time.perf_counter()
    data = ownership_data(cfg)
    private = replace(data, x_train=data.x_train[: cfg.private], y_train=data.y_train[: cfg.private])
    pool_x, pool_y = data.x_train[cfg.private:], data.y_train[cfg.private:]
    seeds_x = data.x_val[: cfg.seed_images]
    uses_seeds = any(a.startswith("jb") for a in cfg.attacks)
    # dataset inference's public samples: val + test, without the attacker's seed images when an attack used them
    di_data = replace(private, x_val=data.x_val[cfg.seed_images:], y_val=data.y_val[cfg.seed_images:]) \
        if uses_seeds else private

    t = time.perf_counter()
    victim = fit_true_labels(data, cfg.arch, 0, private.x_train, private.y_train, epochs=cfg.victim_epochs)
    models: dict[str, nn.Module] = {"victim (source)": victim}
    info: dict[str, dict[str, Any]] = {"victim (source)": {"train_seconds": time.perf_counter() - t, "client": None}}
    dawn = DAWN(rate=cfg.rate, key=f"ownership-{cfg.dataset}")
    clones, clone_info = steal_clones(cfg, victim, dawn, pool_x=pool_x, seeds_x=seeds_x, log=log)
    models.update(clones)
    info.update(clone_info)
    indep_size = cfg.indep_size or len(pool_x) // 2
    for arch, seed in cfg.independents():
        t = time.perf_counter()
        idx = torch.randperm(len(pool_x), generator=torch.Generator().manual_seed(seed))[:indep_size]
        key = f"independent {arch} s{seed}"
        models[key] = fit_true_labels(data, arch, seed, pool_x[idx], pool_y[idx], epochs=cfg.indep_epochs)
        info[key] = {"train_seconds": time.perf_counter() - t, "client": None, "train_samples": indep_size}
    for name, m in models.items():
        info[name]["test_accuracy"] = accuracy(m, data.x_test, data.y_test)
    log(f"trained {len(models)} models in {time.perf_counter() - t0:.0f}s; defender accuracy cost of DAWN "
        f"r={cfg.rate}: {dawn_cost(victim, dawn, data):.3f}")
    rows, fit_seconds = verify_all(cfg, victim, dawn, models, info, di_data=di_data, log=log)
    report = {"config": {**asdict(cfg), "out": str(path)}, "models": info, "verifier_fit_seconds": fit_seconds,
              "total_seconds": time.perf_counter() - t0, "rows": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report


def dawn_cost(victim: nn.Module, dawn: DAWN, data: DatasetSplits) -> float:
    """Accuracy lost on the test split when answers go through DAWN (a fresh client, not recorded for tests)."""
    probe = DAWN(rate=dawn.rate, key=dawn.key, quantum=dawn.quantum)
    out = PredictionAPI(victim, defense=probe).query(data.x_test)
    return accuracy(victim, data.x_test, data.y_test) - float((out.argmax(1) == data.y_test).float().mean())


def format_line(rows: list[dict[str, Any]]) -> str:
    """One model's verdicts under one verifier: median and largest p-value over its seeds."""
    ps = sorted(r["p_value"] for r in rows)
    med = ps[len(ps) // 2]
    s = sum(r["seconds"] for r in rows) / len(rows)
    return (f"{rows[0]['method']:14s} {rows[0]['model']:24s} acc {rows[0]['test_accuracy']:.3f}  median p "
            f"{med:.2g}  max p {ps[-1]:.2g}  queries {rows[0]['queries']}  {s:.2f}s")


def format_claims(rows: list[dict[str, Any]]) -> str:
    """Per verifier: the stolen models' verdicts that claim them (of seeds) and the independents flagged (false
    positives), at levels 0.01 and 0.05."""
    out = ["method           stolen claimed (of seeds) @0.01/@0.05   independents flagged @0.01/@0.05"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        stolen = [r for r in mine if not r["model"].startswith("independent")]
        indep = [r for r in mine if r["model"].startswith("independent")]

        def frac(rs: list[dict[str, Any]], a: float) -> str:
            return f"{sum(r['p_value'] < a for r in rs)}/{len(rs)}"

        out.append(f"{method:16s} {frac(stolen, 0.01):>7s} / {frac(stolen, 0.05):<7s}"
                   f"                      {frac(indep, 0.01):>7s} / {frac(indep, 0.05)}")
    return "\n".join(out)
