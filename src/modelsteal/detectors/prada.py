"""PRADA (Juuti, Szyller, Marchal & Asokan, *PRADA: Protecting against DNN Model Stealing Attacks*, EuroS&P
2019): a stateful detector that flags a *client* whose stream of queries has non-normal minimum distances.

Per client and per predicted class ``c = argmax p(x)`` it keeps a growing set ``G_c`` of earlier queries, the
distances that admitted them, and a threshold ``T_c`` (initially 0). For each new query ``x`` (flattened, any
input shape):

    if G_c is empty:   x joins G_c; no distance is recorded (a minimum over nothing is undefined)
    else:              d = min_{y ∈ G_c} ‖x − y‖₂;  D ← D ∪ {d}
                       if d > T_c:  G_c ← G_c ∪ {x};  A_c ← A_c ∪ {d};  T_c ← max(T_c, mean(A_c) − std(A_c))

Once the client's distance stream ``D`` holds more than ``min_stream`` values, the values farther than 3σ from
the mean of ``D`` are dropped and the Shapiro-Wilk statistic ``W`` of the rest is computed
(:func:`scipy.stats.shapiro`); the client is flagged when ``W < delta``. Benign clients' distances look normal;
synthetic queries (JBDA: small ``±λ·sign`` steps from a few seeds) give a spiky, non-normal ``D``.

Choices where the summary in the issue is silent (stds are population stds, ``ddof=0``):

- a stream whose (outlier-free) distances are all equal has no Shapiro-Wilk statistic (SciPy warns and returns
  1); a point mass is as far from normal as a distribution gets, so PRADA uses ``W = 0`` there;
- the score of a query is ``1 − W`` of the client's stream right after that query (0 while the stream holds at
  most ``min_stream`` values), and :meth:`fit` sets the threshold ``1 − delta``, so :meth:`Detector.flag` is
  ``W < delta`` without calibration. :meth:`Detector.calibrate` still works (per-query quantile of one benign
  stream), but calibrating ``delta`` for a target false-positive rate over many benign *clients* is not done
  here.

Distances are exact (no approximate index): each batch's rows are compared with ``G_c`` by chunked
:func:`torch.cdist` in float64 without the matrix-multiplication shortcut, and with each other by one pairwise
``cdist``, on the queries' device; only the per-row bookkeeping loops in Python, so a batch gives the same
scores as its rows sent one at a time. The Shapiro-Wilk test on ``D`` still costs ``O(|D| log |D|)`` per query.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from modelsteal.data.registry import DatasetSplits
from modelsteal.detectors.base import Detector, check_rate, register_detector

STATE_VERSION = 1
_CDIST_BUDGET = 1 << 22  # float64 distances per cdist chunk (32 MiB)
_SUB_BATCH = 1024  # rows compared with each other in one pairwise cdist


class _ClassSet:
    """One class's growing set ``G_c`` (a capacity-doubling buffer of flattened queries), the distances that
    admitted its members, and its threshold ``T_c``."""

    def __init__(self, rows: Tensor, admitted: list[float], threshold: float) -> None:
        self.buf = rows
        self.n = len(rows)
        self.admitted = admitted
        self.threshold = threshold

    @property
    def members(self) -> Tensor:
        return self.buf[: self.n]

    def append(self, rows: Tensor) -> None:
        need = self.n + len(rows)
        if need > len(self.buf):
            grown = self.buf.new_empty((max(need, 2 * len(self.buf)), self.buf.shape[1]))
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n: need] = rows.to(self.buf.device, self.buf.dtype)
        self.n = need


class _ClientState:
    """One client's PRADA state: the distance stream ``D`` and a :class:`_ClassSet` per predicted class."""

    def __init__(self) -> None:
        self.distances: list[float] = []
        self.classes: dict[int, _ClassSet] = {}
        self.dim: int | None = None
        self._w: tuple[int, float] | None = None  # cache: (len(D), W) — derived, not part of the state


def shapiro_w(distances: list[float] | np.ndarray) -> float:
    """Shapiro-Wilk ``W`` of ``distances`` after dropping values farther than 3σ from their mean (population
    std); ``0`` for a point mass (all remaining values equal), which has no ``W``."""
    from scipy.stats import shapiro

    d = np.asarray(distances, dtype=np.float64)
    mean, std = d.mean(), d.std()
    d = d[np.abs(d - mean) <= 3.0 * std]
    if len(d) < 3 or d.max() == d.min():
        return 0.0
    with warnings.catch_warnings():  # N > 5000: SciPy warns that the p-value (unused here) is approximate
        warnings.simplefilter("ignore")
        return float(shapiro(d).statistic)


def min_distances(x: Tensor, members: Tensor) -> Tensor:
    """``(N,)`` exact minimum L2 distance (float64) from each row of ``x`` (N, D) to the rows of ``members``
    (M, D), by chunks of ``members``; ``inf`` where ``members`` is empty."""
    best = torch.full((len(x),), math.inf, dtype=torch.float64, device=x.device)
    if len(x) == 0 or len(members) == 0:
        return best
    xd = x.double()
    step = max(1, _CDIST_BUDGET // len(x))
    for s in range(0, len(members), step):
        chunk = members[s: s + step].to(x.device, torch.float64)
        d = torch.cdist(xd, chunk, compute_mode="donot_use_mm_for_euclid_dist")
        best = torch.minimum(best, d.amin(dim=1))
    return best


@register_detector("prada")
class PRADA(Detector):
    """PRADA's per-client distance-stream test; score ``1 − W`` per query (0 while the stream is short).

    Example::

        det = make_detector("prada", delta=0.95).fit(victim, data)   # threshold = 1 − delta
        det.flag(x, det.posteriors(x), client="alice")               # W of alice's stream < delta
        state = det.state_dict("alice")                              # JSON-serialisable; load_state_dict restores
    """

    stateful = True

    def __init__(self, *, delta: float = 0.95, min_stream: int = 100) -> None:
        super().__init__()
        self.delta = check_rate(delta, name="delta")
        if isinstance(min_stream, bool) or int(min_stream) != min_stream or min_stream < 3:
            raise ValueError(f"prada min_stream must be an integer >= 3, got {min_stream}")
        self.min_stream = int(min_stream)
        self._clients: dict[str, _ClientState] = {}

    def _fit(self, victim: nn.Module, data: DatasetSplits, *, outliers: Tensor | None,
             generator: torch.Generator | None) -> None:
        self.threshold = 1.0 - self.delta
        self.tnr = None

    def calibrate(self, x_benign: Tensor, *, tnr: float = 0.95) -> float:
        """δ from one benign stream: ``x_benign`` (in order, e.g. the victim's validation split) is fed as a
        fresh client, and δ becomes the value that lets a fraction ``tnr`` of its queries pass once the test
        runs (``delta = 1 − threshold``, the ``tnr``-quantile of its ``1 − W`` scores; the queries before
        ``min_stream`` score 0 and count as passed). A per-query false-positive rate on that stream, not a
        per-client one over many benign clients. Returns the threshold."""
        if len(x_benign) <= self.min_stream:
            raise ValueError(f"prada calibration needs a benign stream longer than min_stream={self.min_stream} "
                             f"queries, got {len(x_benign)}")
        threshold = super().calibrate(x_benign, tnr=tnr)
        self.delta = 1.0 - threshold
        return threshold

    # -- scoring -------------------------------------------------------------------------------------
    def score(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        self._require_fitted()
        if probs.ndim != 2 or probs.shape[0] != len(x):
            raise ValueError(f"prada needs (N, K) posteriors for N={len(x)} queries, got shape {tuple(probs.shape)}")
        scores = torch.zeros(len(x), dtype=torch.float64)
        if len(x) == 0:
            return scores.to(x.device)
        flat = x.detach().flatten(1)
        if not torch.isfinite(flat).all():
            raise ValueError("prada queries must be finite (no NaN or inf)")
        state = self._clients.setdefault(client, _ClientState())
        if state.dim is not None and flat.shape[1] != state.dim:
            raise ValueError(f"prada client {client!r} sent {state.dim}-value queries before, got {flat.shape[1]}")
        state.dim = flat.shape[1]
        labels = probs.detach().argmax(dim=1).cpu().tolist()
        for s in range(0, len(x), _SUB_BATCH):
            e = min(s + _SUB_BATCH, len(x))
            scores[s:e] = torch.tensor(self._score_block(state, flat[s:e], labels[s:e]), dtype=torch.float64)
        return scores.to(x.device)

    def _score_block(self, state: _ClientState, flat: Tensor, labels: list[int]) -> list[float]:
        """Process the rows ``flat`` (predicted classes ``labels``) in order; their scores."""
        rows = {c: [i for i, lab in enumerate(labels) if lab == c] for c in set(labels)}
        best: dict[int, np.ndarray] = {}  # per class: min distance to G_c so far, for each of the block's rows
        pair: dict[int, np.ndarray] = {}  # per class: pairwise distances among the block's rows of that class
        for c, idx in rows.items():
            xb = flat[idx]
            members = state.classes[c].members if c in state.classes else xb[:0]
            best[c] = min_distances(xb, members).cpu().numpy()
            xd = xb.double()
            pair[c] = torch.cdist(xd, xd, compute_mode="donot_use_mm_for_euclid_dist").cpu().numpy()
        local = {c: {i: j for j, i in enumerate(idx)} for c, idx in rows.items()}
        joined: dict[int, list[int]] = {c: [] for c in rows}
        out = []
        for i, c in enumerate(labels):
            j = local[c][i]
            d = float(best[c][j])
            cls = state.classes.get(c)
            if math.isinf(d):  # G_c is empty: the query starts it, no distance
                admit = True
            else:
                state.distances.append(d)
                admit = d > (cls.threshold if cls is not None else 0.0)
            if admit:
                if cls is None:
                    cls = state.classes[c] = _ClassSet(flat[:0].clone(), [], 0.0)
                if not math.isinf(d):
                    cls.admitted.append(d)
                    a = np.asarray(cls.admitted)
                    cls.threshold = max(cls.threshold, float(a.mean() - a.std()))
                joined[c].append(i)
                np.minimum(best[c], pair[c][j], out=best[c])
            out.append(self._stream_score(state))
        for c, idx in joined.items():
            if idx:
                state.classes[c].append(flat[idx])
        return out

    def _stream_score(self, state: _ClientState) -> float:
        """``1 − W`` of the client's stream (cached per stream length); 0 while it is short."""
        n = len(state.distances)
        if n <= self.min_stream:
            return 0.0
        if state._w is None or state._w[0] != n:
            state._w = (n, shapiro_w(state.distances))
        return 1.0 - state._w[1]

    def statistic(self, client: str) -> float | None:
        """Shapiro-Wilk ``W`` of ``client``'s stream now (``None`` while it holds at most ``min_stream``)."""
        state = self._clients.get(client)
        if state is None or len(state.distances) <= self.min_stream:
            return None
        return 1.0 - self._stream_score(state)

    # -- per-client state ----------------------------------------------------------------------------
    def state_dict(self, client: str) -> dict[str, Any]:
        """``client``'s state as plain JSON types (``{}`` for a client never seen): the distance stream, and per
        class (keys are ``str(c)``) the members of ``G_c`` as flattened rows, the admitting distances and
        ``T_c``. Float32 and float64 values survive a JSON round trip exactly."""
        state = self._clients.get(client)
        if state is None:
            return {}
        return {
            "version": STATE_VERSION,
            "dim": state.dim,
            "distances": list(state.distances),
            "classes": {
                str(c): {"dtype": str(cls.buf.dtype).removeprefix("torch."),
                         "members": cls.members.detach().cpu().double().tolist(),
                         "admitted": list(cls.admitted), "threshold": cls.threshold}
                for c, cls in sorted(state.classes.items())
            },
        }

    def load_state_dict(self, client: str, state: dict[str, Any]) -> None:
        """Restore ``client``'s state from :meth:`state_dict` (``{}``: forget it); the members go to the
        victim's device when fitted."""
        if not state:
            self.reset(client)
            return
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"prada state version {state.get('version')!r} is not {STATE_VERSION}")
        device = next(self.victim.parameters()).device if self.victim is not None else torch.device("cpu")
        new = _ClientState()
        new.dim = state["dim"]
        new.distances = [float(d) for d in state["distances"]]
        for key, cls in state["classes"].items():
            dtype = getattr(torch, cls["dtype"])
            rows = torch.tensor(cls["members"], dtype=dtype, device=device).reshape(-1, new.dim)
            new.classes[int(key)] = _ClassSet(rows, [float(a) for a in cls["admitted"]], float(cls["threshold"]))
        self._clients[client] = new

    def reset(self, client: str) -> None:
        self._clients.pop(client, None)

    def __repr__(self) -> str:
        return f"PRADA(delta={self.delta}, min_stream={self.min_stream}, threshold={self.threshold})"
