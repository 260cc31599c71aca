"""Detection in sweeps: a detector on every point's API, benign clients as points of their own, and the
detection summary (``detection.csv``) beside ``results.csv``.

A config's ``detector`` section (:class:`~modelsteal.experiment.config.DetectorConfig`) puts one detector behind
every point's :class:`~modelsteal.PredictionAPI`: fitted on the point's victim and its data, calibrated once per
victim on the victim's validation split before any point runs
(:meth:`~modelsteal.detectors.Detector.calibrate_benign`), and fresh — no client state — at the start of
each point. Every record then says ``detected``, ``queries_to_detection`` (the position of the first flagged
query among all the point's queries, exact at any batch size: :meth:`~modelsteal.PredictionAPI.first_flag`),
``flagged_queries`` and ``flagged_clients``; a stateful detector with a ``w_trace`` (PRADA) adds the statistic
over the stream of the point's busiest client (``w_trace``, in the JSON record only) and its lowest value
``min_w``. A ``benign`` section (:class:`~modelsteal.experiment.config.BenignConfig`) adds, per defense
operating point, benign clients that draw from the victim's test split: their ``detected`` is a false
positive. :func:`summarize_detection` gives, per (defense, strength, attack, budget), the detection rate over
seeds — for ``benign``, the false-positive rate over clients.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal.blackbox import PredictionAPI
from modelsteal.data import DatasetSplits, load_dataset
from modelsteal.detectors import Detector, make_detector
from modelsteal.experiment.config import BenignConfig, DetectorConfig, point_key

#: columns of ``detection.csv``
SUMMARY_COLUMNS = ["defense", "strength", "response", "attack", "budget", "runs", "detected", "detection_rate",
                   "queries_to_detection_median", "queries_to_detection_min", "queries_to_detection_max",
                   "queries_mean", "min_w_median", "attacker_accuracy_mean", "attacker_accuracy_std"]


def split_inputs(data: DatasetSplits, split: str) -> Tensor:
    return {"train": data.x_train, "val": data.x_val, "test": data.x_test}[split]


def fit_point_detector(d: DetectorConfig, victim: nn.Module, data: DatasetSplits, *,
                       fitted: dict[str, Any] | None) -> tuple[Detector, dict[str, Any]]:
    """The detector of ``d`` fitted on ``victim`` and ``data`` and, from ``fitted`` (what an earlier call
    learned) or calibrated now, its threshold; returns it with what calibration learned (to reuse)."""
    options = dict(d.options)
    if fitted is not None and "delta" in fitted:
        options["delta"] = fitted["delta"]
    det = make_detector(d.name, **options)
    outliers = None if d.outliers is None else load_dataset(d.outliers, seed=0).x_train
    det.fit(victim, data, outliers=outliers, generator=torch.Generator().manual_seed(0))
    if fitted is not None:
        det.threshold, det.tnr = fitted["threshold"], fitted["tnr"]
    elif d.tnr is not None:
        det.calibrate_benign(data.x_val, tnr=d.tnr, clients=d.calibration_clients, length=d.calibration_queries)
    learned: dict[str, Any] = {"threshold": det.threshold, "tnr": det.tnr}
    if hasattr(det, "delta"):
        learned["delta"] = det.delta
    return det, learned


def detector_key(d: DetectorConfig, victim_identity: dict[str, Any]) -> str:
    """What the fitted, calibrated detector depends on: its config but the response, and the victim."""
    return point_key({**asdict(d), "response": None}, victim_identity)


def detection_facts(api: PredictionAPI) -> dict[str, Any]:
    """What the detector of ``api`` saw of one point's clients: ``detected``, ``queries_to_detection``,
    ``flagged_queries``, ``flagged_clients``, the threshold (and δ), and for a stateful detector with a
    ``w_trace`` the statistic over the stream of the busiest client (``w_trace``) and its lowest value."""
    det = api.detector
    if det is None:
        return {}
    facts: dict[str, Any] = {
        "detector": det.name, "detector_threshold": det.threshold,
        "detected": api.first_flag_total is not None,  # set by any flag, a refused batch's too
        "queries_to_detection": api.first_flag_total,
        "flagged_queries": api.total_flags, "flagged_clients": len(api.flagged_clients),
    }
    if hasattr(det, "delta"):
        facts["detector_delta"] = det.delta
    trace = getattr(det, "w_trace", None)
    clients = api.clients()
    if trace is not None and clients:
        busiest = max(clients, key=api.queries)
        points = trace(busiest)
        facts["w_trace"] = [[n, w] for n, w in points]
        lowest = getattr(det, "lowest_w", None)
        facts["min_w"] = lowest(busiest) if lowest is not None else min((w for _, w in points), default=None)
    return facts


def run_benign_client(api: PredictionAPI, data: DatasetSplits, benign: BenignConfig, *, seed: int) -> dict[str, Any]:
    """Benign client ``seed``: ``benign.queries`` inputs of the victim's ``benign.split`` in a random order of
    its own, ``benign.batch_size`` per request, as client ``benign``; the queries sent and the detector's facts."""
    x = split_inputs(data, benign.split)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    stream = x[order[: benign.queries or len(x)]]
    t0 = time.perf_counter()
    for xb in stream.split(benign.batch_size):
        api.query(xb, client="benign")
    return {"queries": api.queries("benign"), "budget": len(stream), "benign_split": benign.split,
            "attack_seconds": round(time.perf_counter() - t0, 2), **detection_facts(api)}


def summarize_detection(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (defense, strength, response, attack, budget) of the records with a detector: runs, how many were detected
    (for ``benign``: false positives), the rate, queries to detection (median, min, max over the detected
    runs), mean queries sent, median lowest ``W`` and the clones' accuracy (mean, std)."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("detector") is not None:
            groups[(r["defense"], r["strength"], r.get("response", "none"), r["attack"], r["budget"])].append(r)
    rows = []
    for (defense, strength, response, attack, budget), rs in groups.items():
        hit = [r["queries_to_detection"] for r in rs if r.get("detected") and r.get("queries_to_detection")]
        acc = [r["attacker_accuracy"] for r in rs if r.get("attacker_accuracy") is not None]
        lows = [r["min_w"] for r in rs if r.get("min_w") is not None]
        rows.append({
            "defense": defense, "strength": strength, "response": response, "attack": attack, "budget": budget,
            "runs": len(rs),
            "detected": sum(bool(r.get("detected")) for r in rs),
            "detection_rate": sum(bool(r.get("detected")) for r in rs) / len(rs),
            "queries_to_detection_median": statistics.median(hit) if hit else None,
            "queries_to_detection_min": min(hit, default=None), "queries_to_detection_max": max(hit, default=None),
            "queries_mean": statistics.fmean(r["queries"] for r in rs),
            "min_w_median": statistics.median(lows) if lows else None,
            "attacker_accuracy_mean": statistics.fmean(acc) if acc else None,
            "attacker_accuracy_std": statistics.pstdev(acc) if len(acc) > 1 else None,
        })
    return rows


def write_detection(records: Sequence[dict[str, Any]], out_dir: str | Path) -> Path | None:
    """``out_dir/detection.csv`` from :func:`summarize_detection` (nothing when no record has a detector)."""
    rows = summarize_detection(records)
    if not rows:
        return None
    path = Path(out_dir) / "detection.csv"
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in SUMMARY_COLUMNS})
    tmp.replace(path)
    return path


def format_detection(records: Sequence[dict[str, Any]]) -> str:
    """The detection summary as a plain-text table (empty when no record has a detector)."""
    rows = summarize_detection(records)
    if not rows:
        return ""
    lines = [f"{'defense':<14}{'response':<10}{'attack':<22}{'budget':>7}  {'detected':<24}"
             f"{'queries to detection':<24}clone acc."]
    for r in rows:
        label = r["defense"] if r["strength"] is None else f"{r['defense']}@{r['strength']}"
        acc = "" if r["attacker_accuracy_mean"] is None else f"{100 * r['attacker_accuracy_mean']:.1f}%"
        what = "false positives" if r["attack"] == "benign" else "detected"
        q = ("-" if r["queries_to_detection_median"] is None else
             f"{r['queries_to_detection_median']:g} [{r['queries_to_detection_min']}-{r['queries_to_detection_max']}]")
        found = f"{r['detected']}/{r['runs']} {what}"
        lines.append(f"{label:<14}{r['response']:<10}{r['attack']:<22}{r['budget']:>7}  {found:<24}{q:<24}{acc}")
    return "\n".join(lines)
