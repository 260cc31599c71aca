"""The gateway (``serve --upstream``) in front of an upstream that misbehaves on purpose, and the defenses that
need a local model (MAD's surrogate, AM's f-hat trained on the upstream's labels).

The upstream here is a small v2 server in a thread on loopback, answering with a fixed torch model or failing
in the way a test asks (timeout, 500, wrong shape, not JSON, not probabilities): a failure injector, while
tests/serve/test_mlserver.py runs the gateway in front of a real MLServer."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from modelsteal.defenses.mad import MAD  # noqa: E402
from modelsteal.models import build_model  # noqa: E402
from modelsteal.serve.app import create_app  # noqa: E402
from modelsteal.serve.config import ServeConfig, build_api  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402
from modelsteal.serve.upstream import UpstreamModel  # noqa: E402

SHAPE = (1, 8, 8)
META = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, *SHAPE]}],
        "outputs": [{"name": "p", "datatype": "FP32", "shape": [-1, 10]}]}


class Upstream:
    """A v2 server in a thread; ``mode`` picks the answer: ok, hang, 500, shape, garbage, sums."""

    def __init__(self) -> None:
        self.model = build_model("mlp", input_shape=SHAPE, num_classes=10, seed=3).eval()
        self.mode = "ok"
        self.rows = 0
        up = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, json.dumps(META).encode())

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                t = req["inputs"][0]
                x = torch.tensor(t["data"], dtype=torch.float32).reshape(t["shape"])
                with torch.no_grad():
                    p = torch.softmax(up.model(x), dim=1)
                if up.mode == "hang":
                    time.sleep(2.0)
                if up.mode == "500":
                    return self._send(500, b'{"error": "boom"}')
                if up.mode == "garbage":
                    return self._send(200, b"<html>not json</html>")
                if up.mode == "shape":
                    p = p[:, :9]
                if up.mode == "sums":
                    p = p * 2
                up.rows += len(x)
                out = {"model_name": "m", "outputs": [{"name": "p", "datatype": "FP32", "shape": list(p.shape),
                                                        "data": p.flatten().tolist()}]}
                self._send(200, json.dumps(out).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/models/m"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def posteriors(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(self.model(x), dim=1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    up = Upstream()
    yield up
    up.close()


def _gateway(upstream: Upstream, tmp_path, **config):
    from fastapi.testclient import TestClient

    cfg = ServeConfig(upstream=upstream.url, upstream_timeout=0.5, store=str(tmp_path / "l.db"), **config)
    api, info = build_api(cfg)
    store = open_store(cfg.store)
    key = store.create_key(name="a")[1]
    return TestClient(create_app(api, store=store, info=info)), api, store, {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("mode,status,words", [
    ("hang", 504, "timed out"), ("500", 502, "500 boom"), ("shape", 502, "shape (2, 9)"),
    ("garbage", 502, "not JSON"), ("sums", 502, "not probabilities"),
])
def test_upstream_failures_are_502_or_504_and_cost_nothing(upstream, tmp_path, mode, status, words):
    client, api, store, auth = _gateway(upstream, tmp_path)
    x = torch.rand(2, *SHAPE)
    upstream.mode = mode
    r = client.post("/v1/predict", headers=auth, json={"inputs": x.tolist()})
    assert r.status_code == status and words in r.json()["detail"], r.text
    body = {"inputs": [{"name": "input", "shape": [2, *SHAPE], "datatype": "FP32", "data": x.flatten().tolist()}]}
    r2 = client.post("/v2/models/m/infer", headers=auth, json=body)
    assert r2.status_code == status and words in r2.json()["error"], r2.text
    assert store.clients()[0].queries == 0
    upstream.mode = "ok"  # the gateway answers again as soon as the upstream does
    r = client.post("/v1/predict", headers=auth, json={"inputs": x.tolist()})
    assert r.status_code == 200
    assert torch.allclose(torch.tensor(r.json()["outputs"]), upstream.posteriors(x), atol=1e-6)
    assert store.clients()[0].queries == 2
    store.close()


def test_mad_in_a_gateway_uses_a_local_random_surrogate_and_keeps_its_budget(upstream, tmp_path):
    client, api, store, auth = _gateway(upstream, tmp_path, defense="mad", strength=0.5, surrogate="mlp")
    assert isinstance(api.model, UpstreamModel) and isinstance(api.defense, MAD)
    assert not isinstance(api.defense.surrogate, UpstreamModel)
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.tensor(client.post("/v1/predict", headers=auth, json={"inputs": x.tolist()}).json()["outputs"])
    p = upstream.posteriors(x)
    dist = (y - p).abs().sum(dim=1)
    assert (dist <= 0.5 + 1e-4).all() and (dist > 0.1).all()  # MAD moves every answer, within its L1 budget
    store.close()


def test_am_in_a_gateway_trains_f_hat_on_the_upstream_labels(upstream, tmp_path):
    client, api, store, auth = _gateway(upstream, tmp_path, defense="am", strength=1.0, surrogate="mlp",
                                        dataset="digits", defense_options={"train": {"epochs": 2}})
    from modelsteal.data import load_dataset

    assert upstream.rows >= len(load_dataset("digits").x_train)  # the upstream labelled f-hat's training set
    x = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    y = torch.tensor(client.post("/v1/predict", headers=auth, json={"inputs": x.tolist()}).json()["outputs"])
    fhat = torch.softmax(api.defense.misinformation(x), dim=1)
    # tau = 1: every row (top probability < 1) is misinformed, y = f-hat(x), not the upstream's answer
    assert torch.allclose(y, fhat, atol=1e-4) and (y - upstream.posteriors(x)).abs().max() > 0.05
    store.close()


def test_a_gateway_detector_is_fitted_on_what_the_upstream_answers(upstream, tmp_path):
    client, api, store, auth = _gateway(upstream, tmp_path, detector="msp", dataset="digits", response="refuse",
                                        detector_tnr=0.5)
    assert api.detector.threshold is not None and upstream.rows > 0  # calibrated on the upstream's answers
    flagged = 0
    for seed in range(6):
        x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(seed))
        r = client.post("/v1/predict", headers=auth, json={"inputs": x.tolist()})
        assert r.status_code in (200, 403)
        flagged += r.status_code == 403
    assert flagged > 0  # uniform noise is less confident than half of the validation digits
    store.close()


def test_prada_in_a_gateway_keeps_each_client_state_in_the_store(upstream, tmp_path):
    client, api, store, auth = _gateway(upstream, tmp_path, detector="prada", dataset="digits")
    assert api.detector.stateful and api.detector.threshold is not None
    for seed in range(3):
        x = torch.rand(5, *SHAPE, generator=torch.Generator().manual_seed(seed))
        r = client.post("/v1/predict", headers=auth, json={"inputs": x.tolist()})
        assert r.status_code == 200
        assert torch.allclose(torch.tensor(r.json()["outputs"]), upstream.posteriors(x), atol=1e-6)
    assert store.clients()[0].queries == 15
    entries = store.detector_entries(store.clients()[0].id)
    assert len(entries) == 3 and all("prada" in e.detector for e in entries)  # one journalled change per request
    store.close()


@pytest.mark.parametrize("delay_ms", [0.0, 2.0], ids=["batching-off", "batching-on"])
def test_the_gateway_asks_its_upstream_once_per_row(upstream, tmp_path, delay_ms):
    """The batcher asks the upstream before its inference lock (prefetch) and the forward under the lock reuses
    that answer: a request of 5 rows costs the upstream 5 rows, not 10 (a prefetch whose memo did not match
    would ask twice), with batching on and off."""
    from fastapi.testclient import TestClient

    cfg = ServeConfig(upstream=upstream.url, upstream_timeout=2.0, store=str(tmp_path / "l.db"))
    api, info = build_api(cfg)
    store = open_store(cfg.store)
    key = store.create_key(name="a")[1]
    client = TestClient(create_app(api, store=store, info=info, max_batch_delay_ms=delay_ms))
    x = torch.rand(5, *SHAPE)
    r = client.post("/v1/predict", headers={"Authorization": f"Bearer {key}"}, json={"inputs": x.tolist()})
    assert r.status_code == 200, r.text
    assert torch.allclose(torch.tensor(r.json()["outputs"]), upstream.posteriors(x), atol=1e-6)
    assert upstream.rows == 5
    store.close()
