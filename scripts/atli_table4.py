"""Atli et al.'s Table 4 on our LeNet victims, and AM's Fig. 2 (MSP CDFs of benign and attack queries).

Atli, Szyller, Juuti, Marchal & Asokan, *Extraction of Complex DNN Models: Real Threat or Boogeyman?*, AAAI
Workshop on Engineering Dependable and Secure Machine Learning Systems (EDSMLS) 2020, Table 4: each out-of-distribution
detector's TPR on the attacker's transfer-set queries at a threshold that keeps TNR 95% on benign data, and
the binary in/out classifier ("Ours") at its own operating point ``P(out) > 0.5``, with the other detectors at
the binary classifier's TNR; Sec. 5.4: an attacker whose queries come from the victim's own distribution is not
detectable ("TNR values in Table 4 would clearly drop to 50%").

Kariyappa & Qureshi, *Defending Against Model Stealing Attacks with Adaptive Misinformation*, CVPR 2020, Fig. 2:
CDFs of the victim's maximum softmax probability for a benign user, a KnockoffNets attacker and a JBDA attacker.

Setting (per victim; ``--dataset mnist`` uses ``results/victims/mnist-lenet.pt``, ``fashion-mnist`` uses
``results/victims/fashion-mnist-lenet-step10.pt``; data ``load_dataset(name, seed=0)``):

- detectors ``msp``, ``odin``, ``mahalanobis``, ``binary`` fitted on the victim and its training split; the
  outlier set (ODIN's (T, ε) tuning, the binary classifier's label-1 data) is ``--outliers`` images of the
  ``kana`` *training* split. No attack set below is drawn from ``kana``, so outliers and attack queries are
  disjoint by construction (different datasets);
- every detector calibrated at TNR 95% on the victim's validation split (:meth:`Detector.calibrate`);
- the victim's test split is shuffled (seed 0) and cut in two disjoint halves: the first (at most
  ``--queries`` images) is the *benign* client on which every TNR is measured, the second (at most
  ``--queries``) is the Sec. 5.4 *in-distribution attacker*. Both halves are unseen by the victim and by every
  detector's fit and calibration, so the in-distribution attacker is exactly as benign as the benign client;
- Knockoff queries: ``--queries`` images drawn (seed 0) from the test split of each of two transfer sets
  (MNIST victim: ``fashion-mnist``, ``letters``; Fashion-MNIST victim: ``mnist``, ``letters``);
- rates from :meth:`Detector.rates` (TPR on the attack set, TNR on the benign half, threshold-free AUC).

Operating points in the CSV (``operating_point``): ``tnr95-val`` (every detector, threshold for 95% TNR on the
validation split), ``own-0.5`` (binary only: its own ``P(out) > 0.5`` rule, set by ``fit``), ``at-binary-tnr``
(MSP/ODIN/Mahalanobis calibrated on the validation split at the TNR the binary classifier's own rule has on
the validation split: Table 4's "TPR (at TNR Ours)" column).

Fig. 2: MSP of the victim on the whole test split (benign), on the Knockoff queries of both transfer sets, and
on JBDA's queries (:class:`~modelsteal.attacks.JBDA` against an undefended :class:`~modelsteal.PredictionAPI`,
seed set ``--jbda-seed`` validation images, budget ``--jbda-budget``, clone ``lenet`` trained
``--jbda-epochs`` epochs per round; the queries are ``StealResult.transfer_x``), once with the library's
(Papernot et al.'s) step up the victim label's logit and once with the step away from it (``JBDA-CE``, see
``JBDA_VARIANTS``); the CSV also splits each JBDA source by augmentation round.

Outputs in ``--out``: ``atli-table4-<dataset>.csv``, ``am-fig2-<dataset>.png``, ``am-fig2-<dataset>.csv``::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/atli_table4.py --dataset mnist --out results/am
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelsteal import PredictionAPI
from modelsteal.attacks import JBDA, TrainConfig
from modelsteal.data import load_dataset
from modelsteal.data.registry import DatasetSplits
from modelsteal.detectors import Detector, make_detector
from modelsteal.models import load_checkpoint

VICTIMS = {
    "mnist": Path("results/victims/mnist-lenet.pt"),
    "fashion-mnist": Path("results/victims/fashion-mnist-lenet-step10.pt"),
}
TRANSFER = {"mnist": ("fashion-mnist", "letters"), "fashion-mnist": ("mnist", "letters")}
OUTLIERS = "kana"
DETECTORS = ("msp", "odin", "mahalanobis", "binary")


def draw(x: Tensor, n: int, *, seed: int) -> Tensor:
    """At most ``n`` rows of ``x``, drawn without replacement with a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return x[torch.randperm(len(x), generator=g)[: min(n, len(x))]].contiguous()


def test_halves(data: DatasetSplits, *, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two disjoint halves of the shuffled test split, each cut to at most ``n`` rows: (benign, attacker)."""
    perm = torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(seed))
    half = len(perm) // 2
    return data.x_test[perm[:half][:n]].contiguous(), data.x_test[perm[half:][:n]].contiguous()


def describe(det: Detector) -> str:
    """The fitted settings worth a column: ODIN's (T, ε), the binary classifier's chosen C."""
    if det.name == "odin":
        return f"T={det.temperature_:g} eps={det.epsilon_:g}"  # type: ignore[attr-defined]
    if det.name == "binary":
        c = getattr(det.estimator, "C_", None)  # type: ignore[attr-defined]
        return f"C={float(np.ravel(c)[0]):.3g}" if c is not None else ""
    return ""


def table4(victim: torch.nn.Module, data: DatasetSplits, *, dataset: str, attack_sets: dict[str, Tensor],
           benign: Tensor, outliers: Tensor, max_samples: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Atli et al.'s Table 4 rows for every detector and operating point, and the seconds each fit took."""
    rows: list[dict[str, Any]] = []
    fit_seconds: dict[str, float] = {}
    fitted: dict[str, Detector] = {}
    g = torch.Generator().manual_seed(0)

    def record(det: Detector, point: str) -> None:
        for label, x_attack in attack_sets.items():
            r = det.rates(benign, x_attack)
            rows.append({"dataset": dataset, "detector": det.name, "operating_point": point, "attack_set": label,
                         "n_benign": len(benign), "n_attack": len(x_attack), "threshold": det.threshold,
                         "target_tnr_val": det.tnr, "tpr": r["tpr"], "tnr": r["tnr"], "auc": r["auc"],
                         "settings": describe(det)})

    for name in DETECTORS:
        t0 = time.perf_counter()
        options: dict[str, Any] = {"max_samples": max_samples} if name == "binary" else {}
        det = make_detector(name, **options)
        det.fit(victim, data, outliers=outliers if name in ("odin", "binary") else None, generator=g)
        fit_seconds[name] = time.perf_counter() - t0
        fitted[name] = det
        if name == "binary":  # its own rule first: P(out) > 0.5, set by fit
            record(det, "own-0.5")
        det.calibrate(data.x_val, tnr=0.95)
        record(det, "tnr95-val")

    # Table 4's "TPR (at TNR Ours)": the others at the binary classifier's own TNR on the validation split
    binary = fitted["binary"]  # its scores do not depend on the threshold calibrate() moved
    val_scores = binary.score(data.x_val, binary.posteriors(data.x_val)).cpu()
    tnr_ours = float((val_scores <= 0.5).double().mean())
    tnr_ours = min(max(tnr_ours, 1.0 / len(data.x_val)), 1.0 - 1.0 / len(data.x_val))  # keep it in (0, 1)
    for name in ("msp", "odin", "mahalanobis"):
        fitted[name].calibrate(data.x_val, tnr=tnr_ours)
        record(fitted[name], "at-binary-tnr")
    return rows, fit_seconds


def other_mass(victim: torch.nn.Module, x: Tensor) -> np.ndarray:
    """``1 − MSP`` per row of ``x``: the victim's softmax mass off its top class, summed in float64 from the logits
    (``1 − max_i p_i`` would round to 0 for the most confident inputs)."""
    with torch.no_grad():
        p = torch.softmax(victim(x).double(), dim=1)
    return p.scatter(1, p.argmax(dim=1, keepdim=True), 0.0).sum(dim=1).numpy()


#: JBDA's step: Papernot et al.'s (up the substitute's logit of the victim's label, the library default) and the
#: step *away* from that label (``score="cross_entropy"``, τ = 5 with Python rounding, as in Orekondy et al.'s
#: code, whose other options — normalised space, in-place parents, first-rows trimming — are not used here)
JBDA_VARIANTS: dict[str, dict[str, Any]] = {
    "JBDA": {},
    "JBDA-CE": {"score": "cross_entropy", "tau": 5, "period_rounding": "round"},
}


def jbda_queries(victim: torch.nn.Module, data: DatasetSplits, *, seed_size: int, budget: int, epochs: int,
                 options: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """JBDA's queries (``StealResult.transfer_x``) against the undefended victim, and the round that made each
    (0: the seed set)."""
    seeds = draw(data.x_val, seed_size, seed=0)
    attack = JBDA(seed_set=seeds, seed_size=seed_size, clone="lenet", train=TrainConfig(epochs=epochs),
                  device="cpu", **options)
    result = attack(PredictionAPI(victim), budget=budget, seed=0)
    assert result.transfer_x is not None
    return result.transfer_x, result.info["made_in_round"]


def summarise(gap: np.ndarray, *, dataset: str, source: str) -> dict[str, Any]:
    """Median, mean and the fractions above 0.9 / 0.99 of one source's MSP values (from ``gap = 1 − MSP``)."""
    values = 1.0 - gap
    return {"dataset": dataset, "source": source, "n": len(values), "median_msp": float(np.median(values)),
            "frac_msp_above_0.9": float((values > 0.9).mean()), "frac_msp_above_0.99": float((values > 0.99).mean()),
            "mean_msp": float(values.mean())}


def fig2(sources: dict[str, np.ndarray], *, dataset: str, out: Path) -> list[dict[str, Any]]:
    """AM Fig. 2 from ``sources`` (label → ``1 − MSP`` per query): one empirical CDF of MSP per query source
    (left: MSP as in the paper; right: ``1 − MSP`` on a log axis, which separates sources that all sit near
    MSP = 1) as a PNG, and its summary rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_log) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    rows = []
    for label, gap in sources.items():
        v = np.sort(1.0 - gap)
        cdf = np.arange(1, len(v) + 1) / len(v)
        ax.step(v, cdf, where="post", label=f"{label} (n={len(v)})")
        ax_log.step(np.sort(np.clip(gap, 1e-300, None))[::-1], cdf, where="post")  # increasing MSP
        rows.append(summarise(gap, dataset=dataset, source=label))
    ax.set_xlabel("maximum softmax probability (MSP) of the victim")
    ax.set_ylabel("CDF (fraction of queries with MSP ≤ x)")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_title(f"AM Fig. 2 on the {dataset} LeNet victim")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax_log.set_xscale("log")
    ax_log.invert_xaxis()
    ax_log.set_xlabel("1 − MSP (log scale, reversed: MSP grows to the right)")
    ax_log.set_ylabel("CDF (fraction of queries with MSP ≤ 1 − x)")
    ax_log.set_ylim(0.0, 1.0)
    ax_log.set_title("the same CDFs near MSP = 1")
    ax_log.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"am-fig2-{dataset}.png", dpi=120)
    plt.close(fig)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(VICTIMS), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--queries", type=int, default=2000, help="queries per attack set (and benign rows)")
    p.add_argument("--outliers", type=int, default=5000, help="kana training images used as the outlier set")
    p.add_argument("--max-samples", type=int, default=5000, help="binary: at most this many in and out images")
    p.add_argument("--jbda-seed", type=int, default=150)
    p.add_argument("--jbda-budget", type=int, default=2400)
    p.add_argument("--jbda-epochs", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    victim, _meta = load_checkpoint(VICTIMS[args.dataset], device="cpu")
    victim.eval()
    data = load_dataset(args.dataset, seed=0)
    outliers = draw(load_dataset(OUTLIERS, seed=0).x_train, args.outliers, seed=1)
    benign, in_dist = test_halves(data, n=args.queries)
    transfer = {name: draw(load_dataset(name, seed=0).x_test, args.queries, seed=0) for name in TRANSFER[args.dataset]}
    attack_sets = {f"knockoff-{name}": x for name, x in transfer.items()}
    attack_sets["in-distribution (test half)"] = in_dist
    print(f"{data.summary()}; benign {len(benign)}, in-distribution attacker {len(in_dist)}, outliers "
          f"{len(outliers)} {OUTLIERS} train; data loaded in {time.perf_counter() - t_start:.1f} s", flush=True)

    t0 = time.perf_counter()
    rows, fit_seconds = table4(victim, data, dataset=args.dataset, attack_sets=attack_sets, benign=benign,
                               outliers=outliers, max_samples=args.max_samples)
    t_table = time.perf_counter() - t0
    write_csv(args.out / f"atli-table4-{args.dataset}.csv", rows)
    print("| detector | operating point | attack set | TPR | TNR | AUC | settings |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['detector']} | {r['operating_point']} | {r['attack_set']} | {100 * r['tpr']:.1f} | "
              f"{100 * r['tnr']:.1f} | {r['auc']:.3f} | {r['settings']} |")
    print(f"fit seconds: {', '.join(f'{k} {v:.1f}' for k, v in fit_seconds.items())}; table 4 in {t_table:.1f} s",
          flush=True)

    t0 = time.perf_counter()
    sources = {f"benign ({args.dataset} test)": other_mass(victim, data.x_test)}
    sources.update({f"Knockoff ({name})": other_mass(victim, x) for name, x in transfer.items()})
    by_round: list[tuple[str, np.ndarray, np.ndarray]] = []
    for variant, options in JBDA_VARIANTS.items():
        x_jbda, made_in = jbda_queries(victim, data, seed_size=args.jbda_seed, budget=args.jbda_budget,
                                       epochs=args.jbda_epochs, options=options)
        values = other_mass(victim, x_jbda)
        sources[f"{variant} ({args.jbda_seed} seeds, {len(x_jbda)} queries)"] = values
        by_round.append((variant, values, made_in.numpy()))
    t_jbda = time.perf_counter() - t0
    summary = fig2(sources, dataset=args.dataset, out=args.out)
    for variant, values, made_in in by_round:  # CSV only: JBDA's MSP by augmentation round
        for rho in sorted(set(made_in.tolist())):
            summary.append(summarise(values[made_in == rho], dataset=args.dataset, source=f"{variant} round {rho}"))
    write_csv(args.out / f"am-fig2-{args.dataset}.csv", summary)
    print("| source | n | median MSP | MSP > 0.9 | MSP > 0.99 |")
    print("|---|---|---|---|---|")
    for r in summary:
        print(f"| {r['source']} | {r['n']} | {r['median_msp']:.4f} | {100 * r['frac_msp_above_0.9']:.1f}% | "
              f"{100 * r['frac_msp_above_0.99']:.1f}% |")
    print(f"JBDA (both variants) and Fig. 2 in {t_jbda:.1f} s; total {time.perf_counter() - t_start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
