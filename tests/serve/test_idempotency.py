"""Retry-safe queries (issue 29): the connection is cut after the server has answered (a loopback proxy drops
the answer), ``HTTPBlackBox`` retries with the same ``Idempotency-Key``, and the retry is answered from the
store without being counted or scored again; SQLite and PostgreSQL (``MODELSTEAL_TEST_POSTGRES=1``)."""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serve_helpers import INPUT_SHAPE, NUM_CLASSES, ServerProcess  # noqa: E402

from modelsteal import PredictionAPI  # noqa: E402
from modelsteal.models import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from modelsteal.serve.client import HTTPBlackBox  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402

PRADA = ["--detector", "prada", "--detector-option", "min_stream=20", "--detector-option", "delta=0.97",
         "--detector-tnr", "none", "--eval-size", "0"]

if os.environ.get("MODELSTEAL_TEST_POSTGRES") == "1":
    from .test_postgres import pg_url  # noqa: F401 - the throwaway PostgreSQL cluster fixture


class DroppingProxy:
    """A loopback TCP proxy to ``port`` that, while ``drop`` is set, reads the server's whole answer to a
    ``POST /v1/predict`` and then closes the client's connection instead of forwarding it (once per ``drop``)."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.drop = threading.Event()
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.upstream))
        armed = threading.Event()

        def upstream_pump() -> None:
            try:
                while data := conn.recv(65536):
                    if b"POST /v1/predict" in data and self.drop.is_set():
                        armed.set()
                    up.sendall(data)
            except OSError:
                pass

        threading.Thread(target=upstream_pump, daemon=True).start()
        seen = b""
        try:
            while data := up.recv(65536):
                if armed.is_set():
                    seen += data
                    if b'"ledger_id"' in seen and seen.rstrip().endswith(b"}"):  # the whole answer: lose it
                        self.drop.clear()
                        self.dropped += 1
                        break
                    continue
                conn.sendall(data)
        except OSError:
            pass
        for s in (conn, up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    if os.environ.get("MODELSTEAL_TEST_POSTGRES") != "1":
        pytest.skip("PostgreSQL tests are off: set MODELSTEAL_TEST_POSTGRES=1")
    return request.getfixturevalue("pg_url")


def test_a_retry_after_a_lost_answer_is_answered_but_not_counted_or_rescored(tmp_path, store_url):
    # Bugs caught: the retry counted again (queries 2n, two ledger entries), scored again (PRADA's journal one
    # entry longer), answered differently from the lost answer, or the key stored but never replayed; and
    # without keys the same loss IS counted twice (so the proxy really loses an answered request).
    model = build_model("mlp", input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, seed=0)
    ckpt = save_checkpoint(model, tmp_path / "victim.pt", dataset="digits")
    name = f"idem-{uuid.uuid4().hex[:8]}"
    with open_store(store_url) as store:
        client, key = store.create_key(name=name)
    x = torch.rand(5, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    server = ServerProcess(model=ckpt, store=store_url, log_path=tmp_path / "server.log", args=PRADA)
    with server:
        proxy = DroppingProxy(int(server.url.rsplit(":", 1)[1]))
        try:
            with HTTPBlackBox(proxy.url, key, backoff=0.01, max_backoff=0.05) as bb:
                proxy.drop.set()
                y = bb.query(x)
                assert proxy.dropped == 1  # the first answer was lost after the server had committed it
                usage = bb.usage()
            with open_store(store_url) as store:
                assert [e.n for e in store.ledger(client_id=client.id)] == [5]
                assert store.detector_version(client.id) == 1  # scored once
            assert usage["queries"] == 5 and usage["requests"] == 1
            victim, meta = load_checkpoint(ckpt)
            expected = PredictionAPI(victim, input_shape=meta["input_shape"]).query(x)
            torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)

            # the same key again, by hand: the stored answer, bit for bit, still not counted; other inputs: 422
            auth = {"Authorization": f"Bearer {key}", "Idempotency-Key": "k-1"}
            first = httpx.post(server.url + "/v1/predict", json={"inputs": x.tolist()}, headers=auth, timeout=30)
            again = httpx.post(server.url + "/v1/predict", json={"inputs": x.tolist()}, headers=auth, timeout=30)
            assert first.status_code == again.status_code == 200 and first.content == again.content
            other = httpx.post(server.url + "/v1/predict", json={"inputs": x[:2].tolist()}, headers=auth, timeout=30)
            assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
            assert httpx.get(server.url + "/v1/usage", headers=auth, timeout=10).json()["queries"] == 10

            # without a key, the lost answer and its retry are two requests: counted twice
            proxy.drop.set()
            plain = {"Authorization": f"Bearer {key}"}
            with pytest.raises(httpx.TransportError):
                httpx.post(proxy.url + "/v1/predict", json={"inputs": x.tolist()}, headers=plain, timeout=30)
            assert httpx.post(proxy.url + "/v1/predict", json={"inputs": x.tolist()}, headers=plain,
                              timeout=30).status_code == 200
            assert httpx.get(server.url + "/v1/usage", headers=plain, timeout=10).json()["queries"] == 20
        finally:
            proxy.close()
    with open_store(store_url) as store:
        assert store.detector_version(client.id) == 4 and store.client(client.id).queries == 20


def test_bad_idempotency_keys_are_a_400(tmp_path):
    model = build_model("mlp", input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, seed=0)
    ckpt = save_checkpoint(model, tmp_path / "victim.pt", dataset="synthetic")
    store_url = str(tmp_path / "ledger.db")
    with open_store(store_url) as store:
        _, key = store.create_key(name="a")
    with ServerProcess(model=ckpt, store=store_url, log_path=tmp_path / "server.log") as server:
        for bad in ("", "x" * 256, "has space"):
            r = httpx.post(server.url + "/v1/predict", json={"inputs": [[[[0.5] * 8] * 8]]},
                           headers={"Authorization": f"Bearer {key}", "Idempotency-Key": bad}, timeout=10)
            assert r.status_code == 400 and r.json()["code"] == "bad_idempotency_key", (bad, r.text)
        assert httpx.get(server.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"},
                         timeout=10).json()["queries"] == 0
