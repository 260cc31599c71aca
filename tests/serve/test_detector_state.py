"""A server with a stateful detector (PRADA): each client's state lives in the store, is restored after a restart,
is one state when several workers share the store (also when they race on one client), survives a refused
batch, never leaks between clients, and `modelsteal keys show` prints it."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from modelsteal import PredictionAPI, QueryRefusedError  # noqa: E402
from modelsteal.cli.main import main  # noqa: E402
from modelsteal.detectors import make_detector  # noqa: E402
from modelsteal.serve.app import create_app  # noqa: E402
from modelsteal.serve.detector_state import DetectorJournal, replay  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402
from serve.test_detector import _blackbox, _transport  # noqa: E402

MIN_STREAM = 20


def _prada(digits, victim, **options):
    det = make_detector("prada", min_stream=MIN_STREAM, **options).fit(victim, digits)
    return det


def _app(store, digits, victim, *, response="none", **options):
    det = _prada(digits, victim, **options)
    return create_app(PredictionAPI(victim, detector=det, response=response), store=store), det


def _stored_state(store, client_id: int) -> dict:
    """The client's state rebuilt from the store's journal alone."""
    det = make_detector("prada", min_stream=MIN_STREAM)
    for entry in store.detector_entries(client_id):
        replay(det, "x", entry.kind, entry.payload)
    return det.state_dict("x")


def _reference(digits, victim, batches: list[torch.Tensor]) -> tuple[dict, int]:
    """State and flag count of one in-process PRADA fed ``batches`` in order (no server, no store)."""
    det = _prada(digits, victim)
    flagged = 0
    for xb in batches:
        flagged += int(det.flag(xb, det.posteriors(xb), client="r").sum())
    return det.state_dict("r"), flagged


def _streams(digits) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Alice sends digits in batches of 1 to 9 rows; Bob sends perturbed copies of a few (a JBDA-like stream)."""
    sizes = [1 + i % 9 for i in range(20)]  # 93 rows
    alice = list(torch.split(digits.x_train[:sum(sizes)], sizes))
    g = torch.Generator().manual_seed(1)
    seeds = digits.x_test[:6]
    bob = [(seeds + 0.05 * torch.sign(torch.randn(seeds.shape, generator=g))).clamp(0, 1) for _ in range(12)]
    return alice, bob


def test_state_survives_a_restart_and_clients_never_share_it(tmp_path, digits, digits_victim):
    # Bugs caught: state kept only in memory (after the restart Alice's stream starts again: her stored state
    # and /v1/usage flags differ from the uninterrupted reference); one state for all keys (Bob's queries
    # land in Alice's stream); state saved from the wrong base (a delta replayed twice or skipped).
    alice, bob = _streams(digits)
    path = tmp_path / "ledger.db"
    store = open_store(path)
    _, key_a = store.create_key(name="alice")
    _, key_b = store.create_key(name="bob")
    app, _ = _app(store, digits, digits_victim)
    a, b = _blackbox(app, key_a), _blackbox(app, key_b)
    half = len(alice) // 2
    for i, xb in enumerate(alice[:half]):
        a.query(xb)
        if i < 6:
            b.query(bob[i])
    store.close()

    store = open_store(path)  # a restarted server: fresh detector, same store
    app, det = _app(store, digits, digits_victim)
    a, b = _blackbox(app, key_a), _blackbox(app, key_b)
    for i, xb in enumerate(alice[half:]):
        a.query(xb)
        if i + 6 < len(bob):
            b.query(bob[i + 6])
    ids = {c.name: c.id for c in store.clients()}
    ref_a, flags_a = _reference(digits, digits_victim, alice)
    ref_b, flags_b = _reference(digits, digits_victim, bob)
    assert _stored_state(store, ids["alice"]) == ref_a
    assert _stored_state(store, ids["bob"]) == ref_b
    assert det.state_dict("alice") == ref_a and det.state_dict("bob") == ref_b  # the live state too
    assert flags_b > 0 and (a.usage()["flagged"], b.usage()["flagged"]) == (flags_a, flags_b)
    assert store.detector_version(ids["alice"]) == len(alice)  # one journal entry per answered request
    store.close()


def test_two_workers_sharing_a_store_see_one_state_per_client(tmp_path, digits, digits_victim):
    # Bug caught: a worker trusting its in-memory state without checking the store's newest entry (each
    # worker would hold half of Alice's stream, and its saves would not extend the other's).
    alice, _ = _streams(digits)
    path = tmp_path / "ledger.db"
    store1, store2 = open_store(path), open_store(path)
    _, key = store1.create_key(name="alice")
    w1, _ = _app(store1, digits, digits_victim)
    w2, det2 = _app(store2, digits, digits_victim)
    clients = [_blackbox(w1, key), _blackbox(w2, key)]
    for i, xb in enumerate(alice):
        clients[(i // 3) % 2].query(xb)  # runs of three requests on each worker
    ref, _ = _reference(digits, digits_victim, alice)
    cid = store1.clients()[0].id
    assert _stored_state(store1, cid) == ref
    _blackbox(w2, key).usage()
    store1.close()
    store2.close()


def test_a_race_between_workers_rescores_on_the_newer_state(tmp_path, digits, digits_victim, monkeypatch):
    # Bug caught: a save that does not check the store is still at the entry it loaded (two workers would both
    # append "entry k+1" from the same base: the journal's key refuses the second, a 500 for the client, and
    # without that key the journal would fork and the stored state be neither order).
    alice, _ = _streams(digits)
    path = tmp_path / "ledger.db"
    store1, store2 = open_store(path), open_store(path)
    _, key = store1.create_key(name="alice")
    w1, _ = _app(store1, digits, digits_victim)
    w2, _ = _app(store2, digits, digits_victim)
    c1, c2 = _blackbox(w1, key), _blackbox(w2, key)
    c1.query(alice[0])
    original = DetectorJournal.load
    raced = []

    def load_then_race(self, client_id, name):
        original(self, client_id, name)
        if self.store is store1 and not raced:  # worker 1 loaded; worker 2 answers the same client first
            raced.append(True)
            c2.query(alice[1])

    monkeypatch.setattr(DetectorJournal, "load", load_then_race)
    with httpx.Client(transport=_transport(w1), base_url="http://app") as http:  # no client-side retries
        r = http.post("/v1/predict", json={"inputs": alice[2].tolist()}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text  # conflicted once, reloaded (now with alice[1]) and scored again
    assert raced
    ref, _ = _reference(digits, digits_victim, alice[:3])
    cid = store1.clients()[0].id
    assert _stored_state(store1, cid) == ref and store1.detector_version(cid) == 3
    store1.close()
    store2.close()


def test_a_refused_batch_still_moves_the_state_and_keys_show_prints_it(tmp_path, digits, digits_victim, capsys):
    # Bugs caught: the state of a refused batch not saved (the detector saw those queries, so after a restart
    # the stream would differ from the live one); `keys show` missing the detector or showing another client's.
    _, bob = _streams(digits)
    path = tmp_path / "ledger.db"
    store = open_store(path)
    _, key = store.create_key(name="bob")
    store.create_key(name="carol")
    app, det = _app(store, digits, digits_victim, response="refuse")
    det.threshold = 1 - 0.999  # flag W < 0.999: Bob's stream is refused once the test runs
    bb = _blackbox(app, key)
    refused = 0
    for xb in bob:
        try:
            bb.query(xb)
        except QueryRefusedError:
            refused += 1
    assert refused > 0
    cid = store.clients()[0].id
    assert _stored_state(store, cid) == det.state_dict("bob")
    assert bb.usage()["queries"] == 6 * (len(bob) - refused)  # refused rows are not in the ledger
    store.close()

    assert main(["keys", "show", "--store", str(path), "--name", "bob"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "bob" and shown["queries"] == 6 * (len(bob) - refused)
    assert shown["detector"]["name"] == "prada" and shown["detector"]["entries"] == len(bob)
    summary = shown["detector"]["summary"]
    assert summary["queries_seen"] == 6 * len(bob) and summary["stream"] == len(det.state_dict("bob")["distances"])
    assert summary["W"] == pytest.approx(det.statistic("bob"))
    assert main(["keys", "show", "--store", str(path), "--name", "carol"]) == 0
    assert json.loads(capsys.readouterr().out)["detector"] is None
    assert main(["keys", "show", "--store", str(path), "--name", "dave"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no client named 'dave'" in err


def test_the_start_up_measurement_runs_with_the_detector_off(digits, digits_victim, capsys):
    # Bug caught: `serve --detector msp --response refuse` dying at start-up with a QueryRefusedError traceback
    # (the test split's least confident examples are flagged and the measurement's batch refused), or, with
    # other responses, reporting the response's answers as the defense's cost.
    from modelsteal.cli.serve import report_defense_cost

    det = make_detector("msp").fit(digits_victim, digits)
    det.threshold = -1.0  # flags every query
    api = PredictionAPI(digits_victim, detector=det, response="refuse")
    report_defense_cost(api, {"dataset": "digits", "defense": {"description": "none"}}, eval_size=50, data_dir=None)
    assert "defended top-1 accuracy" in capsys.readouterr().out
    assert api.detector is det
