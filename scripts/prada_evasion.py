"""PRADA against synthetic, natural and evasion attacks on the digits victim: detected or not, queries to detection,
clone accuracy, and W over queries.

The victim is the committed digits LeNet (``results/reproduce-digits/victim.pt``, 97.2% test accuracy) behind a
:class:`~modelsteal.PredictionAPI` with PRADA on (``response="none"``: flagged queries are answered normally, so
an attack runs to its budget and the first flag is where detection would have happened). Each (attack, seed)
gets a fresh PRADA. Attacks: JBDA, JB-self, JB-top3 (seed set: 100 validation digits), Knockoff (random
strategy on natural 8×8 image patches), benign clients (each the 359 test digits in its own random order, one
at a time; ``--benign-seeds`` of them, cheap since no clone is trained), and the evasion attacks of
:mod:`modelsteal.attacks.evasion` (Sybil with 100 queries per key, interleaving with the test digits as natural
queries, PRADA-aware JBDA). Queries go one row at a time (``query_batch_size=1``) and
each client's stream is replayed through a second, fresh PRADA, which gives W after every query and the exact
position of the first flag (checked against the live API's flag count).

Outputs under ``--out``: ``prada-evasion.csv`` (one row per attack and seed), ``prada-evasion-summary.csv``,
``prada-w-<attack>.png`` (W over the client's queries, every seed) and ``prada-w.png`` (all attacks); the
summary is printed as a Markdown table::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/prada_evasion.py --seeds 7 --benign-seeds 50 --out results/detection
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelsteal import PredictionAPI
from modelsteal.attacks import JBDA, JBSelf, JBTopK, KnockoffNets, TrainConfig
from modelsteal.attacks.base import Attack
from modelsteal.attacks.evasion import Interleave, PradaAwareJBDA, Sybil
from modelsteal.cli.main import OneLineParser
from modelsteal.data import load_dataset
from modelsteal.data.patches import sample_patches
from modelsteal.detectors import make_detector
from modelsteal.experiment.config import TransferConfig
from modelsteal.experiment.transfer import seed_set
from modelsteal.metrics import attacker_accuracy
from modelsteal.models.checkpoint import load_checkpoint

VICTIM = Path("results/reproduce-digits/victim.pt")
TRAIN = TrainConfig(epochs=10, lr=0.1, momentum=0.5, batch_size=64)
BASE: dict[str, Any] = {"clone": "lenet", "train": TRAIN, "query_batch_size": 1}


class Recorder:
    """Forwards queries to the API and keeps every row with its client key, in global order."""

    def __init__(self, api: PredictionAPI) -> None:
        self.api = api
        self.num_classes, self.input_shape = api.num_classes, api.input_shape
        self.rows: list[Tensor] = []
        self.clients: list[str] = []

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        out = self.api.query(x, client=client)
        self.rows.append(x.detach().cpu())
        self.clients += [client] * len(x)
        return out

    def flags(self, client: str) -> int:
        return self.api.flags(client)

    def stream(self, client: str | None = None) -> tuple[Tensor, np.ndarray]:
        """``client``'s rows (all clients' for ``None``) and their 1-based global positions."""
        x = torch.cat(self.rows)
        keep = np.array([client is None or c == client for c in self.clients])
        return x[torch.from_numpy(keep)], np.flatnonzero(keep) + 1


def attacks(seeds: Tensor, natural: Tensor, patches: Tensor) -> dict[str, Callable[[], Attack] | None]:
    """Label → attack factory (``None``: the benign client)."""
    jbda = {"seed_set": seeds, **BASE}
    return {
        "benign": None,
        "jbda": lambda: JBDA(**jbda),
        "jb-self": lambda: JBSelf(**jbda),
        "jb-top3": lambda: JBTopK(k=3, **jbda),
        "knockoff": lambda: KnockoffNets(transfer_set=patches, **BASE),
        "sybil-jbda": lambda: Sybil(attack=JBDA(**jbda), max_per_key=100),
        "sybil-jb-top3": lambda: Sybil(attack=JBTopK(k=3, **jbda), max_per_key=100),
        "interleave-jbda-0.25": lambda: Interleave(attack=JBDA(**jbda), natural=natural, fraction=0.25),
        "interleave-jbda-0.4": lambda: Interleave(attack=JBDA(**jbda), natural=natural, fraction=0.4),
        "interleave-jb-top3-0.4": lambda: Interleave(attack=JBTopK(k=3, **jbda), natural=natural, fraction=0.4),
        "prada-jbda": lambda: PradaAwareJBDA(**jbda),
    }


def w_trace(victim: torch.nn.Module, data: Any, x: Tensor, delta: float) -> tuple[np.ndarray, int | None]:
    """W after each query of the stream ``x`` (NaN while PRADA's stream is too short to test) and the 1-based
    index of its first flagged query, from a fresh PRADA."""
    det = make_detector("prada", delta=delta).fit(victim, data)
    scores = det.score(x, det.posteriors(x), client="replay").cpu().double().numpy()
    tested = np.cumsum(scores > 0) > 0
    w = np.where(tested, 1.0 - scores, np.nan)
    flagged = np.flatnonzero(scores > det.threshold)
    return w, (int(flagged[0]) + 1 if len(flagged) else None)


def run_one(label: str, factory: Callable[[], Attack] | None, *, seed: int, budget: int, delta: float,
            victim: torch.nn.Module, data: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One (attack, seed): its CSV row and the W traces of its clients (plus the union for several keys)."""
    det = make_detector("prada", delta=delta).fit(victim, data)
    api = PredictionAPI(victim, detector=det, response="none")
    rec = Recorder(api)
    t0 = time.perf_counter()
    accuracy, info = None, {}
    if factory is None:
        order = torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(seed))
        for row in data.x_test[order]:
            rec.query(row.unsqueeze(0), client="benign")
    else:
        result = factory()(rec, budget=budget, seed=seed)
        accuracy, info = attacker_accuracy(result.clone, data.x_test, data.y_test), result.info
    seconds = time.perf_counter() - t0
    clients = list(dict.fromkeys(rec.clients))
    traces, first = {}, []
    for client in clients:
        x, positions = rec.stream(client)
        w, at = w_trace(victim, data, x, delta)
        if (at is not None) != (api.flags(client) > 0):
            raise RuntimeError(f"replayed PRADA disagrees with the live API for {label} / {client}")
        traces[client] = w
        first.append(None if at is None else (at, int(positions[at - 1])))
    if len(clients) > 1:  # what one client sending all the keys' queries would have looked like
        traces["(all keys as one client)"], _ = w_trace(victim, data, rec.stream()[0], delta)
    flagged = [f for f in first if f is not None]
    finals = [w[-1] for c, w in traces.items() if c in clients and len(w) and not math.isnan(w[-1])]
    row = {
        "attack": label, "seed": seed, "queries": len(rec.clients), "keys": len(clients),
        "natural_queries": info.get("natural_queries", 0),
        "detected": bool(flagged), "flagged_keys": len(flagged),
        "queries_to_detection": min(g for _, g in flagged) if flagged else None,
        "key_queries_to_detection": min(k for k, _ in flagged) if flagged else None,
        "flags": sum(api.flags(c) for c in clients),
        "final_w": round(min(finals), 4) if finals else None,
        "min_w": round(float(np.nanmin(np.concatenate([traces[c] for c in clients]))), 4)
        if any(np.isfinite(traces[c]).any() for c in clients) else None,
        "clone_accuracy": None if accuracy is None else round(accuracy, 4),
        "seconds": round(seconds, 2),
    }
    if factory is not None and info.get("detector") and info.get("detected") != row["detected"]:
        raise RuntimeError(f"{label}: the attack's own report disagrees with the replay")
    return row, traces


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for label in dict.fromkeys(r["attack"] for r in rows):
        mine = [r for r in rows if r["attack"] == label]
        q = [r["queries_to_detection"] for r in mine if r["detected"]]
        acc = [r["clone_accuracy"] for r in mine if r["clone_accuracy"] is not None]
        finals = [r["final_w"] for r in mine if r["final_w"] is not None]
        out.append({
            "attack": label, "seeds": len(mine), "detected": sum(r["detected"] for r in mine),
            "queries": round(statistics.mean(r["queries"] for r in mine)),
            "queries_to_detection_median": statistics.median(q) if q else None,
            "queries_to_detection_min": min(q) if q else None, "queries_to_detection_max": max(q) if q else None,
            "clone_accuracy_mean": round(statistics.mean(acc), 4) if acc else None,
            "clone_accuracy_std": round(statistics.pstdev(acc), 4) if acc else None,
            "final_w_median": round(statistics.median(finals), 4) if finals else None,
        })
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = ["| attack | detected (seeds) | queries | queries to detection, median [min–max] | clone acc. (%) "
             "| final W (median) |", "|---|---|---|---|---|---|"]
    for s in summary:
        q = "–" if s["queries_to_detection_median"] is None else (
            f"{s['queries_to_detection_median']:g} [{s['queries_to_detection_min']}–{s['queries_to_detection_max']}]")
        acc = "–" if s["clone_accuracy_mean"] is None else \
            f"{100 * s['clone_accuracy_mean']:.1f} ± {100 * s['clone_accuracy_std']:.1f}"
        w = "–" if s["final_w_median"] is None else f"{s['final_w_median']:.3f}"
        lines.append(f"| {s['attack']} | {s['detected']}/{s['seeds']} | {s['queries']} | {q} | {acc} | {w} |")
    return "\n".join(lines)


def plot(traces: dict[str, list[dict[str, np.ndarray]]], delta: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(traces)
    finite = [float(np.nanmin(w)) for per_seed in traces.values() for tr in per_seed for w in tr.values()
              if np.isfinite(w).any()]
    low = max(0.5, min(finite, default=0.9) - 0.01)
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(labels) / cols), cols, figsize=(4 * cols, 3 * math.ceil(len(labels) / cols)),
                             sharey=True, squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for label, ax in zip(labels, axes.flat, strict=False):
        single, sax = plt.subplots(figsize=(5, 3.2))
        for a in (ax, sax):
            _draw(a, label, traces[label], delta)
            a.set_ylim(low, 1.002)
        sax.legend(loc="lower right", fontsize=7)
        single.tight_layout()
        single.savefig(out / f"prada-w-{label}.png", dpi=110)
        plt.close(single)
    axes.flat[0].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "prada-w.png", dpi=110)
    plt.close(fig)


def _draw(ax: Any, label: str, per_seed: list[dict[str, np.ndarray]], delta: float) -> None:
    ax.axhline(delta, color="red", lw=1, ls="--", label=f"δ = {delta}")
    for i, seed_traces in enumerate(per_seed):
        for client, w in seed_traces.items():
            union = client.startswith("(")
            if not np.isfinite(w).any():
                continue
            ax.plot(np.arange(1, len(w) + 1), w, lw=0.8, alpha=0.6, color="gray" if union else "C0",
                    ls=":" if union else "-", label=(client if union else "W of the client") if i == 0 else None)
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("client's queries", fontsize=8)
    ax.set_ylabel("Shapiro-Wilk W", fontsize=8)
    if label.startswith("sybil"):
        ax.text(0.03, 0.05, "each key ≤ 100 queries: never tested", transform=ax.transAxes, fontsize=7)


def main(argv: list[str] | None = None) -> None:
    p = OneLineParser(prog="prada_evasion.py", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds 0 … N−1 (default 10)")
    p.add_argument("--benign-seeds", type=int, default=50,
                   help="benign clients (random orders of the test split; cheap: no clone to train; default 50)")
    p.add_argument("--budget", type=int, default=800, help="queries per attack (default 800)")
    p.add_argument("--delta", type=float, default=0.95, help="PRADA's δ (default 0.95)")
    p.add_argument("--out", type=Path, default=Path("results/detection"))
    args = p.parse_args(argv)
    if args.seeds < 1 or args.benign_seeds < 1:
        p.error(f"--seeds and --benign-seeds must be >= 1, got {args.seeds} and {args.benign_seeds}")
    if args.budget < 400:
        p.error(f"--budget must be >= 400 (interleaving needs 0.4 of it natural and JBDA 100 seeds), got {args.budget}")
    if not 0 < args.delta < 1:
        p.error(f"--delta must be in (0, 1), got {args.delta}")
    if not VICTIM.exists():
        p.error(f"{VICTIM} not found: run from the repository root")
    data = load_dataset("digits")
    if 0.4 * args.budget > len(data.x_test):
        p.error(f"--budget {args.budget} needs {int(0.4 * args.budget)} natural queries; the test split has "
                f"{len(data.x_test)}: use --budget {int(len(data.x_test) / 0.4)} or less")
    victim, _ = load_checkpoint(VICTIM)
    victim.eval()
    seeds = seed_set(TransferConfig(seed_size=100), victim_data=data)
    table = attacks(seeds, data.x_test, sample_patches(8))
    args.out.mkdir(parents=True, exist_ok=True)
    rows, traces = [], {label: [] for label in table}
    for seed in range(max(args.seeds, args.benign_seeds)):
        for label, factory in table.items():
            if seed >= (args.benign_seeds if factory is None else args.seeds):
                continue
            row, tr = run_one(label, factory, seed=seed, budget=args.budget, delta=args.delta, victim=victim,
                              data=data)
            rows.append(row)
            traces[label].append(tr)
            print(",".join(str(v) for v in row.values()), flush=True)
    _write(args.out / "prada-evasion.csv", rows)
    summary = summarize(rows)
    _write(args.out / "prada-evasion-summary.csv", summary)
    plot(traces, args.delta, args.out)
    print(markdown(summary))


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
