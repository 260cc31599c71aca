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

import base64
import dataclasses
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from modelsteal.blackbox import PredictionAPI
from modelsteal.serve.detector_state import DetectorJournal
from modelsteal.serve.store import ClientInfo, IdempotencyKey, LedgerEntry, RequestRecord, Store

__all__ = ["BatchRunner", "Batcher", "Job", "stored_answer"]

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
        self.batches = 0  #: batches answered
        self.requests = 0  #: requests answered or refused in them
        self.rows = 0  #: their rows

    def run(self, jobs: list[Job]) -> None:
        """Reserve and answer ``jobs`` (setting each one's ``entry``, then ``answer`` or ``error``); never
        raises for a job's own failure."""
        reserved = self.store.reserve_many([(j.client.id, j.rows, j.inputs, j.idempotency) for j in jobs])
        pending = []
        for job, res in zip(jobs, reserved, strict=True):
            if isinstance(res, BaseException):
                job.error = res  # over budget, rate limited, a replay: never enters the batch
            else:
                job.entry, job.updated = res
                pending.append(job)
        if not pending:
            return
        jobs = list(pending)
        try:
            self._prefetch(pending)
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

    def _prefetch(self, jobs: list[Job]) -> None:
        """A gateway's model (:class:`~modelsteal.serve.upstream.UpstreamModel`) asks its upstream for the batch
        here, before the inference lock, so that batches answered in other threads (batching off: each request in
        its own) wait on the upstream concurrently; the forward under the lock then uses that answer."""
        prefetch = getattr(self.api.model, "prefetch", None)
        if prefetch is not None:
            prefetch(torch.cat([torch.as_tensor(j.x, dtype=torch.float32).reshape(-1, *self.api.input_shape)
                                for j in jobs]))

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
    """A queue of :class:`Job` s run in batches by ``run`` on one worker thread: a batch is formed when the
    queued rows reach ``max_rows`` or the oldest job has waited ``max_delay_s`` seconds, and holds jobs in
    arrival order up to ``max_rows`` rows (a single larger request runs alone). ``max_delay_s = 0``: no
    queue, :meth:`submit` runs the job as a batch of one in the caller's thread. Requests the server is still
    reading or decoding (:meth:`arriving`) are the only ones that could join a batch: when none is on its
    way, the batch does not wait for the delay (a lone client pays none)."""

    def __init__(self, run: Callable[[list[Job]], None], *, max_rows: int, max_delay_s: float) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s}")
        self._run = run
        self.max_rows = int(max_rows)
        self.max_delay_s = float(max_delay_s)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
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
            with self._cond:
                if self._closed:
                    raise RuntimeError("the server is shutting down")
                if arrival is not None and not arrival.done:
                    arrival.done = True
                    self._arriving -= 1
                if self._thread is None:
                    self._thread = threading.Thread(target=self._loop, name="modelsteal-batcher", daemon=True)
                    self._thread.start()
                self._queue.append(job)
                self._cond.notify()
            job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.answer is not None
        return job.answer

    def _take(self) -> list[Job] | None:
        """The next batch (``None`` once closed and drained), waiting for it to fill or for its deadline."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            while not self._closed:
                queued = sum(job.rows for job in self._queue)
                wait = self._queue[0].enqueued + self.max_delay_s - time.monotonic()
                if queued >= self.max_rows or wait <= 0 or self._arriving <= 0:
                    break
                self._cond.wait(wait)
            batch = [self._queue.popleft()]
            rows = batch[0].rows
            while self._queue and rows + self._queue[0].rows <= self.max_rows:
                rows += self._queue[0].rows
                batch.append(self._queue.popleft())
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
                for job in batch:
                    job.done.set()

    def close(self) -> None:
        """Answer what is queued, then stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
