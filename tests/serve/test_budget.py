"""The server refuses a request over budget before inference: the model and the defense never see it."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from modelsteal import PredictionAPI  # noqa: E402
from modelsteal.defenses import Defense  # noqa: E402
from modelsteal.models import build_model  # noqa: E402
from modelsteal.serve.app import create_app  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402

INPUT_SHAPE, NUM_CLASSES = (1, 8, 8), 10


class _CountingModel(nn.Module):
    """The victim, counting the rows it is asked to classify."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = build_model("mlp", input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, seed=0)
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += len(x)
        return self.inner(x)


class _CountingDefense(Defense):
    """The identity, counting the rows it perturbs."""

    def __init__(self) -> None:
        self.rows = 0

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        self.rows += len(x)
        return probs


def test_a_request_refused_for_budget_never_reaches_the_model_or_the_defense(tmp_path):
    import anyio

    model, defense = _CountingModel(), _CountingDefense()
    api = PredictionAPI(model, defense=defense, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
    model.rows = 0
    store = open_store(tmp_path / "ledger.db")
    _, key = store.create_key(name="small", budget=5)
    app = create_app(api, store=store)
    x = torch.rand(4, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0))
    seen: list[tuple[int, int, int]] = []  # (status, model rows, defense rows) after each request

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app",
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            for n in (3, 3, 2, 1):  # answered, over the 2 left, answered (5 of 5), budget already spent
                r = await http.post("/v1/predict", json={"inputs": x[:n].tolist()})
                seen.append((r.status_code, model.rows, defense.rows))
                if r.status_code == 403:
                    assert r.json()["code"] == "budget_exhausted", r.text
            usage = (await http.get("/v1/usage")).json()
            assert usage["queries"] == 5 and usage["remaining"] == 0

    anyio.run(scenario)
    store.close()
    assert seen == [(200, 3, 3), (403, 3, 3), (200, 5, 5), (403, 5, 5)]


def test_a_key_revoked_while_cached_is_refused_by_the_ledger_and_never_answered(tmp_path):
    # Bugs caught: a request answered on the strength of the authentication cache (the key revoked, or the budget
    # lowered, a second earlier) instead of the ledger's own check in the reservation's transaction.
    import anyio

    model = _CountingModel()
    api = PredictionAPI(model, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
    model.rows = 0
    store = open_store(tmp_path / "ledger.db")
    _, key = store.create_key(name="soon-revoked")
    app = create_app(api, store=store)
    x = torch.rand(2, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    statuses: list[int] = []

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app",
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            statuses.append((await http.post("/v1/predict", json={"inputs": x.tolist()})).status_code)
            store.revoke("soon-revoked")  # within the cache's second: admit() still sees the key as valid
            r = await http.post("/v1/predict", json={"inputs": x.tolist()})
            statuses.append(r.status_code)
            assert "revoked" in r.json()["detail"]

    anyio.run(scenario)
    assert statuses == [200, 403]
    assert model.rows == 2 and sum(e.n for e in store.ledger()) == 2  # the second request: not run, not counted
    store.close()
