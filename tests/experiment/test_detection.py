"""Detection as a sweep input: a detector on every point's API, benign clients as points, exact queries to
detection, PRADA calibrated over many benign clients, W traces, and the detection summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import shapiro
from torch import nn

from modelsteal import PredictionAPI
from modelsteal.data import DatasetSplits, load_dataset
from modelsteal.detectors import Detector, make_detector
from modelsteal.detectors import prada as prada_module
from modelsteal.detectors.calibration import benign_streams
from modelsteal.experiment.config import parse_config
from modelsteal.experiment.detection import summarize_detection
from modelsteal.experiment.plan import plan
from modelsteal.experiment.provenance import config_hash
from modelsteal.experiment.sweep import run_sweep
from modelsteal.models import load_checkpoint


class FirstValue(Detector):
    """Test-only: flags rows whose first value exceeds 0.5."""

    name = "first-value"

    def score(self, x, probs, *, client="default"):
        return x.flatten(1)[:, 0].double()


def _api(**kw) -> PredictionAPI:
    det = FirstValue().fit(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), _tiny_data())
    det.threshold = 0.5
    return PredictionAPI(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), detector=det, input_shape=(3,), **kw)


def _tiny_data() -> DatasetSplits:
    x, y = torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])
    return DatasetSplits(name="t", x_train=x, y_train=y, x_val=x, y_val=y, x_test=x, y_test=y, num_classes=2)


def _rows(flagged_at: list[int], n: int) -> torch.Tensor:
    x = torch.zeros(n, 3)
    x[flagged_at, 0] = 1.0
    return x


@pytest.mark.parametrize("batch_size", [1, 4, 512])
def test_first_flag_is_the_exact_position_in_the_clients_stream(batch_size):
    """Alice sends 5 clean rows, then 10 rows whose 7th (index 6) and 9th are flagged: her first flagged query is
    her 12th, at every internal batch size; Bob's stream is his own, and the first flag over all clients' rows
    (Bob's 3 rows came between Alice's two batches) is row 15."""
    api = _api(batch_size=batch_size)
    api.query(_rows([], 5), client="alice")
    api.query(_rows([], 3), client="bob")
    assert api.first_flag("alice") is None and api.first_flag_total is None
    api.query(_rows([6, 8], 10), client="alice")
    api.query(_rows([1], 2), client="bob")
    assert api.first_flag("alice") == 12 and api.flags("alice") == 2
    assert api.first_flag("bob") == 5 and api.first_flag_total == 15
    assert api.flagged_clients == ["alice", "bob"]
    api.query(_rows([0], 1), client="alice")
    assert api.first_flag("alice") == 12  # the first one stays


def test_first_flag_counts_the_refused_batch_rows_as_sent():
    api = _api(response="refuse", batch_size=2)
    api.query(_rows([], 4), client="c")
    with pytest.raises(Exception, match="refused"):
        api.query(_rows([3], 5), client="c")
    assert api.first_flag("c") == 8 and api.queries("c") == 4 and api.flags("c") == 0


def _digits_prada(**options):
    model, _ = load_checkpoint("results/reproduce-digits/victim.pt")
    data = load_dataset("digits", seed=0)
    return make_detector("prada", **options).fit(model, data), data


def _replay_min_w(det, stream: torch.Tensor) -> tuple[float, list[float]]:
    """Lowest W of ``stream`` sent one row at a time to a fresh client, and W after each query (NaN early)."""
    det.reset("replay")
    ws = []
    for row in stream:
        det.score(row[None], det.posteriors(row[None]), client="replay")
        w = det.statistic("replay")
        ws.append(math.nan if w is None else w)
    det.reset("replay")
    return float(np.nanmin(ws)), ws


def test_calibrate_clients_flags_at_most_the_allowed_fraction_of_benign_clients():
    """δ is the ⌊(1 − tnr)·n⌋-th lowest of the streams' lowest W (0-based): at tnr 0.75 over 8 streams exactly 2
    streams lie strictly below it; replayed row by row, exactly those 2 are ever flagged."""
    det, data = _digits_prada(min_stream=60)
    streams = benign_streams(data.x_val, clients=8, seed=3)
    lows = [_replay_min_w(det, s)[0] for s in streams]
    delta = det.calibrate_clients(streams, tnr=0.75)
    assert delta == pytest.approx(sorted(lows)[2], abs=1e-12)
    assert det.threshold == pytest.approx(1 - delta) and det.tnr == 0.75
    assert sum(w < delta for w in lows) == 2
    assert det.calibrate_benign(data.x_val, tnr=0.75, clients=8, seed=3) == pytest.approx(delta, abs=1e-12)
    with pytest.raises(ValueError, match="longer than min_stream"):
        det.calibrate_clients([data.x_val[:60]], tnr=0.9)


def test_w_trace_is_w_of_each_prefix_of_the_stream():
    det, data = _digits_prada(min_stream=50)
    x = data.x_test[:200]
    det.score(x, det.posteriors(x), client="c")
    trace = det.w_trace("c", points=7)
    d = np.asarray(det.state_dict("c")["distances"])
    assert trace[0][0] == 51 and trace[-1][0] == len(d) and len(trace) == 7
    for n, w in trace:
        keep = d[:n][np.abs(d[:n] - d[:n].mean()) <= 3 * d[:n].std()]
        assert w == pytest.approx(shapiro(keep).statistic, abs=1e-12)
    assert det.w_trace("nobody") == []


RAW = {
    "name": "detect-tiny",
    "victim": {"dataset": "digits", "arch": "lenet", "checkpoint": "results/reproduce-digits/victim.pt"},
    "transfer": {"source": "sample-patches", "seed_size": 60},
    "defenses": [{"name": "none"}],
    "attacks": [{"name": "jbda", "clone": "lenet", "train": {"epochs": 1}, "options": {"query_batch_size": 1}}],
    "budgets": [240],
    "seeds": [0],
    "detector": {"name": "prada", "options": {"min_stream": 60}, "tnr": 0.8, "calibration_clients": 5},
    "benign": {"clients": 3, "queries": 150, "batch_size": 7},
}


def test_a_detection_sweep_reports_detection_and_benign_false_positives(tmp_path):
    cfg = parse_config(RAW)
    records = run_sweep(cfg, out_dir=tmp_path, progress=False, plots=True)
    assert [r["attack"] for r in records] == ["jbda", "benign", "benign", "benign"]
    jbda, benign = records[0], records[1:]
    # the calibrated δ is the one PRADA gets from 5 validation streams (seeds 0..4) at tnr 0.8
    det, data = _digits_prada(min_stream=60)
    delta = det.calibrate_clients(benign_streams(data.x_val, clients=5), tnr=0.8)
    assert all(r["detector_delta"] == pytest.approx(delta, abs=1e-12) for r in records)
    # each benign client is the test split in the order of its seed, 150 queries: replayed row by row through a
    # fresh PRADA with that δ, it is flagged exactly when the sweep says so, at the same query
    for r in benign:
        order = torch.randperm(len(data.x_test), generator=torch.Generator().manual_seed(r["seed"]))
        low, ws = _replay_min_w(det, data.x_test[order[:150]])
        first = next((i + 1 for i, w in enumerate(ws) if w < delta), None)
        assert r["queries"] == 150 and r["budget"] == 150 and "attacker_accuracy" not in r
        assert r["detected"] == (low < delta) and r["queries_to_detection"] == first
        assert r["min_w"] == pytest.approx(low, abs=1e-12)  # the trace ends at the whole stream's last W…
    assert jbda["queries"] == 240 and jbda["detected"] and 60 < jbda["queries_to_detection"] <= 240
    assert jbda["flagged_queries"] >= 1 and jbda["attacker_accuracy"] is not None
    # the summary counts false positives among the benign clients
    summary = {r["attack"]: r for r in summarize_detection(records)}
    assert summary["benign"]["runs"] == 3
    assert summary["benign"]["detected"] == sum(r["detected"] for r in benign)
    assert summary["jbda"]["detection_rate"] == 1.0
    assert (tmp_path / "detection.csv").read_text().splitlines()[0].startswith("defense,strength,response,attack")
    assert (tmp_path / "detection-w.png").exists()
    assert "w_trace" not in (tmp_path / "results.csv").read_text().splitlines()[0]
    cached = json.loads(next((tmp_path / "points").glob("*.json")).read_text())
    assert "w_trace" in cached


def test_the_plan_adds_benign_clients_per_operating_point_and_keeps_old_keys():
    raw = {**RAW, "defenses": [{"name": "none"}, {"name": "mad", "strengths": [0.1, 0.5]}]}
    points = plan(parse_config(raw))
    assert [(p.defense.name, p.strength, p.attack.name, p.seed) for p in points] == [
        ("none", None, "jbda", 0), ("none", None, "benign", 0), ("none", None, "benign", 1),
        ("none", None, "benign", 2),
        ("mad", 0.1, "jbda", 0), ("mad", 0.1, "benign", 0), ("mad", 0.1, "benign", 1), ("mad", 0.1, "benign", 2),
        ("mad", 0.5, "jbda", 0), ("mad", 0.5, "benign", 0), ("mad", 0.5, "benign", 1), ("mad", 0.5, "benign", 2),
    ]
    assert len({p.key for p in points}) == len(points)
    plain = {k: v for k, v in raw.items() if k not in ("detector", "benign")}
    old = plan(parse_config(plain))
    assert [p.key for p in old] != [p.key for p in points if p.attack.name == "jbda"]  # the detector is in the key
    with_none = parse_config({**plain, "detector": None, "benign": None})
    assert [p.key for p in plan(with_none)] == [p.key for p in old]
    assert config_hash(with_none) == config_hash(parse_config(plain))


def test_a_committed_sweeps_config_hash_is_unchanged():
    """Adding the detector and benign sections to the config must not move the hash of configs without them."""
    from modelsteal.experiment.config import load_config

    prov = json.loads(open("results/reproduce-digits/provenance.json").read())
    assert config_hash(parse_config(prov["config"])) == prov["config_hash"]
    assert config_hash(load_config("configs/reproduce-digits.yaml")) == prov["config_hash"]


def test_prada_state_of_one_point_does_not_leak_into_the_next(tmp_path):
    """Two seeds of one attack: each point starts with a fresh detector, so the second seed's first flag is
    not at its first query (it would be if the first seed's non-normal stream carried over)."""
    raw = {**RAW, "seeds": [0, 1]}
    raw.pop("benign")
    records = run_sweep(parse_config(raw), out_dir=tmp_path, progress=False, plots=False)
    assert all(r["queries_to_detection"] > 60 for r in records)


def test_prada_module_doc_names_the_per_client_calibration():
    assert "calibrate_clients" in prada_module.__doc__


def test_a_list_of_responses_runs_each_point_once_per_response(tmp_path):
    """Atli et al.'s Table 5 shape: the same Knockoff point answered normally and with flagged answers shuffled.
    With ``none`` the clone trains on the clean answers (L1 to them 0); with ``shuffle`` the flagged rows' answers
    are permuted (L1 > 0), and the detector (MSP at TNR 0.5) flagged the same queries in both."""
    raw = {**RAW, "attacks": [{"name": "knockoff", "clone": "lenet", "train": {"epochs": 1}}], "budgets": [200],
           "detector": {"name": "msp", "tnr": 0.5, "response": ["none", "shuffle"]}}
    raw.pop("benign")
    cfg = parse_config(raw)
    assert [p.describe()["response"] for p in plan(cfg)] == ["none", "shuffle"]
    none, shuffled = run_sweep(cfg, out_dir=tmp_path, progress=False, plots=False)
    assert (none["response"], shuffled["response"]) == ("none", "shuffle")
    assert none["flagged_queries"] == shuffled["flagged_queries"] > 0
    assert none["query_l1_mean"] == 0.0 and shuffled["query_l1_mean"] > 0.0
    rows = summarize_detection([none, shuffled])
    assert [r["response"] for r in rows] == ["none", "shuffle"]


def test_a_committed_sweeps_point_keys_are_unchanged():
    """New config fields (a victim's model file ``path``/``spec``, detectors) must not move the cache keys of
    configs without them: every point of the committed digits sweep is found under its recorded key."""
    import os

    from modelsteal.experiment.config import load_config

    keys = {p.key for p in plan(load_config("configs/reproduce-digits.yaml"))}
    recorded = {f.removesuffix(".json") for f in os.listdir("results/reproduce-digits/points")}
    assert keys == recorded


def test_a_refused_attack_is_a_record_of_the_refusal_and_the_sweep_goes_on(tmp_path):
    """With ``response: refuse`` PRADA stops JBDA at its first flag: the point's record says so (refused, the
    queries bought, no clone) instead of the sweep ending in a traceback; the same point answered normally is
    flagged at the same query and runs to its budget. One query per request: the refused batch is the flagged row."""
    raw = {**RAW, "detector": {**RAW["detector"], "response": ["none", "refuse"]}}
    raw.pop("benign")
    answered, refused = run_sweep(parse_config(raw), out_dir=tmp_path, progress=False, plots=True)
    assert answered["queries"] == 240 and answered["attacker_accuracy"] is not None and "refused" not in answered
    assert refused["refused"] is True and "refused" in refused["refusal"]
    assert refused["attacker_accuracy"] is None and refused["fidelity"] is None
    assert refused["queries_to_detection"] == answered["queries_to_detection"]
    assert refused["queries"] == refused["queries_to_detection"] - 1  # every row before the flagged one
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert "refused" in header and len((tmp_path / "results.csv").read_text().splitlines()) == 3


def test_a_detection_sweeps_attack_row_reproduces_exactly_and_a_benign_row_is_refused(tmp_path):
    """reproduce re-runs one attack row of a sweep with benign clients as a one-point sweep (before: the benign
    clients came along and the re-run returned four records for one)."""
    from modelsteal.experiment.reproduce import reproduce

    run_sweep(parse_config(RAW), out_dir=tmp_path, progress=False, plots=False)
    (point,) = reproduce(tmp_path, rows=[1], tolerance=0.0)
    assert point.within and point.now == point.committed
    with pytest.raises(ValueError, match="is a benign client's"):
        reproduce(tmp_path, rows=[2], tolerance=0.0)
