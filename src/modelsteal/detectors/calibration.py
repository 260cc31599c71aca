"""Calibrating a detector on benign data for a target true-negative rate, per query or per client.

A stateless detector (MSP, ODIN, Mahalanobis, Atli et al.'s binary classifier) flags single queries, so its
threshold is the ``tnr``-quantile of its scores on benign queries (:meth:`~modelsteal.detectors.Detector.calibrate`,
the operating point of Atli et al.'s Table 4). A stateful detector (PRADA) flags *clients*: what a benign user
experiences is whether their client is ever flagged, so its setting is chosen over many benign clients' streams
(:meth:`~modelsteal.detectors.PRADA.calibrate_clients`) for a per-client false-positive rate ``1 − tnr``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modelsteal.detectors.base import Detector, check_rate


def benign_streams(x: Tensor, *, clients: int, seed: int = 0, length: int | None = None) -> list[Tensor]:
    """``clients`` benign streams: the first ``length`` (default all) of ``x`` in each stream's own random order
    (generator seeds ``seed``, ``seed + 1``, …)."""
    if clients < 1:
        raise ValueError(f"benign calibration needs at least one client, got {clients}")
    n = len(x) if length is None else min(int(length), len(x))
    return [x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + i))[:n]] for i in range(clients)]


def calibrate_on_benign(detector: Detector, x_benign: Tensor, *, tnr: float, clients: int = 20,
                        seed: int = 0, length: int | None = None) -> float:
    """Calibrate a fitted ``detector`` on the benign queries ``x_benign`` (the victim's validation split) for a
    true-negative rate ``tnr``: per query for a stateless detector (returns the threshold), per client for one
    with ``calibrate_clients`` (``clients`` streams of ``length`` queries of ``x_benign`` — default all — in
    random orders; returns its ``delta``)."""
    tnr = check_rate(tnr)
    per_client = getattr(detector, "calibrate_clients", None)
    if detector.stateful and per_client is not None:
        streams = benign_streams(x_benign, clients=clients, seed=seed, length=length)
        return float(per_client(streams, tnr=tnr))
    return float(detector.calibrate(x_benign, tnr=tnr))
