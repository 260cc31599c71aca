"""PRADA (Juuti et al., EuroS&P 2019): exact distances, growing sets and thresholds on a hand-computed stream and
against a NumPy reference, sequential semantics within a batch, per-client isolation, state round trips, and a
benign stream against a JBDA-like one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import shapiro
from torch import nn

from modelsteal.data import DatasetSplits
from modelsteal.detectors import make_detector
from modelsteal.detectors import prada as prada_module


def _hand_detector(**options) -> prada_module.PRADA:
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2)).eval()
    x, y = torch.zeros(2, 2), torch.arange(2)
    data = DatasetSplits(name="hand", x_train=x, y_train=y, x_val=x, y_val=y, x_test=x, y_test=y, num_classes=2)
    return make_detector("prada", **options).fit(model, data)


def _onehot(labels: list[int], k: int = 2) -> torch.Tensor:
    return nn.functional.one_hot(torch.tensor(labels), k).float()


def test_hand_computed_stream():
    """Class 0: (0,0) starts G_0 (no distance); (3,4): d=5 > T=0, joins, T=5; (0,1): d=1, stays out; (10,4): d=7,
    joins, A=[5,7], T=max(5, 6−1)=5; (20,4): d=10 joins, T = mean−std of [5,7,10] = 22/3 − √(38/9). Class 1:
    (0,0) starts G_1 even though class 0 holds the same point; (0,2): d=2 joins, T_1=2; (0,4): d=2 = T_1, stays
    out (admission needs d > T_c)."""
    det = _hand_detector(min_stream=3)
    x = torch.tensor([[0.0, 0], [3, 4], [0, 0], [0, 1], [10, 4], [0, 2], [20, 4], [0, 4]])
    labels = [0, 0, 1, 0, 0, 1, 0, 1]
    scores = det.score(x, _onehot(labels), client="c")
    state = det.state_dict("c")
    assert state["distances"] == pytest.approx([5.0, 1.0, 7.0, 2.0, 10.0, 2.0], abs=1e-12)
    c0, c1 = state["classes"]["0"], state["classes"]["1"]
    assert c0["members"] == [[0, 0], [3, 4], [10, 4], [20, 4]] and c1["members"] == [[0, 0], [0, 2]]
    assert c0["admitted"] == pytest.approx([5.0, 7.0, 10.0]) and c1["admitted"] == pytest.approx([2.0])
    assert c0["threshold"] == pytest.approx(22 / 3 - np.sqrt(38 / 9), abs=1e-12) and c1["threshold"] == 2.0
    # scores: 0 until D holds more than 3 values, then 1 − W of the stream so far
    w4 = shapiro([5.0, 1.0, 7.0, 2.0]).statistic
    w5 = shapiro([5.0, 1.0, 7.0, 2.0, 10.0]).statistic
    w6 = shapiro([5.0, 1.0, 7.0, 2.0, 10.0, 2.0]).statistic
    np.testing.assert_allclose(scores.numpy(), [0, 0, 0, 0, 0, 1 - w4, 1 - w5, 1 - w6], atol=1e-12)
    assert det.statistic("c") == pytest.approx(w6) and det.threshold == pytest.approx(0.05)
    assert det.flag(x[:0], _onehot(labels)[:0], client="c").shape == (0,)


def test_shapiro_drops_3_sigma_outliers_and_scores_a_point_mass_zero():
    values = np.random.default_rng(0).normal(10.0, 1.0, 60)
    assert prada_module.shapiro_w(np.r_[values, 1000.0]) == pytest.approx(shapiro(values).statistic, abs=1e-12)
    assert prada_module.shapiro_w(values) == pytest.approx(shapiro(values).statistic, abs=1e-12)
    assert prada_module.shapiro_w([3.0] * 20) == 0.0


def _reference(x: np.ndarray, labels: np.ndarray) -> tuple[list[float], dict[int, float], dict[int, int]]:
    """PRADA's bookkeeping written out plainly: distance stream, T_c and |G_c|."""
    sets: dict[int, list[np.ndarray]] = {}
    admitted: dict[int, list[float]] = {}
    thresholds: dict[int, float] = {}
    stream: list[float] = []
    for row, c in zip(x, labels, strict=True):
        if c not in sets:
            sets[c], admitted[c], thresholds[c] = [row], [], 0.0
            continue
        d = float(min(np.sqrt(((row - y) ** 2).sum()) for y in sets[c]))
        stream.append(d)
        if d > thresholds[c]:
            sets[c].append(row)
            admitted[c].append(d)
            thresholds[c] = max(thresholds[c], float(np.mean(admitted[c]) - np.std(admitted[c])))
    return stream, thresholds, {c: len(s) for c, s in sets.items()}


def _near_duplicate_stream(digits, n: int = 120) -> torch.Tensor:
    """Digits with small perturbed copies interleaved, so later rows of a batch are nearest to earlier ones."""
    g = torch.Generator().manual_seed(3)
    base = digits.x_train[:n // 2]
    near = (base + 0.02 * torch.randn(base.shape, generator=g)).clamp(0, 1)
    return torch.stack([base, near], dim=1).flatten(0, 1)


def test_batch_equals_rows_one_at_a_time_and_a_brute_force_reference(digits, digits_victim, monkeypatch):
    monkeypatch.setattr(prada_module, "_CDIST_BUDGET", 7)  # several cdist chunks against G_c
    monkeypatch.setattr(prada_module, "_SUB_BATCH", 16)  # several blocks per batch
    x = _near_duplicate_stream(digits)
    det = make_detector("prada", min_stream=20).fit(digits_victim, digits)
    probs = det.posteriors(x)
    batch = det.score(x, probs, client="batch")
    single = torch.cat([det.score(x[i:i + 1], probs[i:i + 1], client="single") for i in range(len(x))])
    assert torch.equal(batch, single)
    assert det.state_dict("batch") == det.state_dict("single")
    stream, thresholds, sizes = _reference(x.flatten(1).double().numpy(), probs.argmax(1).numpy())
    state = det.state_dict("batch")
    np.testing.assert_allclose(state["distances"], stream, rtol=0, atol=1e-9)
    assert {int(c): len(v["members"]) for c, v in state["classes"].items()} == sizes
    assert {int(c): v["threshold"] for c, v in state["classes"].items()} == pytest.approx(thresholds, abs=1e-9)
    assert (batch[:20] == 0).all() and (batch[-40:] > 0).all()


def test_clients_do_not_share_state(digits, digits_victim):
    xa, xb = digits.x_train[:90], digits.x_test[:90]
    det = make_detector("prada", min_stream=30).fit(digits_victim, digits)
    pa, pb = det.posteriors(xa), det.posteriors(xb)
    mixed_a, mixed_b = [], []
    for s in range(0, 90, 30):  # interleaved traffic of two clients
        mixed_a.append(det.score(xa[s:s + 30], pa[s:s + 30], client="alice"))
        mixed_b.append(det.score(xb[s:s + 30], pb[s:s + 30], client="bob"))
    alone = make_detector("prada", min_stream=30).fit(digits_victim, digits)
    assert torch.equal(torch.cat(mixed_a), alone.score(xa, pa, client="alice"))
    assert torch.equal(torch.cat(mixed_b), alone.score(xb, pb, client="bob"))
    det.reset("alice")
    assert det.state_dict("alice") == {} and det.state_dict("bob")["distances"]


def test_state_round_trip_continues_as_if_never_stopped(digits, digits_victim):
    x = _near_duplicate_stream(digits, 160)
    det = make_detector("prada", min_stream=40).fit(digits_victim, digits)
    probs = det.posteriors(x)
    uninterrupted = det.score(x, probs, client="c")
    first = make_detector("prada", min_stream=40).fit(digits_victim, digits)
    head = first.score(x[:90], probs[:90], client="c")
    saved = json.loads(json.dumps(first.state_dict("c")))  # through JSON, as a store would keep it
    restarted = make_detector("prada", min_stream=40).fit(digits_victim, digits)
    restarted.load_state_dict("c", saved)
    assert restarted.state_dict("c") == first.state_dict("c")
    tail = restarted.score(x[90:], probs[90:], client="c")
    assert torch.equal(torch.cat([head, tail]), uninterrupted)
    assert restarted.state_dict("c") == det.state_dict("c")
    restarted.load_state_dict("c", {})
    assert restarted.state_dict("c") == {}


def _jbda_like(digits, *, lam: float = 0.05, rounds: int = 5) -> torch.Tensor:
    """Ten seeds, then rounds that add x ± λ·sign(noise) for every point so far (JBDA's augmentation shape)."""
    g = torch.Generator().manual_seed(0)
    points = digits.x_test[:10].clone()
    stream = [points]
    for _ in range(rounds):
        new = (points + lam * torch.sign(torch.randn(points.shape, generator=g))).clamp(0, 1)
        stream.append(new)
        points = torch.cat([points, new])
    return torch.cat(stream)


def test_benign_stream_passes_and_a_jbda_like_stream_is_flagged(digits, digits_victim):
    det = make_detector("prada", min_stream=50).fit(digits_victim, digits)
    benign = digits.x_train[:400]
    assert not det.flag(benign, det.posteriors(benign), client="benign").any()
    attack = _jbda_like(digits)
    flags = det.flag(attack, det.posteriors(attack), client="jbda")
    assert flags[-1] and flags.float().mean() > 0.5
    assert det.statistic("jbda") < 0.95 < det.statistic("benign")


def test_calibration_sets_delta_from_a_benign_stream(digits, digits_victim):
    det = make_detector("prada", min_stream=50).fit(digits_victim, digits)
    benign = digits.x_train[:400]
    threshold = det.calibrate(benign, tnr=0.9)
    assert det.delta == pytest.approx(1 - threshold) and det.threshold == threshold
    # on that same stream, as a real client, about 10% of the queries are flagged (quantile ties allowed)
    flagged = det.flag(benign, det.posteriors(benign), client="benign").float().mean().item()
    assert 0.05 <= flagged <= 0.11
    assert det.statistic("__calibration__") is None  # the calibration client left no state behind
    with pytest.raises(ValueError, match="longer than min_stream=50"):
        det.calibrate(benign[:50])


@pytest.mark.parametrize(("options", "words"), [
    ({"delta": 0.0}, ("delta", "(0, 1)")), ({"delta": 1.0}, ("delta", "(0, 1)")), ({"delta": 1.5}, ("delta",)),
    ({"min_stream": 2}, ("min_stream", ">= 3")), ({"min_stream": 10.5}, ("min_stream",)),
])
def test_bad_options_are_one_line_errors(options, words):
    with pytest.raises(ValueError) as e:
        make_detector("prada", **options)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


# -- the faiss index: same exact distances --------------------------------------------------------------
@pytest.mark.parametrize("dim", [64, 300])
def test_faiss_index_gives_the_brute_force_distances_bit_for_bit(dim, monkeypatch):
    """Members with near-duplicates, exact duplicates and ties, queried through the faiss candidates and the
    exact re-ranking; equal to the chunked-cdist reference and within 1e-12 of a NumPy one."""
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(dim)
    members = torch.rand(600, dim, generator=g)
    members[300:320] = members[:20]  # exact duplicates (ties)
    x = torch.cat([torch.rand(40, dim, generator=g), members[:30] + 1e-5 * torch.randn(30, dim, generator=g),
                   members[40:50], 0.5 * torch.ones(3, dim)])
    cls = prada_module._ClassSet(members.clone(), [], 0.0)
    reference = prada_module.min_distances(x, members)
    assert torch.equal(cls.nearest(x, index="faiss"), reference)
    assert torch.equal(cls.nearest(x, index="auto"), reference)
    brute = np.sqrt(((x.double().numpy()[:, None] - members.double().numpy()[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(reference.numpy(), brute, rtol=0, atol=1e-12)
    # with a bound too small to trust any ranking, every row falls back to the reference: still equal
    monkeypatch.setattr(prada_module, "_U32", 1.0)
    assert torch.equal(cls.nearest(x, index="faiss"), reference)


def test_faiss_ranking_is_checked_not_trusted(monkeypatch):
    """A faiss index that returns the wrong candidates (the farthest members) must not change the distances: the
    rounding-bound check sends those rows to the exact reference."""
    pytest.importorskip("faiss")

    class Reversed:
        def __init__(self, rows: np.ndarray) -> None:
            self.rows = rows

        def search(self, q: np.ndarray, k: int):
            d = ((q[:, None] - self.rows[None]) ** 2).sum(-1)
            ids = np.argsort(-d, axis=1)[:, :k]  # the k farthest, reported nearest-first
            return np.sort(np.take_along_axis(d, ids, 1), axis=1)[:, ::-1].copy(), ids

    g = torch.Generator().manual_seed(0)
    members, x = torch.rand(200, 16, generator=g), torch.rand(20, 16, generator=g)
    cls = prada_module._ClassSet(members.clone(), [], 0.0)
    cls.faiss = Reversed(members.numpy())
    assert torch.equal(cls.nearest(x, index="faiss"), prada_module.min_distances(x, members))


def test_scores_and_state_do_not_depend_on_the_index(digits, digits_victim, monkeypatch):
    pytest.importorskip("faiss")
    monkeypatch.setattr(prada_module, "_CANDIDATES", 4)
    monkeypatch.setattr(prada_module, "_FAISS_MIN", 8)
    x = _near_duplicate_stream(digits, 300)
    out = {}
    for index in ("torch", "faiss", "auto"):
        det = make_detector("prada", min_stream=40, index=index).fit(digits_victim, digits)
        scores = torch.cat([det.score(xb, det.posteriors(xb), client="c") for xb in x.split(37)])
        out[index] = (scores, det.state_dict("c"))
    assert torch.equal(out["torch"][0], out["faiss"][0]) and torch.equal(out["torch"][0], out["auto"][0])
    assert out["torch"][1] == out["faiss"][1] == out["auto"][1]


# -- incremental state ----------------------------------------------------------------------------------
def test_deltas_rebuild_the_state_and_refuse_the_wrong_base(digits, digits_victim):
    x = _near_duplicate_stream(digits, 160)
    det = make_detector("prada", min_stream=40).fit(digits_victim, digits)
    probs = det.posteriors(x)
    deltas = []
    for s in range(0, 160, 23):
        det.score(x[s:s + 23], probs[s:s + 23], client="c")
        deltas.append(json.loads(json.dumps(det.state_delta("c"))))  # through JSON, as the store keeps them
    assert det.state_delta("c")["classes"] == {} and det.state_delta("c")["distances"] == ""  # nothing new
    rebuilt = make_detector("prada", min_stream=40)  # unfitted, as `keys show` rebuilds it
    for d in deltas:
        rebuilt.apply_state_delta("c", d)
    assert rebuilt.state_dict("c") == det.state_dict("c")
    assert rebuilt.summary("c")["stream"] == len(det.state_dict("c")["distances"])
    assert rebuilt.summary("c")["queries_seen"] == 160
    fresh = make_detector("prada", min_stream=40)
    with pytest.raises(ValueError, match="extends a stream of"):
        fresh.apply_state_delta("c", deltas[1])  # skipping the first delta is an error, not another state
    fresh.apply_state_delta("c", deltas[0])
    with pytest.raises(ValueError, match="extends a stream of"):
        fresh.apply_state_delta("c", deltas[0])  # nor is applying one twice


def test_bad_index_is_a_one_line_error():
    with pytest.raises(ValueError, match="index must be one of auto, torch, faiss"):
        make_detector("prada", index="hnsw")


@pytest.mark.parametrize("n", [3, 4, 101, 5001, 20_000])
def test_the_sorted_stream_gives_scipys_w_bit_for_bit(n):
    """The fast path (kept values sorted incrementally, SciPy's swilk called directly, shifted by the value
    scipy.stats.shapiro would subtract) against scipy.stats.shapiro on the trimmed stream, with outliers, ties
    and a stream that grows one value at a time."""
    rng = np.random.default_rng(n)
    d = np.abs(rng.normal(5.0, 1.0, n))
    d[:: max(1, n // 7)] = 50.0  # outliers beyond 3 sigma, and ties among them
    d[1::9] = d[0::9][: len(d[1::9])]  # more ties
    state = prada_module._ClientState()
    for chunk in np.array_split(d, 5):  # the sorted copy is kept up to date as the stream grows
        state.distances.extend(chunk.tolist())
        fast = prada_module.shapiro_w(state.stream(), ordered=state.ordered())
        slow = prada_module.shapiro_w(np.asarray(state.distances))
        assert fast == slow, (len(state.distances), fast, slow)
    np.testing.assert_array_equal(state.ordered(), np.sort(d))
    assert prada_module.shapiro_w(np.full(10, 2.0), ordered=np.full(10, 2.0)) == 0.0
