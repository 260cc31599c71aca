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

Choices the algorithm above leaves open (stds are population stds, ``ddof=0``):

- a stream whose (outlier-free) distances are all equal has no Shapiro-Wilk statistic (SciPy warns and returns
  1); a point mass is as far from normal as a distribution gets, so PRADA uses ``W = 0`` there;
- the score of a query is ``1 − W`` of the client's stream right after that query (0 while the stream holds at
  most ``min_stream`` values), and :meth:`fit` sets the threshold ``1 − delta``, so :meth:`Detector.flag` is
  ``W < delta`` without calibration. :meth:`PRADA.calibrate` sets ``delta`` from one benign stream (a per-query
  quantile); :meth:`PRADA.calibrate_clients` from many benign clients' streams, for a target per-client
  false-positive rate (the fraction of benign clients ever flagged).

Distances are exact. Each batch's rows are compared with each other by one pairwise :func:`torch.cdist` in
float64 (without the matrix-multiplication shortcut), and with ``G_c`` by one of two searches (``index=``):

- ``torch``: chunked float64 ``cdist`` against every member, on the queries' device (the reference);
- ``faiss``: a ``faiss.IndexFlatL2`` per class (``pip install 'modelsteal[faiss]'``, imported when first used)
  proposes the ``_CANDIDATES`` nearest members in float32; their distances are recomputed by the same float64
  ``cdist``, and a row whose float32 ranking cannot be trusted (the last candidate's float32 squared distance
  is not more than a rounding bound above the best exact one; the bound is ``(4·D + 16)·2⁻²⁴·(‖x‖² + max‖y‖²)``)
  falls back to the reference for that row. Same values as ``torch``, bit for bit, about 20× faster on the CPU;
- ``auto`` (default): ``faiss`` for a class set of at least ``_FAISS_MIN`` members held on the CPU when faiss is
  installed, ``torch`` otherwise (``bench/prada_cost.py`` measures the crossover).

Both are exhaustive, so the search still grows linearly with ``|G_c|`` (which grows much more slowly than the
history: a query joins ``G_c`` only when it is farther than ``T_c`` from every member). The Shapiro-Wilk test on
``D`` is the part that must grow with the history: ``W`` of the whole (trimmed) stream after every query is
``O(|D|)`` at best; a sorted copy of ``D`` is kept (each new distance inserted), so no query sorts the stream,
and SciPy's own ``swilk`` routine is called on it with the shift :func:`scipy.stats.shapiro` would use, so ``W``
is bit for bit SciPy's. ``docs/serving.md`` gives the measured costs. Only the per-row bookkeeping loops in
Python, so a batch gives the same scores as its rows sent one at a time.

Per-client state round-trips through :meth:`PRADA.state_dict` / :meth:`PRADA.load_state_dict` (plain JSON) and,
incrementally, :meth:`PRADA.state_delta` / :meth:`PRADA.apply_state_delta` (what changed since the last delta:
what the server's store appends after every request, so saving does not grow with the client's history).
"""

from __future__ import annotations

import base64
import math
import warnings
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from modelsteal.data.registry import DatasetSplits
from modelsteal.detectors.base import Detector, check_rate, register_detector

STATE_VERSION = 1
_CDIST_BUDGET = 1 << 22  # float64 distances per cdist chunk (32 MiB)
_SUB_BATCH = 1024  # rows compared with each other in one pairwise cdist
_CANDIDATES = 16  # faiss: float32 nearest members re-ranked exactly per row
_FAISS_MIN = 512  # auto: class-set size from which faiss beats chunked cdist (bench/prada_cost.py, part 1)
_U32 = 2.0 ** -24  # unit roundoff of float32
Index = Literal["auto", "torch", "faiss"]
INDEXES = ("auto", "torch", "faiss")


class _ClassSet:
    """One class's growing set ``G_c`` (a capacity-doubling buffer of flattened queries), the distances that
    admitted its members, and its threshold ``T_c``."""

    def __init__(self, rows: Tensor, admitted: list[float], threshold: float) -> None:
        self.buf = rows
        self.n = len(rows)
        self.admitted = admitted
        self.threshold = threshold
        self.max_sq = float(rows.double().pow(2).sum(dim=1).max()) if len(rows) else 0.0
        self.faiss: Any = None  # a faiss.IndexFlatL2 over the members, built when first searched (derived state)

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
        if len(rows):
            self.max_sq = max(self.max_sq, float(rows.double().pow(2).sum(dim=1).max()))
        if self.faiss is not None:
            self.faiss.add(_float32_rows(self.buf[self.n: need]))
        self.n = need

    def nearest(self, x: Tensor, *, index: str) -> Tensor:
        """``(N,)`` exact minimum distance (float64) from each row of ``x`` to the members."""
        use_faiss = index == "faiss" or (index == "auto" and self.n >= _FAISS_MIN and self.buf.device.type == "cpu"
                                         and _faiss_available())
        if not use_faiss or self.n <= _CANDIDATES:
            return min_distances(x, self.members)
        if self.faiss is None:
            self.faiss = _require_faiss().IndexFlatL2(self.buf.shape[1])
            self.faiss.add(_float32_rows(self.members))
        return _reranked(x, self.members, self.faiss, max_sq=self.max_sq)


def _float32_rows(rows: Tensor) -> np.ndarray:
    return np.ascontiguousarray(rows.detach().cpu().float().numpy())


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _require_faiss() -> Any:
    from modelsteal._extras import require_extra

    return require_extra("faiss", extra="faiss", purpose="PRADA's index='faiss'")


def _reranked(x: Tensor, members: Tensor, index: Any, *, max_sq: float) -> Tensor:
    """Exact minimum distances through the faiss index: float32 candidates, float64 re-ranking, and the reference
    :func:`min_distances` for each row whose float32 ranking the rounding bound cannot vouch for."""
    k = min(_CANDIDATES, len(members))
    approx, ids = index.search(_float32_rows(x), k)  # squared float32 distances, ascending
    xd = x.double()
    ids_t = torch.as_tensor(ids, device=members.device)
    cand = members[ids_t.flatten()].to(x.device, torch.float64).reshape(len(x), k, -1)
    exact = torch.cdist(xd.unsqueeze(1), cand, compute_mode="donot_use_mm_for_euclid_dist").squeeze(1)
    best = exact.amin(dim=1)
    bound = (4 * x.shape[1] + 16) * _U32 * (xd.pow(2).sum(dim=1) + max_sq)
    last = torch.as_tensor(approx[:, -1], dtype=torch.float64, device=x.device)
    unsure = ~(last > best.pow(2) + bound)
    if bool(unsure.any()):
        rows = unsure.nonzero().flatten()
        best[rows] = min_distances(x[rows], members)
    return best


class _ClientState:
    """One client's PRADA state: the distance stream ``D`` and a :class:`_ClassSet` per predicted class."""

    def __init__(self) -> None:
        self.distances: list[float] = []
        self.classes: dict[int, _ClassSet] = {}
        self.dim: int | None = None
        self._w: tuple[int, float] | None = None  # cache: (len(D), W) — derived, not part of the state
        self.low: float | None = None  # the lowest W this process has computed for the stream (derived)
        self.mark: tuple[int, dict[int, tuple[int, int, float]]] = (0, {})  # what the last delta covered
        self._array = np.empty(0)  # D as a capacity-doubling float64 buffer (derived), so the test does not
        self._filled = 0  # convert the whole list on every query
        self._ordered = np.empty(0)  # D sorted (derived): new distances are inserted, never the whole sorted

    def stream(self) -> np.ndarray:
        """``D`` as a float64 array (a view of a buffer that only the new distances are copied into)."""
        n = len(self.distances)
        if n > len(self._array):
            grown = np.empty(max(n, 2 * len(self._array)))
            grown[: self._filled] = self._array[: self._filled]
            self._array = grown
        if n > self._filled:
            self._array[self._filled: n] = self.distances[self._filled: n]
            new = np.sort(self._array[self._filled: n])
            self._ordered = np.insert(self._ordered, np.searchsorted(self._ordered, new), new)
            self._filled = n
        return self._array[:n]

    def ordered(self) -> np.ndarray:
        """``D`` sorted (call :meth:`stream` first)."""
        return self._ordered

    def marked(self) -> tuple[int, dict[int, tuple[int, int, float]]]:
        """``(len(D), {c: (|G_c|, |A_c|, T_c)})`` now: the base of the next :meth:`PRADA.state_delta`."""
        return len(self.distances), {c: (cls.n, len(cls.admitted), cls.threshold) for c, cls in self.classes.items()}


def shapiro_w(distances: list[float] | np.ndarray, *, ordered: np.ndarray | None = None) -> float:
    """Shapiro-Wilk ``W`` of ``distances`` after dropping values farther than 3σ from their mean (population
    std); ``0`` for a point mass (all remaining values equal), which has no ``W``.

    ``ordered`` (the same values sorted, kept up to date by the caller) skips the sort: the kept values are
    passed straight to the routine :func:`scipy.stats.shapiro` runs (``swilk``), shifted by the value
    ``shapiro`` would subtract (the middle kept value *in stream order*), so ``W`` is the same bit for bit;
    without it, or when SciPy's private routine is not found, :func:`scipy.stats.shapiro` itself runs."""
    d = np.asarray(distances, dtype=np.float64)
    mean, std = d.mean(), d.std()
    keep = np.abs(d - mean) <= 3.0 * std
    swilk = _swilk() if ordered is not None else None
    if swilk is None:
        return _scipy_w(d[keep])
    y = ordered[np.abs(ordered - mean) <= 3.0 * std]  # the kept values, sorted (same elementwise test)
    n = len(y)
    if n < 3 or y[0] == y[-1]:
        return 0.0
    y = y - d[np.flatnonzero(keep)[n // 2]]
    w, _, _ = swilk(y, np.zeros(n // 2, dtype=np.float64), 0)
    return float(np.float64(w))


def _scipy_w(d: np.ndarray) -> float:
    from scipy.stats import shapiro

    if len(d) < 3 or d.max() == d.min():
        return 0.0
    with warnings.catch_warnings():  # N > 5000: SciPy warns that the p-value (unused here) is approximate
        warnings.simplefilter("ignore")
        return float(shapiro(d).statistic)


def _swilk() -> Any:
    """SciPy's ``swilk`` (what :func:`scipy.stats.shapiro` calls after sorting), or ``None`` if it moved."""
    try:
        from scipy.stats._ansari_swilk_statistics import swilk
    except ImportError:
        return None
    return swilk


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

    def __init__(self, *, delta: float = 0.95, min_stream: int = 100, index: Index = "auto") -> None:
        super().__init__()
        self.delta = check_rate(delta, name="delta")
        if isinstance(min_stream, bool) or int(min_stream) != min_stream or min_stream < 3:
            raise ValueError(f"prada min_stream must be an integer >= 3, got {min_stream}")
        self.min_stream = int(min_stream)
        if index not in INDEXES:
            raise ValueError(f"prada index must be one of {', '.join(INDEXES)}, got {index!r}")
        if index == "faiss":
            _require_faiss()
        self.index = index
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

    def min_w(self, stream: Tensor) -> float:
        """The lowest ``W`` a client sending ``stream`` (in order) would reach (scored as a fresh client
        ``"__calibration__"``, reset afterwards); a client is ever flagged iff this is below ``delta``."""
        if len(stream) <= self.min_stream:
            raise ValueError(f"prada needs benign streams longer than min_stream={self.min_stream} queries, "
                             f"got one of {len(stream)}")
        self.reset("__calibration__")
        scores = self.score(stream, self.posteriors(stream), client="__calibration__")
        self.reset("__calibration__")
        return 1.0 - float(scores.max())

    def calibrate_clients(self, streams: list[Tensor], *, tnr: float = 0.95) -> float:
        """δ for a per-client false-positive rate: each of ``streams`` is one benign client's queries in order;
        with ``m`` their lowest ``W`` (:meth:`min_w`) sorted, ``delta = m[⌊(1 − tnr)·n⌋]``, so that at most
        ``⌊(1 − tnr)·n⌋`` of the ``n`` clients (those with ``W`` strictly below it at some point) are flagged and a
        fraction of at least ``tnr`` never is. Returns ``delta`` (the threshold is ``1 − delta``)."""
        tnr = check_rate(tnr)
        self._require_fitted()
        if not streams:
            raise ValueError("prada calibrate_clients needs at least one benign stream")
        lows = sorted(self.min_w(s) for s in streams)
        delta = lows[math.floor((1.0 - tnr) * len(lows) + 1e-9)]
        if not 0.0 < delta < 1.0:
            raise ValueError(f"prada calibration gave delta={delta} from benign streams' lowest W {lows[:3]}…; "
                             "the streams are too short or degenerate")
        self.delta, self.threshold, self.tnr = delta, 1.0 - delta, tnr
        return delta

    def calibrate_benign(self, x_benign: Tensor, *, tnr: float = 0.95, clients: int = 20, seed: int = 0,
                         length: int | None = None) -> float:
        """:meth:`calibrate_clients` on ``clients`` benign streams of ``x_benign``
        (:func:`~modelsteal.detectors.calibration.benign_streams`); returns ``delta``."""
        from modelsteal.detectors.calibration import benign_streams

        return self.calibrate_clients(benign_streams(x_benign, clients=clients, seed=seed, length=length), tnr=tnr)

    def w_trace(self, client: str, *, points: int = 200) -> list[tuple[int, float]]:
        """``W`` of ``client``'s stream as it grew: ``(stream length n, W of the first n distances)`` at up to
        ``points`` lengths from ``min_stream + 1`` to the whole stream (the last always included); empty while the
        stream is short. What the W-over-queries plots draw (a client's query count is its stream length plus
        the number of classes it has queried, one query each starting ``G_c``)."""
        state = self._clients.get(client)
        if state is None or len(state.distances) <= self.min_stream:
            return []
        d = np.asarray(state.distances, dtype=np.float64)
        lengths = np.unique(np.linspace(self.min_stream + 1, len(d), num=max(2, points)).round().astype(int))
        return [(int(n), shapiro_w(d[:n])) for n in lengths]

    def lowest_w(self, client: str) -> float | None:
        """The lowest ``W`` ``client``'s stream has had after any of its queries scored in this process (a
        client is ever flagged iff it is below ``delta``); ``None`` before the test first ran, or for a state
        only restored by :meth:`load_state_dict` (not part of the persisted state)."""
        state = self._clients.get(client)
        return None if state is None else state.low

    def reset_all(self) -> None:
        self._clients.clear()

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
            cls = state.classes.get(c)
            near = min_distances(xb, xb[:0]) if cls is None else cls.nearest(xb, index=self.index)
            best[c] = near.cpu().numpy()
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
            state._w = (n, shapiro_w(state.stream(), ordered=state.ordered()))
            state.low = state._w[1] if state.low is None else min(state.low, state._w[1])
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
        new.mark = new.marked()
        self._clients[client] = new

    def state_delta(self, client: str) -> dict[str, Any]:
        """What changed in ``client``'s state since the last :meth:`state_delta`, :meth:`apply_state_delta` or
        :meth:`load_state_dict` (since nothing, for a new client), as plain JSON types; its size is that of the
        change, not of the history. The new distances, members and admitting distances are little-endian
        bytes in base64 (exact), with the lengths they extend (``base``), which :meth:`apply_state_delta`
        checks, so a delta applied to the wrong state is an error rather than a silently different state."""
        state = self._clients.get(client)
        if state is None:
            return {"version": STATE_VERSION, "kind": "delta", "base": 0, "dim": None, "distances": "",
                    "classes": {}}
        n_d, marks = state.mark
        classes = {}
        for c, cls in sorted(state.classes.items()):
            n, n_a, t = marks.get(c, (0, 0, 0.0))
            if (n, n_a, t) == (cls.n, len(cls.admitted), cls.threshold):
                continue
            members = cls.members[n:].detach().cpu()
            classes[str(c)] = {"base": [n, n_a], "dtype": str(members.dtype).removeprefix("torch."),
                               "members": _b64(members.numpy()), "admitted": _b64(np.asarray(cls.admitted[n_a:])),
                               "threshold": cls.threshold}
        out = {"version": STATE_VERSION, "kind": "delta", "base": n_d, "dim": state.dim,
               "distances": _b64(np.asarray(state.distances[n_d:])), "classes": classes}
        state.mark = state.marked()
        return out

    def state_snapshot(self, client: str) -> dict[str, Any]:
        """``client``'s whole state in the compact form of a :meth:`state_delta` that extends the empty state
        (``base`` 0; base64 bytes, far smaller and faster to read than :meth:`state_dict`'s lists), which
        :meth:`apply_state_delta` on a reset client restores exactly. Like :meth:`state_delta`, it marks the state
        as saved: the next delta holds only what changes after it (a server's journal snapshot)."""
        state = self._clients.get(client)
        if state is not None:
            state.mark = (0, {})
        return self.state_delta(client)

    def apply_state_delta(self, client: str, delta: dict[str, Any]) -> None:
        """Extend ``client``'s state by a :meth:`state_delta` (in the order they were taken); ``ValueError`` if
        it does not extend the state as it is now."""
        if delta.get("version") != STATE_VERSION or delta.get("kind") != "delta":
            raise ValueError(f"not a prada state delta of version {STATE_VERSION}: {str(delta)[:80]}")
        state = self._clients.setdefault(client, _ClientState())
        if int(delta["base"]) != len(state.distances):
            raise ValueError(f"prada delta for {client!r} extends a stream of {delta['base']} distances; the "
                             f"state holds {len(state.distances)}")
        if delta["dim"] is not None:
            if state.dim is not None and state.dim != delta["dim"]:
                raise ValueError(f"prada delta for {client!r} has {delta['dim']}-value queries, not {state.dim}")
            state.dim = int(delta["dim"])
        device = next(self.victim.parameters()).device if self.victim is not None else torch.device("cpu")
        for key, d in delta["classes"].items():
            c, cls = int(key), state.classes.get(int(key))
            have = [0, 0] if cls is None else [cls.n, len(cls.admitted)]
            if list(d["base"]) != have:
                raise ValueError(f"prada delta for {client!r} extends class {c} at {d['base']}, the state is at {have}")
            dtype = getattr(torch, d["dtype"])
            rows = torch.from_numpy(_unb64(d["members"], dtype)).reshape(-1, state.dim).to(device)
            if cls is None:
                cls = state.classes[c] = _ClassSet(rows[:0].clone(), [], 0.0)
            cls.append(rows)
            cls.admitted.extend(_unb64(d["admitted"], torch.float64).tolist())
            cls.threshold = float(d["threshold"])
        state.distances.extend(_unb64(delta["distances"], torch.float64).tolist())
        state.mark = state.marked()

    def options(self) -> dict[str, Any]:
        """The constructor options that rebuild this detector as it is now (``delta`` as calibrated)."""
        return {"delta": self.delta, "min_stream": self.min_stream, "index": self.index}

    def summary(self, client: str) -> dict[str, Any]:
        """A short account of ``client``'s state (what ``modelsteal keys show`` prints): stream length, ``W`` (or
        ``None`` while the stream is short), whether it is below ``delta``, and per class ``|G_c|`` and ``T_c``."""
        state = self._clients.get(client)
        if state is None:
            return {"queries_seen": 0, "stream": 0, "W": None, "flagged_now": False, "classes": {}}
        w = self.statistic(client)
        return {
            "queries_seen": len(state.distances) + len(state.classes), "stream": len(state.distances), "W": w,
            "delta": self.delta, "flagged_now": w is not None and w < self.delta,
            "classes": {str(c): {"members": cls.n, "threshold": cls.threshold}
                        for c, cls in sorted(state.classes.items())},
        }

    def reset(self, client: str) -> None:
        self._clients.pop(client, None)

    def __repr__(self) -> str:
        return (f"PRADA(delta={self.delta}, min_stream={self.min_stream}, index={self.index!r}, "
                f"threshold={self.threshold})")


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()).decode()


def _unb64(text: str, dtype: torch.dtype) -> np.ndarray:
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<")
    return np.frombuffer(base64.b64decode(text), dtype=np_dtype).astype(np_dtype.newbyteorder("="))
