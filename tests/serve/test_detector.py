"""A server whose API has a detector: refused batches (403 ``query_refused``, ``QueryRefusedError`` in the
client, nothing in the ledger), flagged-query counts in ``/v1/usage`` per key, and kept in the SQLite store
across a restart."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import anyio  # noqa: E402
from serve_helpers import INPUT_SHAPE, NUM_CLASSES  # noqa: E402

from modelsteal import PredictionAPI, QueryRefusedError  # noqa: E402
from modelsteal.detectors.base import Detector  # noqa: E402
from modelsteal.models import build_model  # noqa: E402
from modelsteal.serve.app import create_app  # noqa: E402
from modelsteal.serve.client import HTTPBlackBox  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402


class LowConfidence(Detector):
    """Test-only: suspicion ``-max(probs)``; calibrated by hand (``threshold``)."""

    name = "low-confidence"

    def score(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        return -probs.max(dim=1).values


def _setup() -> tuple[nn.Module, LowConfidence, Tensor, Tensor]:
    """A model, a detector flagging the less confident half of ``x``, ``x`` and those flags."""
    model = build_model("mlp", input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, seed=0).eval()
    x = torch.rand(12, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    det = LowConfidence()
    det.victim = model
    scores = det.score(x, det.posteriors(x))
    low, high = scores.sort().values[len(x) // 2 - 1: len(x) // 2 + 1]
    det.threshold = float((low + high) / 2)  # between two scores: a row exactly at it would flip with the kernels
    flags = scores > det.threshold
    assert 0 < int(flags.sum()) < len(x)
    return model, det, x, flags


def _transport(app) -> httpx.MockTransport:
    """A sync transport answering each request with ``app`` in process (one event loop per request)."""
    asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    def forward(request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=asgi, base_url="http://app") as http:
                r = await http.request(request.method, request.url.path, content=request.content,
                                       headers=dict(request.headers))
                return httpx.Response(r.status_code, content=r.content, headers=r.headers)

        return anyio.run(send)

    return httpx.MockTransport(forward)


def _blackbox(app, key: str) -> HTTPBlackBox:
    return HTTPBlackBox("http://app", key, transport=_transport(app), backoff=0.001, max_backoff=0.01)


def test_a_refused_batch_is_a_403_with_its_code_and_leaves_the_ledger_untouched(tmp_path):
    # Bugs caught: the refusal answered as a 500 (or the budget's code); the ledger keeping the refused rows
    # (queries would read 12 + 5); the client raising PermissionError instead of QueryRefusedError.
    model, det, x, flags = _setup()
    store = open_store(tmp_path / "ledger.db")
    _, key = store.create_key(name="a")
    app = create_app(PredictionAPI(model, detector=det, response="refuse"), store=store)
    with httpx.Client(transport=_transport(app), base_url="http://app") as http:
        auth = {"Authorization": f"Bearer {key}"}
        ok = http.post("/v1/predict", json={"inputs": x[~flags][:5].tolist()}, headers=auth)
        assert ok.status_code == 200, ok.text
        r = http.post("/v1/predict", json={"inputs": x.tolist()}, headers=auth)
        assert r.status_code == 403 and r.json()["code"] == "query_refused"
        assert f"flagged {int(flags.sum())} of the batch's 12 rows" in r.json()["detail"]
        usage = http.get("/v1/usage", headers=auth).json()
        # issue 29 defect 6: a client being refused sees its flagged queries and its refusals in /v1/usage
        # (it read "flagged": 0, the refused batch's flags thrown away with its ledger entry)
        assert (usage["queries"], usage["flagged"]) == (5, int(flags.sum()))
        assert usage["refused"] == {"requests": 1, "queries": 12}
        assert http.get("/v1/info").json()["detector"]["response"] == "refuse"
    assert [e.n for e in store.ledger()] == [5]
    bb = _blackbox(app, key)
    with pytest.raises(QueryRefusedError, match="query refused: detector 'low-confidence'"):
        bb.query(x)
    usage = bb.usage()
    assert bb.queries() == 0 and usage["queries"] == 5
    assert usage["flagged"] == 2 * int(flags.sum()) and usage["refused"] == {"requests": 2, "queries": 24}
    store.close()


def test_usage_reports_each_keys_flags_and_they_survive_a_restart(tmp_path):
    # Bugs caught: /v1/usage reading the API's in-memory count (0 after a restart) or every key's flags
    # together; flags recorded for a request that was not answered; release() failing on a flagged entry.
    model, det, x, flags = _setup()
    path = tmp_path / "ledger.db"
    store = open_store(path)
    _, key_a = store.create_key(name="a")
    _, key_b = store.create_key(name="b")
    app = create_app(PredictionAPI(model, detector=det, response="shuffle"), store=store)
    a, b = _blackbox(app, key_a), _blackbox(app, key_b)
    y = a.query(x)
    a.query(x[:4])
    b.query(x[~flags][:3])
    n_a = int(flags.sum()) + int(flags[:4].sum())
    assert (a.usage()["flagged"], b.usage()["flagged"]) == (n_a, 0)
    assert a.usage()["queries"] == 16 and "budget_exhausted" in a.usage()["flags"]
    assert torch.equal(y[~flags], PredictionAPI(model).query(x)[~flags])  # shuffled only where flagged
    store.close()

    store = open_store(path)  # a restarted server: fresh API, same store
    app = create_app(PredictionAPI(model, detector=det, response="shuffle"), store=store)
    a, b = _blackbox(app, key_a), _blackbox(app, key_b)
    assert (a.usage()["flagged"], b.usage()["flagged"]) == (n_a, 0)
    b.query(x)
    assert b.usage()["flagged"] == int(flags.sum())
    entry = store.ledger()[-1]
    store.release(entry.id)  # a request taken back out of the ledger takes its flags with it
    assert b.usage()["flagged"] == 0 and a.usage()["flagged"] == n_a
    store.close()
