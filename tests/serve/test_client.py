"""``HTTPBlackBox`` retry and error mapping (mock transport), and the app's failure path (in-process)."""

from __future__ import annotations

import base64
import json

import pytest
import torch
from torch import Tensor

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import INPUT_SHAPE, NUM_CLASSES  # noqa: E402

from modelsteal import BudgetExceededError, PredictionAPI  # noqa: E402
from modelsteal.defenses.base import Defense  # noqa: E402
from modelsteal.models import build_model  # noqa: E402
from modelsteal.serve.app import create_app  # noqa: E402
from modelsteal.serve.client import HTTPBlackBox, ServerError  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402

INFO = {"input_shape": list(INPUT_SHAPE), "num_classes": NUM_CLASSES, "max_batch": 4}


def _mock(script: list[tuple[int, dict, dict]]):
    """A transport answering /v1/info, then the scripted (status, json, headers) for each predict call."""
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/info":
            return httpx.Response(200, json=INFO)
        calls.append(request)
        status, body, headers = script[min(len(calls), len(script)) - 1]
        if status == 200 and body == {}:
            shape = json.loads(request.content)["inputs"]["shape"]
            out = torch.full((shape[0], NUM_CLASSES), 0.1)
            body = {"outputs": {"dtype": "float32", "shape": list(out.shape),
                                "base64": base64.b64encode(out.numpy().tobytes()).decode()}}
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(handler), calls


def _bb(transport, **kw) -> HTTPBlackBox:
    return HTTPBlackBox("http://test", "msk_k", transport=transport, backoff=0.001, max_backoff=0.01, **kw)


def test_client_splits_batches_by_the_server_max_batch():
    transport, calls = _mock([(200, {}, {})])
    bb = _bb(transport)
    assert bb.batch_size == 4 and bb.input_shape == INPUT_SHAPE
    y = bb.query(torch.rand(10, *INPUT_SHAPE))
    assert y.shape == (10, NUM_CLASSES) and y.dtype == torch.float32 and len(calls) == 3
    assert calls[0].headers["authorization"] == "Bearer msk_k"


def test_client_retries_429_and_5xx_then_succeeds():
    transport, calls = _mock([(429, {"detail": "slow down"}, {"Retry-After": "0"}),
                              (503, {"detail": "busy"}, {}), (200, {}, {})])
    assert _bb(transport).query(torch.rand(2, *INPUT_SHAPE)).shape == (2, NUM_CLASSES)
    assert len(calls) == 3


def test_client_gives_up_after_max_retries():
    transport, calls = _mock([(500, {"detail": "boom"}, {})])
    with pytest.raises(ServerError, match="boom"):
        _bb(transport, max_retries=2).query(torch.rand(1, *INPUT_SHAPE))
    assert len(calls) == 3


@pytest.mark.parametrize("status, body, error, match", [
    (403, {"detail": "query budget exhausted", "code": "budget_exhausted"}, BudgetExceededError, "exhausted"),
    (403, {"detail": "key revoked", "code": "revoked_key"}, PermissionError, "revoked"),
    (401, {"detail": "invalid API key", "code": "invalid_key"}, PermissionError, "invalid"),
    (422, {"detail": "'inputs' must lie in [0, 1]", "code": "out_of_range"}, ValueError, "must lie in"),
])
def test_client_maps_errors_without_retrying(status, body, error, match):
    transport, calls = _mock([(status, body, {})])
    with pytest.raises(error, match=match):
        _bb(transport).query(torch.rand(1, *INPUT_SHAPE))
    assert len(calls) == 1


def test_client_checks_its_arguments():
    transport, _ = _mock([(200, {}, {})])
    with pytest.raises(ValueError, match="http"):
        HTTPBlackBox("ftp://x", "k")
    with pytest.raises(ValueError, match="expected"):
        _bb(transport).query(torch.rand(2, 3))


def test_client_counts_the_rows_the_server_answered_and_refuses_nan_before_sending():
    # 10 rows in requests of 4, 4, 2; the third request fails (403 budget): 8 rows were answered, as the
    # server's ledger counts them. Counting the whole batch up front would say 10; counting only at the end, 0.
    transport, calls = _mock([(200, {}, {}), (200, {}, {}),
                              (403, {"detail": "query budget exhausted", "code": "budget_exhausted"}, {})])
    bb = _bb(transport)
    with pytest.raises(BudgetExceededError):
        bb.query(torch.rand(10, *INPUT_SHAPE))
    assert (bb.queries(), bb.total_queries, len(calls)) == (8, 8, 3)
    bad = torch.rand(3, *INPUT_SHAPE)
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf in 1 row.*row 1"):
        bb.query(bad)
    assert len(calls) == 3 and bb.queries() == 8


class _Exploding(Defense):
    """A defense that fails on demand, to exercise the server's failure path."""

    def __init__(self) -> None:
        self.fail = False

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        if self.fail:
            raise RuntimeError("defense failed")
        return probs


def test_a_failed_answer_is_a_500_and_is_taken_back_out_of_the_ledger(tmp_path):
    import anyio

    defense = _Exploding()
    api = PredictionAPI(build_model("mlp", input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, seed=0),
                        defense=defense)
    store = open_store(tmp_path / "ledger.db")
    client, key = store.create_key(name="a")
    app = create_app(api, store=store, record_inputs=True)
    headers = {"Authorization": f"Bearer {key}"}
    x = torch.rand(3, *INPUT_SHAPE)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", headers=headers) as http:
            assert (await http.post("/v1/predict", json={"inputs": x.tolist()})).status_code == 200
            defense.fail = True
            r = await http.post("/v1/predict", json={"inputs": x.tolist()})
            assert r.status_code == 500 and "defense failed" in r.json()["detail"]
            defense.fail = False
            assert (await http.post("/v1/predict", json={"inputs": x[:1].tolist()})).status_code == 200
            assert (await http.get("/v1/usage")).json()["queries"] == 4

    anyio.run(scenario)
    assert [e.n for e in store.ledger()] == [3, 1]
    recorded = [torch.frombuffer(bytearray(b), dtype=torch.float32) for b in store.recorded_inputs(client.id)]
    assert torch.equal(recorded[0].view(3, *INPUT_SHAPE), x)
    store.close()


def test_mad_runs_behind_the_app_and_answers_like_in_process(tmp_path):
    """MAD needs autograd inside the server's worker threads; same seed, same answers as in-process (up to
    float rounding: MAD's arithmetic may differ in the last bit between calls)."""
    import anyio

    from modelsteal.defenses.base import available_defenses, make_defense

    if "mad" not in available_defenses():
        pytest.skip("the MAD defense is not registered in this checkout")
    model = build_model("mlp", input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, seed=0)
    x = torch.rand(5, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    expected = PredictionAPI(model, defense=make_defense("mad", epsilon=0.5)).query(x)
    served = PredictionAPI(model, defense=make_defense("mad", epsilon=0.5))
    store = open_store(tmp_path / "ledger.db")
    _, key = store.create_key(name="a")
    app = create_app(served, store=store)

    async def scenario() -> Tensor:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app",
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            r = await http.post("/v1/predict", json={"inputs": x.tolist()})
            assert r.status_code == 200, r.text
            return torch.tensor(r.json()["outputs"])

    got = anyio.run(scenario)
    store.close()
    assert torch.allclose(got, expected, rtol=0, atol=1e-6), (got - expected).abs().max()
    assert not torch.allclose(expected, PredictionAPI(model).query(x))


def test_client_queries_left_is_the_servers_remaining_budget():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/info":
            return httpx.Response(200, json=INFO)
        assert request.url.path == "/v1/usage"
        return httpx.Response(200, json={"queries": 7, "budget": 10, "remaining": 3, "flags": 0})

    bb = _bb(httpx.MockTransport(handler))
    assert bb.queries_left() == 3 and bb.queries() == 0  # the ledger's figure, not the local count (None)
