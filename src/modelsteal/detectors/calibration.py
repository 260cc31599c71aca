"""Calibrating a detector on benign data for a target true-negative rate, per query or per client.

A stateless detector (MSP, ODIN, Mahalanobis, Atli et al.'s binary classifier) flags single queries, so its
threshold is the ``tnr``-quantile of its scores on benign queries (:meth:`~modelsteal.detectors.Detector.calibrate`,
the operating point of Atli et al.'s Table 4). A stateful detector (PRADA) flags *clients*: what a benign user
experiences is whether their client is ever flagged, so its setting is chosen over many benign clients' streams
(:meth:`~modelsteal.detectors.PRADA.calibrate_clients`) for a per-client false-positive rate ``1 − tnr``.
:meth:`~modelsteal.detectors.Detector.calibrate_benign` does whichever the detector needs; the benign client
streams it uses for PRADA are made here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def benign_streams(x: Tensor, *, clients: int, seed: int = 0, length: int | None = None) -> list[Tensor]:
    """``clients`` benign streams: the first ``length`` (default all) of ``x`` in each stream's own random order
    (generator seeds ``seed``, ``seed + 1``, …)."""
    if clients < 1:
        raise ValueError(f"benign calibration needs at least one client, got {clients}")
    n = len(x) if length is None else min(int(length), len(x))
    return [x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + i))[:n]] for i in range(clients)]

