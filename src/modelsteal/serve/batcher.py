"""Dynamic batching for ``modelsteal serve``: concurrent requests answered as one batch, durable in one commit.

Requests reach the batcher validated, as a :class:`Job` ``(client, tensor)``: a request whose rows fail
validation never enters a batch. :class:`Batcher` queues jobs and runs a batch when its rows reach
``max_rows`` or its oldest job has waited ``max_delay_s`` (Triton's dynamic batcher works the same way);
``max_delay_s = 0`` turns batching off (each request is a batch of one, answered in its own thread).

:class:`BatchRunner` answers a batch:

0. the batch's reservations are recorded in the ledger in one transaction (:meth:`Store.reserve_many
   <modelsteal.serve.store.Store.reserve_many>`: budget, rate limit and idempotency key checked per request,
   in arrival order); a request refused there (over its budget, rate limited, or the replay of an earlier
   request) leaves the batch before anything runs;

then, under the server's inference lock:

1. a stateful detector's state (PRADA) is brought up to date from the store for each client in the batch
   (:class:`~modelsteal.serve.detector_state.DetectorJournal`);
2. :meth:`PredictionAPI.query_many <modelsteal.PredictionAPI.query_many>` runs model → detector → defense →
   response → output over all rows at once; a stateful detector scores each request on its client's state in
   arrival order (PRADA's sequential semantics across a batch mixing clients), and the request's journal entry
   is taken right after it is scored; a stateful defense (DAWN) is called per request;
3. one transaction (:meth:`Store.commit_batch <modelsteal.serve.store.Store.commit_batch>`: *group commit*)
   writes every request's flag count, journal entry, watermark records, refusal and idempotent answer;
   only then is any request answered. So a batch costs two durable flushes (one when nothing but the
   reservations is written: no detector, no idempotency keys, no records), whatever its size. A client
   whose journal another worker appended to meanwhile is forgotten and its requests scored again (the
   others are answered).

If the model, the defense or the commit fails, every request of the batch fails (and the caller releases its
ledger entry, ``job.entry``); the clients' in-memory detector states are dropped and reloaded from the store.

Example::

    runner = BatchRunner(api, store, journal=None, lock=threading.Lock())
    batcher = Batcher(runner.run, max_rows=256, max_delay_s=0.002)
    job = Job(client, x)
    answer = batcher.submit(job)          # blocks until the batch is committed; job.entry counts it
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import Tensor

from modelsteal.blackbox import PredictionAPI
from modelsteal.serve.detector_state import DetectorJournal
from modelsteal.serve.store import ClientInfo, IdempotencyKey, LedgerEntry, RequestRecord, Store

__all__ = ["BatchRunner", "Batcher", "Job", "Turnstile", "stored_answer"]

_STATE_RETRIES = 8  # a request re-scored after another worker saved the same client's detector state
_PURGE_EVERY = 1000  # batches between two purges of expired idempotency keys


@dataclasses.dataclass(eq=False)
class Job:
    """One validated request waiting for its batch: ``x`` ``(n, *input_shape)`` of ``client``, the raw
    ``inputs`` to keep in the ledger (or ``None``), and its ``idempotency`` key (its answer is then stored for
    a retry). The runner sets ``entry`` and ``updated`` (its ledger entry and the client after it) once it is
    reserved, then ``answer`` or ``error``."""

    client: ClientInfo
    x: Tensor
    inputs: bytes | None = None
    idempotency: IdempotencyKey | None = None
    entry: LedgerEntry | None = None
    updated: ClientInfo | None = None
    answer: Tensor | None = None
    error: BaseException | None = None
    enqueued: float = dataclasses.field(default_factory=time.monotonic)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    ticket: int | None = None  #: the batch's place in line (:class:`Turnstile`), set by the batcher
    waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None  #: :meth:`Batcher.submit_async`

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    @property
    def idempotency_key(self) -> str | None:
        return None if self.idempotency is None else self.idempotency.key


def stored_answer(job: Job, answer: Tensor) -> bytes:
    """What the store keeps with an idempotency key for an answered request: the ``(n, K)`` answer (float32,
    base64), the ledger entry and the client's count after it, protocol-neutral (each protocol re-encodes)."""
    assert job.entry is not None and job.updated is not None
    y = answer.detach().to("cpu").float().contiguous()
    return json.dumps({"shape": list(y.shape), "base64": base64.b64encode(y.numpy().astype("<f4").tobytes()).decode(),
                       "ledger_id": job.entry.id, "queries": job.updated.queries, "n": job.rows,
                       "created_at": job.entry.created_at}, separators=(",", ":")).encode("utf-8")


class Turnstile:
    """Lets numbered batches through one at a time, in number order: batches reserved concurrently by the
    batcher's workers are scored and answered in the order the batcher formed them (arrival order).

    A ticket passes by leaving :meth:`turn`, or by :meth:`skip` (a batch that never reached its turn: the
    batcher skips every ticket it handed out once the batch is over, so a failure cannot block the line)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._issued = 0
        self._passed: set[int] = set()

    def issue(self) -> int:
        """The next ticket."""
        with self._cond:
            self._issued += 1
            return self._issued - 1

    @contextmanager
    def turn(self, ticket: int | None) -> Iterator[None]:
        """Wait until every lower ticket has passed, hold the turn, then pass ``ticket`` (``None``: no order)."""
        if ticket is None:
            yield
            return
        with self._cond:
            while self._next != ticket:
                self._cond.wait()
        try:
            yield
        finally:
            self.skip(ticket)

    def skip(self, ticket: int | None) -> None:
        """Mark ``ticket`` as passed (a no-op if it already has)."""
        if ticket is None:
            return
        with self._cond:
            if ticket < self._next:
                return
            self._passed.add(ticket)
            while self._next in self._passed:
                self._passed.discard(self._next)
                self._next += 1
            self._cond.notify_all()


class BatchRunner:
    """Answers a batch of :class:`Job` s through ``api`` and makes it durable in ``store`` (module docstring).

    ``journal`` keeps a stateful detector's per-client state in the store (``None`` without one); ``lock`` is
    the server's inference lock (defenses and detectors keep state: one batch at a time)."""

    def __init__(self, api: PredictionAPI, store: Store, *, journal: DetectorJournal | None,
                 lock: threading.Lock) -> None:
        self.api = api
        self.store = store
        self.journal = journal
        self.lock = lock
        self.turnstile = Turnstile()  #: the order batches are scored in (their tickets)
        self._reserver: ThreadPoolExecutor | None = None
        self._reserver_lock = threading.Lock()
        self.batches = 0  #: batches answered
        self.requests = 0  #: requests answered or refused in them
        self.rows = 0  #: their rows

    def run(self, jobs: list[Job]) -> None:
        """Reserve and answer ``jobs`` (setting each one's ``entry``, then ``answer`` or ``error``); never
        raises for a job's own failure. Jobs that carry a ticket (the batcher's) are scored in ticket order."""
        ticket = jobs[0].ticket if jobs else None
        try:
            reserved, failed = self._reserve(jobs)
        except BaseException:
            self.turnstile.skip(ticket)
            raise
        pending = []
        for job, res in zip(jobs, reserved, strict=True):
            if isinstance(res, BaseException):
                job.error = res  # over budget, rate limited, a replay: never enters the batch
            else:
                job.entry, job.updated = res
                pending.append(job)
        if not pending:
            self.turnstile.skip(ticket)
            return
        jobs = list(pending)
        try:
            if failed is not None:
                raise failed  # the upstream failed: the reserved rows are released by their callers
            with self.turnstile.turn(ticket):
                for _ in range(_STATE_RETRIES):
                    with self.lock:
                        pending = self._attempt(pending)
                    if not pending:
                        break
            for job in pending:
                job.error = RuntimeError(f"detector state of client {job.client.name!r} kept changing under this "
                                         f"worker ({_STATE_RETRIES} tries)")
        except BaseException as e:  # noqa: BLE001 - every job of the batch fails with it
            for job in jobs:
                if job.answer is None and job.error is None:
                    job.error = e
            if not isinstance(e, Exception):
                raise

    def _reserve(self, jobs: list[Job]) -> tuple[list[tuple[LedgerEntry, ClientInfo] | BaseException],
                                                 Exception | None]:
        """The batch's ledger reservations (one group-committed transaction). A gateway's model
        (:class:`~modelsteal.serve.upstream.UpstreamModel`) asks its upstream for the batch's rows meanwhile, in
        this thread, while another thread waits on the reservation's durable flush: the two waits overlap
        instead of adding up. The upstream answer is used only for the rows that were reserved (a refused
        request's rows were asked for and are thrown away: nothing is answered, counted or scored for them).
        Returns the reservations and the upstream's failure (``None`` if it answered)."""
        requests = [(j.client.id, j.rows, j.inputs, j.idempotency) for j in jobs]
        prefetch = getattr(self.api.model, "prefetch", None)
        if prefetch is None:
            return self.store.reserve_many(requests), None
        if self._reserver is None:
            with self._reserver_lock:
                if self._reserver is None:
                    self._reserver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="modelsteal-reserve")
        reservation = self._reserver.submit(self.store.reserve_many, requests)
        failed = None
        try:
            prefetch(torch.cat([torch.as_tensor(j.x, dtype=torch.float32).reshape(-1, *self.api.input_shape)
                                for j in jobs]))
        except Exception as e:  # noqa: BLE001 - fails the batch's reserved requests (run)
            failed = e
        return reservation.result(), failed

    def close(self) -> None:
        """Stop the reservation threads (a gateway's)."""
        if self._reserver is not None:
            self._reserver.shutdown(wait=True)

    def _attempt(self, jobs: list[Job]) -> list[Job]:
        """Score, answer and commit ``jobs`` once; the jobs to score again (their client's journal moved)."""
        journal = self.journal
        clients = {job.client.id: job.client.name for job in jobs}
        try:
            if journal is not None:
                for cid, name in clients.items():
                    journal.load(cid, name)
            captured: dict[int, tuple[tuple[int, str, str, bytes], bool]] = {}

            def on_scored(i: int) -> None:
                if journal is not None:
                    captured[i] = journal.capture(jobs[i].client.id, jobs[i].client.name)

            results = self.api.query_many([(job.client.name, job.x) for job in jobs], on_scored=on_scored)
            records = []
            for i, (job, res) in enumerate(zip(jobs, results, strict=True)):
                entry, compact = captured.get(i, (None, False))
                assert job.entry is not None
                rec = RequestRecord(client_id=job.client.id, ledger_id=job.entry.id, rows=job.rows,
                                    flagged=res.flagged, refused=res.refused is not None, journal=entry,
                                    compact=compact, idempotency_key=job.idempotency_key)
                if res.refused is not None:
                    rec.answer = json.dumps({"detail": str(res.refused), "code": "query_refused",
                                             "flagged": res.flagged}).encode("utf-8")
                else:
                    assert res.answers is not None
                    if res.records is not None:
                        rec.watermarks = json.dumps(res.records, separators=(",", ":")).encode("utf-8")
                    if job.idempotency_key is not None:
                        rec.answer = stored_answer(job, res.answers)
                records.append(rec)
            purge = None
            if job_idem := [j.idempotency for j in jobs if j.idempotency is not None]:
                if (self.batches + 1) % _PURGE_EVERY == 0:
                    purge = time.time() - max(k.window_s for k in job_idem)
            conflicted = self.store.commit_batch(records, purge_before=purge)
        except BaseException:
            if journal is not None:
                for cid in clients:
                    journal.forget(cid)  # half-updated states: reload from the store next time
            raise
        again = []
        for job, res in zip(jobs, results, strict=True):
            if job.client.id in conflicted:
                again.append(job)
            elif res.refused is not None:
                job.error = res.refused
            else:
                job.answer = res.answers
        if journal is not None:
            for cid in conflicted:
                journal.forget(cid)
        self.batches += 1
        self.requests += len(jobs) - len(again)
        self.rows += sum(job.rows for job in jobs if job not in again)
        return again


@dataclasses.dataclass(eq=False)
class _Arrival:
    done: bool = False


class Batcher:
    """A queue of :class:`Job` s run in batches by ``run``: a batch is formed when the queued rows reach
    ``max_rows`` or the oldest job has waited ``max_delay_s`` seconds, and holds jobs in arrival order up to
    ``max_rows`` rows (a single larger request runs alone). ``max_delay_s = 0``: no queue, :meth:`submit` runs
    the job as a batch of one in the caller's thread. Requests the server is still reading or decoding
    (:meth:`arriving`) are the only ones that could join a batch: when none is on its way, the batch does not
    wait for the delay (a lone client pays none).

    ``workers`` threads take batches in turn (default 2), so that one batch's ledger reservation (a durable
    flush: the thread waits on the disk) overlaps the previous batch's inference; each batch carries a ticket
    from ``turnstile`` (the runner's :class:`Turnstile`), and the runner scores batches in ticket order, which
    is arrival order. With one worker, batches run strictly one after the other."""

    def __init__(self, run: Callable[[list[Job]], None], *, max_rows: int, max_delay_s: float, workers: int = 1,
                 turnstile: Turnstile | None = None) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if workers > 1 and turnstile is None:
            raise ValueError("several workers need the runner's turnstile to keep batches in arrival order")
        self._run = run
        self.max_rows = int(max_rows)
        self.max_delay_s = float(max_delay_s)
        self.workers = int(workers)
        self._turnstile = turnstile
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._arriving = 0  # requests between arriving() and submit(): they may still join the next batch
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.max_delay_s > 0

    @contextmanager
    def arriving(self) -> Iterator[_Arrival]:
        """Count a request from when the server starts reading it until it is submitted (or fails), so that a
        forming batch waits for it; pass the yielded token to :meth:`submit`."""
        token = _Arrival()
        with self._cond:
            self._arriving += 1
        try:
            yield token
        finally:
            self._arrived(token)

    def _arrived(self, token: _Arrival | None) -> None:
        if token is None or token.done:
            return
        with self._cond:
            if not token.done:
                token.done = True
                self._arriving -= 1
                self._cond.notify_all()

    def submit(self, job: Job, arrival: _Arrival | None = None) -> Tensor:
        """Queue ``job``, wait until its batch is committed, and return its answer (or raise its error);
        ``arrival``: the token of :meth:`arriving` (the request is no longer on its way)."""
        if not self.enabled:
            self._arrived(arrival)
            self._run([job])
        else:
            self._enqueue(job, arrival)
            job.done.wait()
        return _outcome(job)

    async def submit_async(self, job: Job, arrival: _Arrival | None = None) -> Tensor:
        """:meth:`submit` for the event loop: the loop is not blocked and no thread waits for the batch (the
        worker resolves every waiting request of a batch with one call into the loop). With batching off the
        job runs in a worker thread of the loop's pool. If the caller is cancelled (the client went away), the
        job still runs to its end: its rows were counted and scored."""
        if not self.enabled:
            import anyio.to_thread

            self._arrived(arrival)
            await anyio.to_thread.run_sync(self._run, [job])
        else:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            job.waiter = (loop, future)
            self._enqueue(job, arrival)
            await asyncio.shield(future)
        return _outcome(job)

    def _enqueue(self, job: Job, arrival: _Arrival | None) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            if arrival is not None and not arrival.done:
                arrival.done = True
                self._arriving -= 1
            if not self._threads:
                self._threads = [threading.Thread(target=self._loop, name=f"modelsteal-batcher-{i}", daemon=True)
                                 for i in range(self.workers)]
                for thread in self._threads:
                    thread.start()
            self._queue.append(job)
            self._cond.notify()

    def _take(self) -> list[Job] | None:
        """The next batch (``None`` once closed and drained), waiting for it to fill or for its deadline; its
        jobs carry its ticket."""
        with self._cond:
            while True:
                while not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                while self._queue and not self._closed:
                    queued = sum(job.rows for job in self._queue)
                    wait = self._queue[0].enqueued + self.max_delay_s - time.monotonic()
                    if queued >= self.max_rows or wait <= 0 or self._arriving <= 0:
                        break
                    self._cond.wait(wait)
                if self._queue:  # (another worker may have taken it while this one waited)
                    break
            batch = [self._queue.popleft()]
            rows = batch[0].rows
            while self._queue and rows + self._queue[0].rows <= self.max_rows:
                rows += self._queue[0].rows
                batch.append(self._queue.popleft())
            if self._turnstile is not None:
                ticket = self._turnstile.issue()  # issued under the queue's lock: tickets follow arrival order
                for job in batch:
                    job.ticket = ticket
            if self._queue:
                self._cond.notify()  # another worker may take the rest
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as e:  # noqa: BLE001 - the worker must survive to serve the next batch
                for job in batch:
                    if job.answer is None and job.error is None:
                        job.error = e
            finally:
                if self._turnstile is not None:
                    self._turnstile.skip(batch[0].ticket)  # a batch that never reached its turn
                _wake(batch)

    def close(self) -> None:
        """Answer what is queued, then stop the worker threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)


def _outcome(job: Job) -> Tensor:
    if job.error is not None:
        raise job.error
    assert job.answer is not None
    return job.answer


def _wake(batch: list[Job]) -> None:
    """Wake the batch's waiters: threads through their event, event loops with one call each."""
    loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for job in batch:
        job.done.set()
        if job.waiter is not None:
            loops.setdefault(job.waiter[0], []).append(job.waiter[1])
    for loop, futures in loops.items():
        try:
            loop.call_soon_threadsafe(_resolve, futures)
        except RuntimeError:  # the loop has closed (server shutting down): nobody is waiting any more
            pass


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
