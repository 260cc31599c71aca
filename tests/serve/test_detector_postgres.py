"""PRADA's per-client state in a PostgreSQL store: two workers (two apps, two connection pools) answering one
client in turns and in a race keep one state, equal to an uninterrupted in-process PRADA's.

Off by default, like ``tests/serve/test_postgres.py`` (whose throwaway-cluster fixture this reuses): set
``MODELSTEAL_TEST_POSTGRES=1``."""

from __future__ import annotations

import pytest

from serve.test_postgres import pg_url  # noqa: F401  (module-level skip when PostgreSQL tests are off)

pytestmark = pytest.mark.postgres

import httpx  # noqa: E402

from modelsteal.serve.detector_state import DetectorJournal  # noqa: E402
from modelsteal.serve.store import DetectorStateConflict, open_store  # noqa: E402
from serve.test_detector import _blackbox, _transport  # noqa: E402
from serve.test_detector_state import _app, _reference, _stored_state, _streams  # noqa: E402


def test_postgres_workers_keep_one_prada_state_per_client(pg_url, digits, digits_victim, monkeypatch):  # noqa: F811
    # Bugs caught: the journal's version check or row lock missing on PostgreSQL (a race forks the journal or is
    # a 500); a worker trusting its in-memory state; the payload not round-tripping through BYTEA.
    alice, bob = _streams(digits)
    s1, s2 = open_store(pg_url), open_store(pg_url)
    _, key_a = s1.create_key(name="pg-prada-alice")
    _, key_b = s1.create_key(name="pg-prada-bob")
    w1, _ = _app(s1, digits, digits_victim)
    w2, _ = _app(s2, digits, digits_victim)
    a = [_blackbox(w1, key_a), _blackbox(w2, key_a)]
    for i, xb in enumerate(alice[:10]):
        a[i % 2].query(xb)
        if i < 4:
            _blackbox(w2, key_b).query(bob[i])
    original, raced = DetectorJournal.load, []

    def load_then_race(self, client_id, name):
        original(self, client_id, name)
        if self.store is s1 and not raced:
            raced.append(True)
            a[1].query(alice[10])

    monkeypatch.setattr(DetectorJournal, "load", load_then_race)
    with httpx.Client(transport=_transport(w1), base_url="http://app") as http:
        r = http.post("/v1/predict", json={"inputs": alice[11].tolist()}, headers={"Authorization": f"Bearer {key_a}"})
    assert r.status_code == 200, r.text
    ids = {c.name: c.id for c in s1.clients()}
    assert _stored_state(s1, ids["pg-prada-alice"]) == _reference(digits, digits_victim, alice[:12])[0]
    assert _stored_state(s2, ids["pg-prada-bob"]) == _reference(digits, digits_victim, bob[:4])[0]
    with pytest.raises(DetectorStateConflict):
        s1.save_detector_state(ids["pg-prada-bob"], seq=2, detector="{}", kind="delta", payload=b"{}")
    s1.close()
    s2.close()
