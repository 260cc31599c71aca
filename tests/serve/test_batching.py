"""Dynamic batching (issue 26): a batch mixing clients answers each request exactly as the requests one by one
would be answered (PRADA's per-client sequential state, flags, first-flag positions, refusals, MAD's answers);
a batch is made durable in one transaction; concurrent HTTP requests are really batched and each gets its own
rows back."""

from __future__ import annotations

import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from serve_helpers import INPUT_SHAPE, NUM_CLASSES, ServerProcess, make_checkpoint  # noqa: E402

from modelsteal import PredictionAPI, QueryRefusedError  # noqa: E402
from modelsteal.defenses import make_defense  # noqa: E402
from modelsteal.detectors import make_detector  # noqa: E402
from modelsteal.models import load_checkpoint  # noqa: E402
from modelsteal.serve.batcher import Batcher, BatchRunner, Job  # noqa: E402
from modelsteal.serve.detector_state import DetectorJournal  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402


def _requests(digits) -> list[tuple[str, torch.Tensor]]:
    """36 requests of 1 to 6 rows from three clients, interleaved irregularly: alice sends digits, bob and carol
    JBDA-like small steps around a few seeds (flagged by PRADA once their streams are long enough)."""
    g = torch.Generator().manual_seed(0)
    seeds = {"bob": digits.x_test[:3], "carol": digits.x_test[10:12]}
    order = ["alice", "bob", "bob", "carol", "alice", "bob", "carol", "carol", "bob", "alice", "bob", "carol"] * 3
    out, used = [], 0
    for i, who in enumerate(order):
        n = 1 + (i * 5) % 6
        if who == "alice":
            x = digits.x_train[used: used + n]
            used += n
        else:
            s = seeds[who].repeat(2, 1, 1, 1)[:n]
            x = (s + 0.04 * torch.sign(torch.randn(s.shape, generator=g))).clamp(0, 1)
        out.append((who, x))
    return out


def _api(digits, victim, *, response: str, defense: str | None) -> PredictionAPI:
    det = make_detector("prada", min_stream=8, delta=0.9).fit(victim, digits)
    det.threshold = 1 - 0.9
    d = None if defense is None else make_defense(defense, epsilon=0.5)
    return PredictionAPI(victim, detector=det, response=response, defense=d)


@pytest.mark.parametrize("response, defense", [("none", None), ("refuse", None), ("none", "mad")])
def test_a_batch_mixing_clients_equals_its_requests_one_by_one(digits, digits_victim, response, defense):
    # Bugs caught: PRADA scoring a batch's rows as one stream (one client's state, or the clients' rows
    # regrouped out of arrival order), a request's flags sliced from another's rows, first-flag positions
    # counted from the batch instead of the client's stream, a refusal refusing the whole batch (or none),
    # answers handed to the wrong request, MAD computed per row of a different request.
    requests = _requests(digits)
    one = _api(digits, digits_victim, response=response, defense=defense)
    many = _api(digits, digits_victim, response=response, defense=defense)
    expected = []
    for who, x in requests:
        before = one.flags(who)
        try:
            expected.append((one.query(x, client=who), None))
        except QueryRefusedError as e:
            expected.append((None, e.flagged))
        else:
            expected[-1] = (expected[-1][0], one.flags(who) - before)
    got = []
    for start in range(0, len(requests), 7):  # batches of 7 requests, each mixing the three clients
        got += many.query_many(requests[start: start + 7])
    refused = 0
    for (_, x), (y, flagged), res in zip(requests, expected, got, strict=True):
        if y is None:
            refused += 1
            assert res.refused is not None and res.answers is None and res.flagged == flagged
        else:
            assert res.refused is None and res.flagged == flagged
            assert res.answers.shape == (len(x), NUM_CLASSES)
            torch.testing.assert_close(res.answers, y, atol=1e-5, rtol=0)
    for who in ("alice", "bob", "carol"):
        assert many.detector.state_dict(who) == one.detector.state_dict(who), who
        assert (many.flags(who), many.first_flag(who), many.queries(who)) == \
               (one.flags(who), one.first_flag(who), one.queries(who)), who
    # the JBDA-like streams are flagged (refused ones count no flags, but have a first flag): flags are tested
    assert one.first_flag("bob") is not None
    assert (refused > 0) == (response == "refuse")


def _jobs(clients, requests) -> list[Job]:
    return [Job(clients[who], x) for who, x in requests]


def test_a_batch_is_made_durable_in_one_transaction(tmp_path, digits, digits_victim):
    # Bugs caught: the reservations, flags or journal entries of a batch written request by request (one fsync
    # each: write_transactions would grow by the number of requests); a request answered whose entry was not
    # written; the journal entries of one client written out of order (the states would differ).
    store = open_store(tmp_path / "ledger.db")
    clients = {n: store.create_key(name=n)[0] for n in ("alice", "bob", "carol")}
    api = _api(digits, digits_victim, response="none", defense=None)
    runner = BatchRunner(api, store, journal=DetectorJournal(api.detector, store), lock=threading.Lock())
    requests = _requests(digits)[:12]
    jobs = _jobs(clients, requests)
    before = store.write_transactions
    runner.run(jobs)
    assert store.write_transactions == before + 2  # the batch's reservations, then its records
    assert all(j.error is None and j.answer.shape == (j.rows, NUM_CLASSES) for j in jobs)
    ref = _api(digits, digits_victim, response="none", defense=None)
    for who, x in requests:
        ref.query(x, client=who)
    fresh = make_detector("prada", min_stream=8, delta=0.9).fit(digits_victim, digits)
    reload = DetectorJournal(fresh, store)
    for who, c in clients.items():
        assert store.detector_version(c.id) == sum(1 for w, _ in requests if w == who)
        reload.load(c.id, who)
        assert fresh.state_dict(who) == ref.detector.state_dict(who), who
        assert store.flags(c.id) == ref.flags(who)
    assert sum(e.n for e in store.ledger()) == sum(len(x) for _, x in requests)
    # without a detector, keys or records only the reservations are written: one transaction per batch
    plain = BatchRunner(PredictionAPI(digits_victim), store, journal=None, lock=threading.Lock())
    jobs = _jobs(clients, requests)
    before = store.write_transactions
    plain.run(jobs)
    assert store.write_transactions == before + 1 and all(j.answer is not None for j in jobs)
    store.close()


def test_the_batcher_runs_concurrent_jobs_as_one_batch_up_to_max_rows():
    # Bugs caught: a batch run before its delay while requests are on their way (many batches of one), a
    # batch over max_rows, jobs answered with another job's answer, a lost job (its caller would hang), a lone
    # request made to wait for the delay.
    seen: list[list[int]] = []

    def run(jobs: list[Job]) -> None:
        seen.append([j.rows for j in jobs])
        for j in jobs:
            j.answer = j.x.sum(dim=1, keepdim=True)

    batcher = Batcher(run, max_rows=10, max_delay_s=1.0)
    xs = [torch.full((1 + i % 3, 4), float(i)) for i in range(8)]  # 1+2+3+1+2+3+1+2 = 15 rows
    out: dict[int, torch.Tensor] = {}
    start = threading.Barrier(len(xs))

    def send(i: int) -> None:
        with batcher.arriving() as arrival:  # as the server counts a request it is still reading
            start.wait()
            time.sleep(0.01 * i)  # they reach submit() one after another, within the delay
            out[i] = batcher.submit(Job(None, xs[i]), arrival)  # type: ignore[arg-type]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    batcher.close()
    assert not any(t.is_alive() for t in threads)
    assert sum(map(sum, seen)) == 15 and all(sum(b) <= 10 for b in seen) and len(seen) == 2, seen
    for i, x in enumerate(xs):
        assert torch.equal(out[i], x.sum(dim=1, keepdim=True))
    # a lone request (nothing else on its way) does not wait for the delay
    lone = Batcher(run, max_rows=10, max_delay_s=2.0)
    t0 = time.monotonic()
    assert torch.equal(lone.submit(Job(None, xs[0])), xs[0].sum(dim=1, keepdim=True))  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 1.0
    off = Batcher(run, max_rows=10, max_delay_s=0)
    seen.clear()
    assert torch.equal(off.submit(Job(None, xs[2])), xs[2].sum(dim=1, keepdim=True))  # type: ignore[arg-type]
    assert seen == [[3]]


def test_concurrent_http_requests_are_batched_and_each_gets_its_own_rows(tmp_path):
    # Bugs caught: answers scattered to the wrong requests (each request's rows differ, so a swap shows), a
    # batcher that never batches (batches == requests), rows lost or duplicated in the ledger.
    ckpt = make_checkpoint(tmp_path / "victim.pt")
    store_url = str(tmp_path / "ledger.db")
    with open_store(store_url) as store:
        keys = [store.create_key(name=f"c{i}")[1] for i in range(12)]
    model, meta = load_checkpoint(ckpt)
    api = PredictionAPI(model, input_shape=meta["input_shape"])
    xs = [torch.rand(1 + i % 4, *INPUT_SHAPE, generator=torch.Generator().manual_seed(i)) for i in range(12 * 4)]
    failures: list[str] = []
    with ServerProcess(model=ckpt, store=store_url, log_path=tmp_path / "server.log",
                       args=["--max-batch-delay-ms", "30"]) as server:
        start = threading.Barrier(12)

        def client(c: int) -> None:
            with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {keys[c]}"}, timeout=30) as h:
                for r in range(4):
                    x = xs[4 * c + r]
                    start.wait()
                    resp = h.post("/v1/predict", json={"inputs": x.tolist()})
                    if resp.status_code != 200:
                        failures.append(resp.text)
                        continue
                    y = torch.tensor(resp.json()["outputs"])
                    if not torch.allclose(y, api.query(x), atol=1e-6, rtol=0):
                        failures.append(f"client {c} request {r}: answers are not its own")

        threads = [threading.Thread(target=client, args=(c,)) for c in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        info = httpx.get(server.url + "/v1/info", timeout=10).json()["batching"]
    assert not failures, failures[:3]
    assert info["requests"] == 48 and info["batches"] < 24, info  # 12 concurrent requests share a batch
    with open_store(store_url) as store:
        assert sum(e.n for e in store.ledger()) == sum(len(x) for x in xs)


@pytest.mark.parametrize("argv, message", [
    (["--max-batch-rows", "0"], "--max-batch-rows must be >= 1"),
    (["--max-batch-delay-ms", "-1"], "--max-batch-delay-ms must be in 0..10000"),
    (["--idempotency-window", "0"], "--idempotency-window must be > 0"),
    (["--journal-snapshot-every", "-2"], "--journal-snapshot-every must be >= 0"),
])
def test_batching_options_mistakes_are_one_line(tmp_path, capsys, argv, message):
    from modelsteal.cli.main import main

    ckpt = make_checkpoint(tmp_path / "victim.pt")
    assert main(["serve", "--model", str(ckpt), "--store", str(tmp_path / "s.db"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_two_workers_score_batches_in_arrival_order_when_a_flush_is_slow(tmp_path, digits, digits_victim):
    # Bugs caught: with two batcher workers, a batch whose reservation committed first scored before an earlier
    # batch still waiting on its flush (PRADA would see a client's requests out of order, and the states would
    # differ from one-by-one); a ticket never passed after a batch (the next worker would hang); tickets issued
    # outside the queue's lock (out of arrival order).
    store = open_store(tmp_path / "ledger.db")
    clients = {n: store.create_key(name=n)[0] for n in ("alice", "bob", "carol")}
    api = _api(digits, digits_victim, response="none", defense=None)
    runner = BatchRunner(api, store, journal=DetectorJournal(api.detector, store), lock=threading.Lock())
    scored: list[str] = []
    query_many = api.query_many

    def recording(requests, **kw):
        scored.extend(who for who, _ in requests)
        return query_many(requests, **kw)

    api.query_many = recording  # type: ignore[method-assign]
    reserve_many = store.reserve_many
    calls = [0]

    def slow_first(requests, **kw):
        calls[0] += 1
        if calls[0] == 1:
            time.sleep(0.4)  # the first batch's flush is slow: the second batch reserves meanwhile
        return reserve_many(requests, **kw)

    store.reserve_many = slow_first  # type: ignore[method-assign]
    batcher = Batcher(runner.run, max_rows=64, max_delay_s=0.001, workers=2, turnstile=runner.turnstile)
    requests = _requests(digits)[:6]
    jobs = _jobs(clients, requests)
    out: dict[int, torch.Tensor] = {}

    def send(i: int) -> None:
        out[i] = batcher.submit(jobs[i])

    threads = []
    for i in range(len(jobs)):  # one after the other: batch 0 = request 0 (slow flush), the rest after it
        threads.append(threading.Thread(target=send, args=(i,)))
        threads[-1].start()
        time.sleep(0.05)
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    assert not any(t.is_alive() for t in threads) and len(out) == len(jobs)
    assert calls[0] >= 2  # the later requests were reserved while the first batch was still flushing
    assert scored == [who for who, _ in requests]  # scored in arrival order all the same
    ref = _api(digits, digits_victim, response="none", defense=None)
    for i, (who, x) in enumerate(requests):
        assert torch.allclose(out[i], ref.query(x, client=who), atol=1e-6)
    for who in clients:
        assert api.detector.state_dict(who) == ref.detector.state_dict(who), who
    store.close()


def test_the_event_loop_awaits_its_batch_and_a_cancelled_wait_still_counts():
    # Bugs caught: a waiter resolved with another job's answer, a future never resolved (the request hangs), a
    # cancelled wait (client gone) that kills the batch or leaves its job unanswered, batching off not run.
    import asyncio

    seen: list[int] = []

    def run(jobs: list[Job]) -> None:
        seen.append(len(jobs))
        time.sleep(0.05)
        for j in jobs:
            j.answer = j.x * 2

    batcher = Batcher(run, max_rows=100, max_delay_s=0.01)
    xs = [torch.full((1, 3), float(i)) for i in range(6)]
    jobs = [Job(None, x) for x in xs]  # type: ignore[arg-type]

    async def main() -> list[torch.Tensor]:
        tasks = [asyncio.create_task(batcher.submit_async(j)) for j in jobs]
        await asyncio.sleep(0.005)
        tasks[-1].cancel()  # the client of the last request went away while its batch runs
        done = await asyncio.gather(*tasks[:-1])
        with pytest.raises(asyncio.CancelledError):
            await tasks[-1]
        return done

    answers = asyncio.run(main())
    for x, y in zip(xs[:-1], answers, strict=True):
        assert torch.equal(y, x * 2)
    jobs[-1].done.wait(5)
    assert torch.equal(jobs[-1].answer, xs[-1] * 2)  # its batch answered (and would have counted) it
    assert sum(seen) == 6 and len(seen) <= 2
    batcher.close()
    off = Batcher(run, max_rows=100, max_delay_s=0)
    assert torch.equal(asyncio.run(off.submit_async(Job(None, xs[3]))), xs[3] * 2)  # type: ignore[arg-type]
