"""The state one ``modelsteal serve`` app shares between requests (:class:`Service`): the prediction API, the
ledger store, the request limits, the inference lock and the dynamic batcher; and the protocol-neutral
:meth:`Service.answer_rows` that ``/v1`` and ``/v2`` both answer through."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch

from modelsteal.blackbox import PredictionAPI, QueryRefusedError
from modelsteal.serve.batcher import Batcher, BatchRunner, Job
from modelsteal.serve.codec import check_batch, encode_tensor, parse_request
from modelsteal.serve.detector_state import DetectorJournal
from modelsteal.serve.store import ClientInfo, IdempotencyKey, IdempotentReplay, LedgerEntry, Store

log = logging.getLogger("modelsteal.serve")

#: request bodies up to this size are decoded, answered and encoded on the event loop (awaiting their batch
#: without holding a thread); larger ones go through a worker thread, so that the loop is never blocked long
INLINE_BODY_BYTES = 64 * 1024


class Service:
    """The state one app instance shares between requests: API, store, limits, the inference lock and the
    batcher (:mod:`modelsteal.serve.batcher`)."""

    def __init__(self, api: PredictionAPI, store: Store, *, max_batch: int, max_body_bytes: int,
                 input_range: tuple[float, float], tolerance: float, record_inputs: bool,
                 info: dict[str, Any], max_batch_rows: int = 256, max_batch_delay_ms: float = 2.0,
                 idempotency_window_s: float = 86_400.0, snapshot_every: int | None = 1000,
                 batch_workers: int = 1, auth_cache_s: float = 1.0) -> None:
        self.api = api
        self.store = store
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        self.input_range = input_range
        self.tolerance = tolerance
        self.record_inputs = record_inputs
        self.info = info
        self.idempotency_window_s = float(idempotency_window_s)
        self.lock = threading.Lock()
        detector = api.detector
        self.journal = (DetectorJournal(detector, store, snapshot_every=snapshot_every)
                        if detector is not None and detector.stateful else None)
        self.runner = BatchRunner(api, store, journal=self.journal, lock=self.lock)
        self.batcher = Batcher(self.runner.run, max_rows=max_batch_rows, max_delay_s=max_batch_delay_ms / 1000,
                               workers=batch_workers, turnstile=self.runner.turnstile)
        self.auth_cache_s = float(auth_cache_s)
        self._auth_cache: dict[str, tuple[ClientInfo, float]] = {}

    async def authenticate(self, key: str) -> ClientInfo:
        """The client owning ``key``, from a cache of at most ``auth_cache_s`` seconds (else from the store, in
        a worker thread). The cached client only serves the checks made before a request's body is read (key,
        exhausted budget, rate limit): the ledger's reservation checks all three again, on the stored client,
        in the transaction that counts the request — so a key revoked or a budget used up meanwhile is refused
        there, never answered."""
        from starlette.concurrency import run_in_threadpool

        now = time.monotonic()
        hit = self._auth_cache.get(key)
        if hit is not None and now - hit[1] < self.auth_cache_s:
            return hit[0]
        client = await run_in_threadpool(self.store.authenticate, key)
        if self.auth_cache_s > 0:
            if len(self._auth_cache) > 10_000:
                self._auth_cache.clear()
            self._auth_cache[key] = (client, now)
        return client

    def answer(self, client: ClientInfo, body: bytes, *, idempotency_key: str | None = None,
               arrival: Any = None) -> bytes:
        """The whole ``/v1/predict`` path in a worker thread: decode, :meth:`answer_rows`, encode."""
        arr, encoding = parse_request(body, max_batch=self.max_batch)
        y, entry, updated = self.answer_rows(client, arr, encode=lambda y: encode_tensor(y, encoding),
                                             idempotency_key=idempotency_key, arrival=arrival)
        return _predict_payload(y, entry, updated)

    async def answer_async(self, client: ClientInfo, body: bytes, *, idempotency_key: str | None = None,
                           arrival: Any = None) -> bytes:
        """:meth:`answer` on the event loop for a body of at most :data:`INLINE_BODY_BYTES` (in a worker thread
        above that)."""
        if len(body) > INLINE_BODY_BYTES:
            from starlette.concurrency import run_in_threadpool

            return await run_in_threadpool(partial(self.answer, client, body, idempotency_key=idempotency_key,
                                                   arrival=arrival))
        arr, encoding = parse_request(body, max_batch=self.max_batch)
        y, entry, updated = await self.answer_rows_async(client, arr, encode=lambda y: encode_tensor(y, encoding),
                                                         idempotency_key=idempotency_key, arrival=arrival)
        return _predict_payload(y, entry, updated)

    def answer_rows(self, client: ClientInfo, x: Any, *, encode: Callable[[Any], Any] | None = None,
                    idempotency_key: str | None = None, arrival: Any = None) -> tuple[Any, LedgerEntry, ClientInfo]:
        """Answer a decoded batch ``x`` (an array or tensor ``(N, *input_shape)``), whatever protocol carried it:
        validate it (:func:`check_batch`), record its rows in the ledger (budget and rate limit checked there),
        answer it in a batch with other requests (:mod:`modelsteal.serve.batcher`), and return ``(answer, ledger
        entry, updated client)``; ``encode`` (optional) turns the ``(N, K)`` answer into what the protocol sends,
        inside the same release-on-failure guard: a request that fails anywhere before its answer is encoded is
        taken back out of the ledger. With ``idempotency_key``, a retry of a request this client made within
        the window returns the stored answer (and the entry it was counted under) without counting or scoring
        anything again. ``arrival``: the request's token from ``batcher.arriving()`` (a batch waits for the
        requests still being read). Blocks the calling thread until the batch is answered."""
        job = self._job(client, x, idempotency_key)
        try:
            with self._released_on_failure(job):
                y = self.batcher.submit(job, arrival)  # reserved (budget, rate limit, key) with its batch, answered
                out = encode(y) if encode is not None else y
        except IdempotentReplay as replay:
            return self._replayed(client, replay, encode)
        assert job.entry is not None and job.updated is not None
        return out, job.entry, job.updated

    async def answer_rows_async(self, client: ClientInfo, x: Any, *, encode: Callable[[Any], Any] | None = None,
                                idempotency_key: str | None = None,
                                arrival: Any = None) -> tuple[Any, LedgerEntry, ClientInfo]:
        """:meth:`answer_rows` for the event loop: awaits the batch instead of blocking a thread."""
        job = self._job(client, x, idempotency_key)
        try:
            with self._released_on_failure(job):
                y = await self.batcher.submit_async(job, arrival)
                out = encode(y) if encode is not None else y
        except IdempotentReplay as replay:
            return self._replayed(client, replay, encode)
        assert job.entry is not None and job.updated is not None
        return out, job.entry, job.updated

    def _job(self, client: ClientInfo, x: Any, idempotency_key: str | None) -> Job:
        """The validated request as a batcher :class:`Job` (rows checked, inputs kept if recorded)."""
        x = check_batch(x, input_shape=self.api.input_shape, max_batch=self.max_batch,
                        input_range=self.input_range, tolerance=self.tolerance)
        blob = x.numpy().astype("<f4", copy=False).tobytes() if (self.record_inputs or idempotency_key) else None
        idem = None if idempotency_key is None else IdempotencyKey(
            idempotency_key, _fingerprint(x, blob), self.idempotency_window_s)
        return Job(client, x, inputs=blob if self.record_inputs else None, idempotency=idem)

    @contextmanager
    def _released_on_failure(self, job: Job) -> Iterator[None]:
        """A request that fails before its answer is encoded is taken back out of the ledger (its entry
        released). Not for a refusal (the batch's commit kept it and released the entry), a replay (nothing was
        counted), or a cancelled wait (the client went away; the batch still answers and counts the rows)."""
        try:
            yield
        except (IdempotentReplay, QueryRefusedError, asyncio.CancelledError):
            raise
        except BaseException:
            if job.entry is not None:
                try:
                    self.store.release(job.entry.id)
                except Exception:  # noqa: BLE001 - keep the original error; an over-count is the safe side
                    log.exception("could not release ledger entry %s after a failed request", job.entry.id)
            raise

    def _replayed(self, client: ClientInfo, replay: IdempotentReplay,
                  encode: Callable[[Any], Any] | None) -> tuple[Any, LedgerEntry, ClientInfo]:
        """The stored outcome of an earlier request with the same idempotency key: its answer, or its refusal."""
        stored = json.loads(replay.answer)
        if replay.status != 200:
            raise QueryRefusedError(stored["detail"], flagged=stored.get("flagged"))
        arr = np.frombuffer(base64.b64decode(stored["base64"]), dtype="<f4").reshape(stored["shape"])
        y = torch.from_numpy(arr.copy())
        entry = LedgerEntry(id=int(stored["ledger_id"]), client_id=client.id, n=int(stored["n"]),
                            created_at=float(stored["created_at"]))
        then = dataclasses.replace(client, queries=int(stored["queries"]))
        return (encode(y) if encode is not None else y), entry, then

    def close(self) -> None:
        self.batcher.close()
        self.runner.close()


def _predict_payload(y: Any, entry: LedgerEntry, updated: ClientInfo) -> bytes:
    """The ``/v1/predict`` answer body."""
    payload = {"outputs": y, "queries": updated.queries, "remaining": updated.remaining, "ledger_id": entry.id}
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _fingerprint(x: Any, blob: bytes | None) -> str:
    """SHA-256 of a validated batch's shape and float32 bytes: a retry must carry the same inputs."""
    h = hashlib.sha256(repr(tuple(x.shape)).encode())
    h.update(blob if blob is not None else x.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()
