"""Issue 26's load test, bounded and on loopback: 50 clients against a real ``modelsteal serve`` with dynamic
batching and a PRADA detector, mixing keys spent down to exactly their budget, bad requests and plain traffic
(some with idempotency keys). No 5xx, every budget spent exactly and never exceeded, the ledger equal to the
rows answered, per client. A few seconds by default; the 60-second run is ``slow`` (CI runs it)."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from serve_helpers import INPUT_SHAPE, NUM_CLASSES, ServerProcess  # noqa: E402

from modelsteal.models import build_model, save_checkpoint  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402

PRADA = ["--detector", "prada", "--detector-option", "min_stream=20", "--detector-option", "delta=0.97",
         "--detector-tnr", "none", "--eval-size", "0", "--max-batch", "16", "--max-batch-delay-ms", "3"]
BAD_BODIES = [
    ({"inputs": []}, 422), ({"inputs": [[0.5] * 8]}, 422), ({"inputs": [[[[2.0] * 8] * 8]]}, 422),
    ({"inputs": [[[[0.5] * 8] * 8]], "client": "x"}, 422), ({"nothing": 1}, 422),
    ({"inputs": {"dtype": "float32", "shape": [1, 1, 8, 8], "base64": "AAAA"}}, 422),
    ({"inputs": [[[[0.5] * 8] * 8]] * 17}, 413),
]


@pytest.mark.parametrize("seconds, budget", [(6, 8), pytest.param(60, 150, marks=pytest.mark.slow)],
                         ids=["short", "60s"])
def test_fifty_clients_mixed_load(tmp_path, seconds, budget):
    model = build_model("mlp", input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, seed=0)
    ckpt = save_checkpoint(model, tmp_path / "victim.pt", dataset="digits")
    store_url = str(tmp_path / "ledger.db")
    roles = ["budget"] * 10 + ["bad"] * 10 + ["plain"] * 30
    with open_store(store_url) as store:
        keys = [store.create_key(name=f"c{i}", budget=budget if role == "budget" else None)[1]
                for i, role in enumerate(roles)]
    answered = [0] * len(roles)
    problems: list[str] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def note(status: int) -> None:
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

    server = ServerProcess(model=ckpt, store=store_url, log_path=tmp_path / "server.log", args=PRADA)
    with server:
        start = threading.Barrier(len(roles))

        def client(i: int) -> None:
            rng = random.Random(i)
            g = torch.Generator().manual_seed(i)
            role, left = roles[i], budget
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {keys[i]}"}, timeout=60) as h:
                start.wait()  # every client connected: the clock starts
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    if role == "bad" and rng.random() < 0.5:
                        body, want = rng.choice(BAD_BODIES)
                        r = h.post("/v1/predict", json=body)
                        note(r.status_code)
                        if r.status_code != want or r.json().get("code") is None:
                            problems.append(f"c{i} bad body: {r.status_code} {r.text[:120]}")
                        continue
                    n = rng.randint(1, 8)
                    if role == "budget":
                        if left == 0:
                            r = h.post("/v1/predict", json={"inputs": torch.rand(1, *INPUT_SHAPE).tolist()})
                            note(r.status_code)
                            if r.status_code != 403 or r.json()["code"] != "budget_exhausted":
                                problems.append(f"c{i} past its budget: {r.status_code} {r.text[:120]}")
                            return
                        n = min(n, left)
                    headers = {"Idempotency-Key": uuid.uuid4().hex} if rng.random() < 0.3 else {}
                    r = h.post("/v1/predict", json={"inputs": torch.rand(n, *INPUT_SHAPE, generator=g).tolist()},
                               headers=headers)
                    note(r.status_code)
                    if r.status_code != 200 or len(r.json()["outputs"]) != n:
                        problems.append(f"c{i}: {r.status_code} {r.text[:120]}")
                        return
                    answered[i] += n
                    left = r.json()["remaining"] if role == "budget" else left

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(roles))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 120)
        assert not any(t.is_alive() for t in threads), "the load did not finish in time"
        info = httpx.get(server.url + "/v1/info", timeout=10).json()["batching"]
    print(f"\nload: {sum(statuses.values())} requests in {seconds} s, statuses {sorted(statuses.items())}, "
          f"{sum(answered)} rows answered, {info['requests']} requests in {info['batches']} batches")
    assert not problems, problems[:5]
    assert not any(s >= 500 for s in statuses), statuses
    with open_store(store_url) as store:
        clients = {c.name: c for c in store.clients()}
        for i, role in enumerate(roles):
            c = clients[f"c{i}"]
            ledger = sum(e.n for e in store.ledger(client_id=c.id))
            assert ledger == c.queries == answered[i], (f"c{i}", ledger, c.queries, answered[i])
            if role == "budget" and c.queries == budget:
                assert c.remaining == 0
            assert role != "budget" or c.queries <= budget
    spent = sum(1 for i, r in enumerate(roles) if r == "budget" and answered[i] == budget)
    assert spent >= (3 if seconds < 10 else 10), f"only {spent} budget keys were spent down in the time given"
    assert info["batches"] < info["requests"], info  # concurrent requests shared batches
