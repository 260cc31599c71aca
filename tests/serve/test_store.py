"""The key store and ledger (SQLite) and the request decoder, without a server."""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest
import torch

from modelsteal.serve.store import (
    AuthenticationError,
    BudgetExhaustedError,
    RateLimitedError,
    SQLiteStore,
    hash_key,
    open_store,
)


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "ledger.db")
    yield s
    s.close()


def test_sqlite_store_is_wal_with_full_sync(store):
    assert isinstance(store, SQLiteStore)
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_keys_are_stored_hashed_and_authenticate(store, tmp_path):
    client, key = store.create_key(name="alice", budget=10)
    assert key.startswith("msk_") and len(key) > 40
    raw = (tmp_path / "ledger.db").read_bytes() + (tmp_path / "ledger.db-wal").read_bytes()
    assert key.encode() not in raw and hash_key(key).encode() in raw
    assert store.authenticate(key).name == "alice"
    with pytest.raises(AuthenticationError, match="invalid API key"):
        store.authenticate(key + "x")
    with pytest.raises(AuthenticationError, match="missing"):
        store.authenticate("")
    with pytest.raises(ValueError, match="already has an active key"):
        store.create_key(name="alice")
    store.revoke("alice")
    with pytest.raises(AuthenticationError, match="revoked") as e:
        store.authenticate(key)
    assert e.value.code == "revoked_key"
    _, key2 = store.create_key(name="alice")  # a name is reusable once revoked
    assert store.authenticate(key2).name == "alice"
    with pytest.raises(ValueError, match="invalid client name"):
        store.create_key(name="no spaces")
    with pytest.raises(ValueError, match="no active key"):
        store.revoke("nobody")


def test_reserve_enforces_budget_atomically_and_records(store):
    client, _ = store.create_key(name="a", budget=10)
    entry, after = store.reserve(client.id, 4)
    assert after.queries == 4 and after.remaining == 6 and entry.n == 4
    with pytest.raises(BudgetExhaustedError, match="6 left"):
        store.reserve(client.id, 7)
    store.reserve(client.id, 6)
    with pytest.raises(BudgetExhaustedError):
        store.reserve(client.id, 1)
    assert [e.n for e in store.ledger(client_id=client.id)] == [4, 6]
    assert store.client(client.id).queries == 10


def test_release_undoes_a_reservation(store):
    client, _ = store.create_key(name="a")
    entry, _ = store.reserve(client.id, 5)
    store.release(entry.id)
    assert store.client(client.id).queries == 0 and store.ledger() == []


def test_rate_limit_token_bucket(store):
    client, _ = store.create_key(name="a", rate_limit=10.0)
    t = 1_000_000.0
    store.reserve(client.id, 8, now=t)            # bucket 10 -> 2
    store.reserve(client.id, 5, now=t)            # 2 > 0 -> -3 (paid for by waiting)
    with pytest.raises(RateLimitedError) as e:
        store.reserve(client.id, 1, now=t + 0.1)  # -3 + 1 = -2
    assert e.value.retry_after == pytest.approx(0.2)
    store.reserve(client.id, 1, now=t + 0.31)     # refilled to +0.1
    assert store.client(client.id).queries == 14


def test_concurrent_reservations_from_two_connections_are_exact(tmp_path):
    path = tmp_path / "ledger.db"
    a, b = open_store(path), open_store(path)
    try:
        client, _ = a.create_key(name="c", budget=1000)

        def worker(s):
            for _ in range(60):
                try:
                    s.reserve(client.id, 7)
                except BudgetExhaustedError:
                    pass

        threads = [threading.Thread(target=worker, args=(s,)) for s in (a, b, a, b)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        final = a.client(client.id)
        assert final.queries == 7 * (1000 // 7)  # the budget is never exceeded
        assert sum(e.n for e in b.ledger(client_id=client.id)) == final.queries
    finally:
        a.close()
        b.close()


def test_group_commit_keeps_every_reservation_exact(store):
    client, _ = store.create_key(name="g", budget=300)
    other, _ = store.create_key(name="h")
    ids: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def worker(cid: int) -> None:
        for _ in range(20):
            try:
                entry, after = store.reserve(cid, 3)
            except BudgetExhaustedError as e:
                with lock:
                    refused.append(str(e))
            else:
                assert after.queries <= 300 or cid == other.id
                with lock:
                    ids.append(entry.id)

    threads = [threading.Thread(target=worker, args=(client.id if k % 2 else other.id,)) for k in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not any(th.is_alive() for th in threads)
    assert store.client(client.id).queries == 300 and store.client(other.id).queries == 8 * 20 * 3
    assert len(ids) == len(set(ids)) == 100 + 160 and len(refused) == 160 - 100
    assert sorted(ids) == [e.id for e in store.ledger()]


def test_a_failed_ledger_write_records_nothing_and_the_store_goes_on(store):
    from modelsteal.serve.store import LedgerWriteError

    client, _ = store.create_key(name="a")
    with pytest.raises(LedgerWriteError, match="ledger failed"):
        store.reserve(client.id, 2, inputs=object())  # not bindable: the transaction fails
    assert store.client(client.id).queries == 0 and store.ledger() == []
    store.reserve(client.id, 1)
    assert store.client(client.id).queries == 1


def test_ledger_survives_reopening_and_records_inputs(tmp_path):
    path = tmp_path / "ledger.db"
    with open_store(f"sqlite:///{path}") as s:
        client, key = s.create_key(name="a")
        s.reserve(client.id, 2, inputs=np.ones((2, 3), dtype="<f4").tobytes())
    with open_store(path) as s:
        assert s.authenticate(key).queries == 2
        (blob,) = s.recorded_inputs(client.id)
        assert np.frombuffer(blob, dtype="<f4").tolist() == [1.0] * 6


@pytest.mark.parametrize("url, message", [
    ("mysql://localhost/db", "unsupported store URL"),
    ("sqlite://", "must be a file"),
    ("sqlite:///:memory:", "must be a file"),
    ("/no/such/dir/ledger.db", "does not exist"),
])
def test_bad_store_urls(url, message):
    with pytest.raises(ValueError, match=message):
        open_store(url)


def test_store_rejects_a_file_that_is_not_sqlite(tmp_path):
    p = tmp_path / "junk.db"
    p.write_bytes(b"not a database" * 100)
    with pytest.raises(ValueError, match="not a usable modelsteal store"):
        open_store(p)


# -- the request decoder ------------------------------------------------------------------------------------
pytest.importorskip("fastapi")
from modelsteal.serve.app import APIError, decode_request, encode_tensor  # noqa: E402


def _decode(payload, **kw):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decode_request(body, input_shape=(1, 2, 2), max_batch=kw.pop("max_batch", 4), **kw)


def test_decode_json_and_base64_agree_exactly():
    x = torch.rand(3, 1, 2, 2)
    a, enc_a = _decode({"inputs": x.tolist()})
    b, enc_b = _decode({"inputs": {"dtype": "float32", "shape": [3, 1, 2, 2],
                                   "base64": base64.b64encode(x.numpy().tobytes()).decode()}})
    assert enc_a == "json" and enc_b == "base64"
    assert torch.equal(a, x) and torch.equal(b, x)
    y = torch.rand(3, 5)
    assert torch.equal(torch.tensor(json.loads(json.dumps(encode_tensor(y, "json")))), y)


@pytest.mark.parametrize("payload, status, message", [
    (b"{", 400, "malformed JSON"),
    (b"\xff\xfe\x00", 400, "UTF-8"),
    ([1, 2], 422, "JSON object"),
    ({"x": 1}, 422, "unknown field"),
    ({}, 422, "no 'inputs'"),
    ({"inputs": []}, 422, "empty batch"),
    ({"inputs": [[[0.5, 0.5], [0.5, 0.5]]]}, 422, "wrap a single example"),
    ({"inputs": [[[[0.5, 0.5], [0.5]]]]}, 422, "ragged"),
    ({"inputs": [[[["a", "b"], ["c", "d"]]]]}, 422, "strings"),
    ({"inputs": [[[[0.5, None], [0.5, 0.5]]]]}, 422, "null"),
    ({"inputs": [[[[0.5, True], [0.5, 0.5]]]]}, 422, "boolean"),
    ({"inputs": [[[[0.5, 10**400], [0.5, 0.5]]]]}, 422, "too large"),
    ({"inputs": [[[[0.5, 0.5], [0.5, 0.5]]]] * 5}, 413, "maximum of 4 rows"),
    ({"inputs": [[[[0.5, 1.5], [0.5, 0.5]]]]}, 422, "must lie in"),
    ({"inputs": [[[[0.5, -0.01], [0.5, 0.5]]]]}, 422, "must lie in"),
    ({"inputs": "AAAA"}, 422, "nested array"),
    ({"inputs": {"dtype": "float64", "shape": [1, 1, 2, 2], "base64": ""}}, 422, "float32"),
    ({"inputs": {"dtype": "float32", "shape": [1, 1, 2, 2], "base64": "!!"}}, 422, "not valid base64"),
    ({"inputs": {"dtype": "float32", "shape": [1, 1, 2, 2], "base64": "AAAA"}}, 422, "needs 16"),
    ({"inputs": {"dtype": "float32", "shape": [9, 1, 2, 2], "base64": ""}}, 413, "maximum"),
    ({"inputs": [[[[0.5, 0.5], [0.5, 0.5]]]], "encoding": "xml"}, 422, "encoding"),
])
def test_decode_rejects_bad_requests(payload, status, message):
    with pytest.raises(APIError) as e:
        _decode(payload)
    assert e.value.status == status and message in e.value.message


def test_decode_rejects_nan_and_inf_and_tolerates_tiny_overshoot():
    for bad in (b'{"inputs": [[[[NaN, 0], [0, 0]]]]}', b'{"inputs": [[[[Infinity, 0], [0, 0]]]]}',
                b'{"inputs": [[[[1e999, 0], [0, 0]]]]}'):
        with pytest.raises(APIError, match="NaN or Infinity"):
            _decode(bad)
    x, _ = _decode({"inputs": [[[[1 + 1e-9, -1e-9], [0, 1]]]]})
    assert x.min() == 0 and x.max() == 1


@pytest.mark.parametrize("sync, pragma", [("full", 2), ("normal", 1)])
def test_ledger_sync_sets_sqlite_synchronous(tmp_path, sync, pragma):
    # Bugs caught: --ledger-sync ignored (always FULL, or NORMAL by default: the power-loss promise gone).
    with open_store(tmp_path / f"{sync}.db", sync=sync) as store:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == pragma
    with pytest.raises(ValueError, match="ledger sync must be one of full, normal"):
        open_store(tmp_path / "x.db", sync="off")
