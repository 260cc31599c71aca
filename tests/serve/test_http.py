"""``modelsteal serve`` as a real process on loopback: endpoints, bad inputs, keys, budgets, load."""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serve_helpers import INPUT_SHAPE, NUM_CLASSES, ServerProcess, make_checkpoint  # noqa: E402

from modelsteal import BudgetExceededError, PredictionAPI  # noqa: E402
from modelsteal.cli.main import main  # noqa: E402
from modelsteal.models import load_checkpoint  # noqa: E402
from modelsteal.serve.client import HTTPBlackBox  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402

MAX_BATCH = 64
MAX_BODY = 300_000
KEYS = {  # name -> (budget, rate limit)
    "corpus": (None, None), "alice": (None, None), "bob": (None, None), "small": (10, None),
    "slow": (None, 20.0), "revokee": (None, None), "exact": (None, None),
    **{f"load{i}": (None, None) for i in range(4)},
}


@pytest.fixture(scope="module", params=["0", "5"], ids=["batching-off", "batching-on"])
def server(tmp_path_factory, request):
    d = tmp_path_factory.mktemp("serve")
    ckpt = make_checkpoint(d / "victim.pt")
    store_url = str(d / "ledger.db")
    keys = {}
    with open_store(store_url) as store:
        for name, (budget, rate) in KEYS.items():
            keys[name] = store.create_key(name=name, budget=budget, rate_limit=rate)[1]
    srv = ServerProcess(model=ckpt, store=store_url, log_path=d / "server.log",
                        args=["--max-batch", str(MAX_BATCH), "--max-body-bytes", str(MAX_BODY),
                              "--max-batch-delay-ms", request.param])
    with srv:
        srv.keys = keys
        srv.ckpt = ckpt
        srv.store_url = store_url
        yield srv
        assert srv.proc.poll() is None, f"server died during the tests:\n{srv.log()}"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _rows(n: int, seed: int = 0) -> list:
    return torch.rand(n, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed)).tolist()


def _usage(server, name: str) -> dict:
    r = httpx.get(server.url + "/v1/usage", headers=_auth(server.keys[name]), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_info_health_and_docs(server):
    info = httpx.get(server.url + "/v1/info", timeout=10).json()
    assert info["input_shape"] == list(INPUT_SHAPE) and info["num_classes"] == NUM_CLASSES
    assert info["defense"]["name"] == "none" and info["output"] == "probs" and info["max_batch"] == MAX_BATCH
    assert httpx.get(server.url + "/healthz", timeout=10).json() == {"status": "ok"}
    spec = httpx.get(server.url + "/openapi.json", timeout=10).json()
    assert {"/v1/predict", "/v1/usage", "/v1/info", "/healthz"} <= set(spec["paths"])
    assert "requestBody" in spec["paths"]["/v1/predict"]["post"]
    assert httpx.get(server.url + "/docs", timeout=10).status_code == 200


def _nan_body() -> bytes:
    rows = _rows(2)
    rows[1][0][3][3] = float("nan")
    return json.dumps({"inputs": rows}).encode()


BAD_REQUESTS = [
    # (id, headers: "good" | "none" | dict, body bytes, status, message fragment)
    ("no-key", "none", json.dumps({"inputs": _rows(1)}).encode(), 401, "missing API key"),
    ("basic-auth", {"Authorization": "Basic dXNlcjpwYXNz"}, json.dumps({"inputs": _rows(1)}).encode(), 401,
     "Bearer"),
    ("unknown-key", {"Authorization": "Bearer msk_not-a-real-key"}, json.dumps({"inputs": _rows(1)}).encode(), 401,
     "invalid API key"),
    ("malformed-json", "good", b'{"inputs": [[', 400, "malformed JSON"),
    ("empty-body", "good", b"", 400, "empty request body"),
    ("not-an-object", "good", b"[1, 2, 3]", 422, "JSON object"),
    ("no-inputs", "good", b'{"data": []}', 422, "unknown field"),
    ("impersonation", "good", json.dumps({"inputs": _rows(1), "client": "alice"}).encode(), 422, "unknown field"),
    ("wrong-shape", "good", json.dumps({"inputs": [[0.5] * 64]}).encode(), 422, "(N, 1, 8, 8)"),
    ("unbatched", "good", json.dumps({"inputs": _rows(1)[0]}).encode(), 422, "wrap a single example"),
    ("ragged", "good", json.dumps({"inputs": [_rows(1)[0], [[0.5]]]}).encode(), 422, "ragged"),
    ("strings", "good", json.dumps({"inputs": [[[["a"] * 8] * 8]]}).encode(), 422, "strings"),
    ("nulls", "good", json.dumps({"inputs": [[[[None] * 8] * 8]]}).encode(), 422, "null"),
    ("booleans", "good", json.dumps({"inputs": [[[[True] * 8] * 8]]}).encode(), 422, "booleans"),
    ("nan", "good", _nan_body(), 422, "NaN or Infinity (first in row 1)"),
    ("infinity", "good", json.dumps({"inputs": [[[[float("inf")] * 8] * 8]]}).encode(), 422, "NaN or Infinity"),
    ("above-range", "good", json.dumps({"inputs": [[[[255.0] * 8] * 8]]}).encode(), 422, "must lie in [0, 1]"),
    ("below-range", "good", json.dumps({"inputs": [[[[-0.5] * 8] * 8]]}).encode(), 422, "must lie in [0, 1]"),
    ("oversized-batch", "good", json.dumps({"inputs": [[[[0.5] * 8] * 8]] * (MAX_BATCH + 1)}).encode(), 413,
     f"maximum of {MAX_BATCH} rows"),
    ("oversized-body", "good", b'{"inputs": ' + b" " * MAX_BODY + b"[]}", 413, "request body of"),
    ("bad-base64", "good", b'{"inputs": {"dtype": "float32", "shape": [1, 1, 8, 8], "base64": "@@@"}}', 422,
     "not valid base64"),
    ("bad-dtype", "good", b'{"inputs": {"dtype": "float16", "shape": [1, 1, 8, 8], "base64": ""}}', 422, "float32"),
]


@pytest.mark.parametrize("headers, body, status, message", [c[1:] for c in BAD_REQUESTS],
                         ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_naming_the_problem(server, headers, body, status, message):
    if headers == "good":
        headers = _auth(server.keys["corpus"])
    elif headers == "none":
        headers = {}
    r = httpx.post(server.url + "/v1/predict", headers={**headers, "Content-Type": "application/json"},
                   content=body, timeout=20)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert message in detail, detail


def test_bad_requests_cost_nothing_and_the_server_keeps_serving(server):
    r = httpx.post(server.url + "/v1/predict", headers=_auth(server.keys["corpus"]), json={"inputs": _rows(2)},
                   timeout=10)
    assert r.status_code == 200 and len(r.json()["outputs"]) == 2
    assert _usage(server, "corpus")["queries"] == 2  # only the one good request counted
    assert httpx.get(server.url + "/v1/predict", timeout=10).status_code == 405


def _raw(server, data: bytes, *, read: bool = True) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        if not read:
            return b""
        chunks = []
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
                if b"\r\n\r\n" in b"".join(chunks) and b'"detail"' in b"".join(chunks):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def test_raw_socket_abuse_does_not_hurt_the_server(server):
    key = server.keys["corpus"]
    assert b" 400 " in _raw(server, b"HELLO WORLD\r\n\r\n").split(b"\r\n")[0] + b" "
    huge = _raw(server, (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n").encode())
    assert huge.startswith(b"HTTP/1.1 413") and b"exceeds the maximum" in huge
    _raw(server, (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Length: 5000\r\n\r\n{{\"inputs\": [[").encode(), read=False)  # truncated, then gone
    bad_len = _raw(server, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert bad_len.startswith(b"HTTP/1.1 400")
    assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200


def test_http_answers_equal_in_process_answers_exactly(server):
    model, meta = load_checkpoint(server.ckpt)
    x = torch.rand(70, *INPUT_SHAPE, generator=torch.Generator().manual_seed(3))
    api = PredictionAPI(model, input_shape=meta["input_shape"])
    # the same 32-row batches the client sends: on some CPUs the kernels' results depend on the batch size
    expected = torch.cat([api.query(xb) for xb in x.split(32)])
    for binary in (True, False):
        with HTTPBlackBox(server.url, server.keys["exact"], batch_size=32, binary=binary) as bb:
            assert bb.input_shape == INPUT_SHAPE and bb.num_classes == NUM_CLASSES
            y = bb.query(x)
            assert y.dtype == torch.float32 and y.device.type == "cpu"
            assert torch.equal(y, expected), f"binary={binary}"
    assert _usage(server, "exact")["queries"] == 140


def test_two_keys_are_isolated(server):
    a, b = server.keys["alice"], server.keys["bob"]
    assert httpx.post(server.url + "/v1/predict", headers=_auth(a), json={"inputs": _rows(5)}, timeout=10).is_success
    assert httpx.post(server.url + "/v1/predict", headers=_auth(b), json={"inputs": _rows(3)}, timeout=10).is_success
    ua, ub = _usage(server, "alice"), _usage(server, "bob")
    assert (ua["client"], ua["queries"]) == ("alice", 5) and (ub["client"], ub["queries"]) == ("bob", 3)
    assert "bob" not in json.dumps(ua) and "alice" not in json.dumps(ub)
    # no field of a request can name or reset another client
    for extra in ({"client": "bob"}, {"reset": True}):
        r = httpx.post(server.url + "/v1/predict", headers=_auth(a), json={"inputs": _rows(1), **extra}, timeout=10)
        assert r.status_code == 422
    assert httpx.post(server.url + "/v1/usage", headers=_auth(a), timeout=10).status_code == 405
    assert _usage(server, "bob")["queries"] == 3 and _usage(server, "alice")["queries"] == 5


def test_budget_is_enforced_per_key(server):
    key = server.keys["small"]
    url = server.url + "/v1/predict"
    assert httpx.post(url, headers=_auth(key), json={"inputs": _rows(8)}, timeout=10).status_code == 200
    r = httpx.post(url, headers=_auth(key), json={"inputs": _rows(3)}, timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "budget_exhausted" and "2 left" in r.json()["detail"]
    assert httpx.post(url, headers=_auth(key), json={"inputs": _rows(2)}, timeout=10).status_code == 200
    r = httpx.post(url, headers=_auth(key), json={"inputs": _rows(1)}, timeout=10)
    assert r.status_code == 403 and "exhausted" in r.json()["detail"]
    usage = _usage(server, "small")
    assert usage["queries"] == 10 and usage["remaining"] == 0 and usage["flags"]["budget_exhausted"]
    with HTTPBlackBox(server.url, key) as bb, pytest.raises(BudgetExceededError):
        bb.query(torch.rand(1, *INPUT_SHAPE))
    assert httpx.post(url, headers=_auth(server.keys["bob"]), json={"inputs": _rows(1)}, timeout=10).is_success


def test_rate_limit_answers_429_with_retry_after_and_the_client_waits(server):
    key = server.keys["slow"]  # 20 queries per second
    url = server.url + "/v1/predict"
    assert httpx.post(url, headers=_auth(key), json={"inputs": _rows(30)}, timeout=10).status_code == 200
    r = httpx.post(url, headers=_auth(key), json={"inputs": _rows(1)}, timeout=10)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "rate limit" in r.json()["detail"]
    assert _usage(server, "slow")["flags"]["rate_limited"]
    t0 = time.monotonic()
    with HTTPBlackBox(server.url, key, batch_size=10, backoff=0.05) as bb:
        assert bb.query(torch.rand(20, *INPUT_SHAPE)).shape == (20, NUM_CLASSES)
    assert 0.3 < time.monotonic() - t0 < 20
    assert _usage(server, "slow")["queries"] == 50


def test_revoked_key_is_refused(server, capsys):
    key = server.keys["revokee"]
    assert httpx.post(server.url + "/v1/predict", headers=_auth(key), json={"inputs": _rows(1)}, timeout=10).is_success
    assert main(["keys", "revoke", "--store", server.store_url, "--name", "revokee"]) == 0
    assert "revoked key" in capsys.readouterr().out
    r = httpx.post(server.url + "/v1/predict", headers=_auth(key), json={"inputs": _rows(1)}, timeout=10)
    assert r.status_code == 403 and "revoked" in r.json()["detail"]
    assert httpx.get(server.url + "/v1/usage", headers=_auth(key), timeout=10).status_code == 403
    with pytest.raises(PermissionError, match="revoked"):
        HTTPBlackBox(server.url, key).query(torch.rand(1, *INPUT_SHAPE))


def test_keys_cli_create_prints_the_key_alone_on_its_last_line(server, capsys):
    assert main(["keys", "create", "--store", server.store_url, "--name", "carol", "--budget", "7"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    with HTTPBlackBox(server.url, key) as bb:
        bb.query(torch.rand(7, *INPUT_SHAPE))
        assert bb.usage()["queries"] == 7 and bb.usage()["budget"] == 7
    assert main(["keys", "list", "--store", server.store_url]) == 0
    listing = capsys.readouterr().out
    assert "carol" in listing and key not in listing
    assert main(["keys", "create", "--store", server.store_url, "--name", "carol"]) == 2
    assert "already has an active key" in capsys.readouterr().err


def test_load_many_concurrent_clients_all_answered_with_exact_counts(server):
    n_threads_per_key, n_requests = 4, 12
    sent: dict[str, int] = {f"load{i}": 0 for i in range(4)}
    failures: list[str] = []
    lock = threading.Lock()

    def worker(name: str, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, headers=_auth(server.keys[name]), timeout=30) as http:
            for i in range(n_requests):
                n = rng.randint(1, 16)
                r = http.post("/v1/predict", json={"inputs": _rows(n, seed=seed * 100 + i)})
                if r.status_code != 200 or len(r.json()["outputs"]) != n:
                    with lock:
                        failures.append(f"{name}: {r.status_code} {r.text[:200]}")
                    return
                with lock:
                    sent[name] += n

    threads = [threading.Thread(target=worker, args=(name, 10 * k + j))
               for k, name in enumerate(sent) for j in range(n_threads_per_key)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads), "load test did not finish in time"
    assert not failures, failures
    assert time.monotonic() - t0 < 90
    with open_store(server.store_url) as store:
        by_name = {c.name: c for c in store.clients()}
        for name, rows in sent.items():
            assert _usage(server, name)["queries"] == rows
            assert by_name[name].requests == n_threads_per_key * n_requests
            assert sum(e.n for e in store.ledger(client_id=by_name[name].id)) == rows


@pytest.mark.parametrize("argv, message", [
    (["--model", "no-such-checkpoint.pt"], "does not exist"),
    (["--defense", "no-such-defense"], "known defenses"),
    (["--defense-option", "epsilon"], "expects key=value"),
    (["--store", "mysql://localhost/x"], "unsupported store URL"),
    (["--output", "fancy"], "unknown output format"),
])
def test_serve_cli_errors_are_one_line(server, tmp_path, capsys, argv, message):
    args = ["serve", "--model", str(server.ckpt), "--store", str(tmp_path / "x.db"), "--port", "0", *argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
