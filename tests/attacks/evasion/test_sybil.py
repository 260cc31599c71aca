"""Sybil: each key stays under its cap and the keys' union is the inner attack's queries, through a pool of
single-key boxes and over HTTP with one key per client."""

from __future__ import annotations

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import JBDA
from modelsteal.attacks.evasion import KeyPool, Sybil

from .helpers import TRAIN, Recorder, jbda, prada_api


class OneKey:
    """Stands in for an HTTPBlackBox: one key, the ``client`` argument ignored (it only names a local count)."""

    def __init__(self, api: PredictionAPI, key: str) -> None:
        self.api, self.key = api, key
        self.num_classes, self.input_shape = api.num_classes, api.input_shape

    def query(self, x, *, client="default"):
        return self.api.query(x, client=self.key)


# -- Sybil -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("assign", "clients", "cap"), [("contiguous", None, 30), ("round-robin", 7, None),
                                                         ("contiguous", 4, 50)])
def test_sybil_keys_stay_under_the_cap_and_their_union_is_the_inner_attack(assign, clients, cap, digits_victim,
                                                                           digits):
    """Bug caught: a key index off by one (a key gets cap + 1 rows, which the API's per-key budget refuses),
    rows dropped, duplicated or reordered by the router, or Sybil not driving the inner attack with the same
    generator (its queries would differ from the inner attack's alone)."""
    budget = 200
    plain = Recorder(PredictionAPI(digits_victim))
    alone = jbda(digits)(plain, budget=budget, seed=3)
    n_keys, per_key = Sybil(attack=jbda(digits), clients=clients, max_per_key=cap).plan(budget)
    api = PredictionAPI(digits_victim, budget=per_key)  # a per-key budget: one row too many raises
    spread = Recorder(api)
    result = Sybil(attack=jbda(digits), clients=clients, max_per_key=cap, assign=assign)(spread, budget=budget,
                                                                                          seed=3)
    keys = [f"sybil-{i}" for i in range(n_keys)]
    counts = [api.queries(k) for k in keys]
    assert max(counts) <= per_key and sum(counts) == api.total_queries == alone.queries == result.queries
    assert result.info["queries_per_key"] == counts and result.info["keys"] == n_keys
    assert set(spread.clients) <= set(keys)
    # the union, per key in order, is the inner attack's own stream
    stream, owner = spread.stream, spread.clients
    for i, key in enumerate(keys):
        mine = torch.stack([row for row, c in zip(stream, owner, strict=True) if c == key]) if counts[i] else None
        expected = plain.stream[i * per_key:(i + 1) * per_key] if assign == "contiguous" else plain.stream[i::n_keys]
        if mine is None:
            assert len(expected) == 0
        else:
            assert torch.equal(mine, expected)
    assert torch.equal(result.transfer_x, alone.transfer_x)


def test_sybil_through_a_key_pool_of_single_key_boxes(digits_victim, digits):
    """Over HTTP one box holds one key: KeyPool routes each key's rows to its own box. Bug caught: the pool
    answering every key from its first box, or Sybil inventing key names the pool does not hold."""
    api = PredictionAPI(digits_victim)
    pool = KeyPool([OneKey(api, f"key-{i}") for i in range(4)], names=["a", "b", "c", "d"])
    result = Sybil(attack=jbda(digits), max_per_key=50)(pool, budget=200, seed=0)
    assert [api.queries(f"key-{i}") for i in range(4)] == [50, 50, 50, 50] == result.info["queries_per_key"]
    with pytest.raises(ValueError, match="needs 5 keys but the KeyPool holds 4"):
        Sybil(attack=jbda(digits), max_per_key=40)(pool, budget=200, seed=0)
    assert api.total_queries == 200  # refused before any query


def _http_pool(app, keys: list[str]) -> KeyPool:
    """One HTTPBlackBox per key, each answered in process by ``app`` (an ASGI app behind a sync transport)."""
    httpx = pytest.importorskip("httpx")
    import anyio

    from modelsteal.serve.client import HTTPBlackBox

    asgi = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    def forward(request):
        async def send():
            async with httpx.AsyncClient(transport=asgi, base_url="http://app") as http:
                r = await http.request(request.method, request.url.path, content=request.content,
                                       headers=dict(request.headers))
                return httpx.Response(r.status_code, content=r.content, headers=r.headers)

        return anyio.run(send)

    return KeyPool([HTTPBlackBox("http://app", key, transport=httpx.MockTransport(forward), backoff=0.001)
                    for key in keys])


def test_sybil_over_http_one_key_per_client(digits_victim, digits, tmp_path):
    """Through the server, each key's ledger holds its share and PRADA's flags come from /v1/usage: spread over
    4 keys of 100 JBDA is unflagged, the same 400 queries on one key are flagged. Bug caught: the router
    sending every key's rows with the first key, or the flags of an HTTP key never read (no detection info)."""
    pytest.importorskip("fastapi")
    from modelsteal.serve.app import create_app
    from modelsteal.serve.store import open_store

    store = open_store(tmp_path / "ledger.db")
    keys = [store.create_key(name=f"k{i}")[1] for i in range(5)]
    app = create_app(prada_api(digits_victim, digits), store=store)
    pool = _http_pool(app, keys)
    seeds = digits.x_val[:100]
    spread = Sybil(attack=JBDA(seed_set=seeds, clone="mlp", train=TRAIN), max_per_key=100)(pool, budget=400, seed=0)
    assert [pool.box(n).usage()["queries"] for n in pool.names] == [100, 100, 100, 100, 0]
    assert spread.info["detector"] and not spread.info["detected"]
    one = Sybil(attack=JBDA(seed_set=seeds, clone="mlp", train=TRAIN), clients=1)(
        KeyPool([pool.box(pool.names[4])]), budget=400, seed=0)
    assert one.info["detected"] and one.info["queries_per_key"] == [400]
    assert pool.box(pool.names[4]).usage()["flagged"] > 0
    store.close()
