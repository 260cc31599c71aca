"""The FastAPI application behind ``modelsteal serve``.

Endpoints (all JSON):

- ``POST /v1/predict`` with ``Authorization: Bearer KEY`` and body ``{"inputs": X}``, where ``X`` is a
  batch ``(N, *input_shape)`` of raw ``[0, 1]`` values, either nested arrays or the compact form
  ``{"dtype": "float32", "shape": [N, ...], "base64": "<little-endian bytes>"}``. The answer is
  ``{"outputs": Y, "queries": used, "remaining": left, "ledger_id": id}`` with ``Y`` the ``(N, K)`` defended
  answers in the same encoding as the inputs (``"encoding": "json" | "base64"`` in the request overrides).
- ``GET /v1/usage``: the caller's own ``queries``, ``budget``, ``remaining``, ``rate_limit``, ``flags`` (the
  key's state: budget exhausted, rate limited) and ``flagged`` (how many of its queries the API's detector
  flagged, from the store, so it survives a restart).
- ``GET /v1/info``: ``input_shape``, ``num_classes``, defense, output format and request limits.
- ``GET /healthz``; OpenAPI docs at ``/docs`` and ``/openapi.json``.
- the Open Inference Protocol (``/v2/health/*``, ``/v2/models/{name}[/ready|/infer]``), same keys, ledger and
  API: :mod:`modelsteal.serve.v2`.

Every request is authenticated against the :class:`~modelsteal.serve.store.Store`; a batch is validated
(shape, dtype, finiteness, value range, size), then recorded in the ledger — budget and rate limit checked
in the same transaction — and only then answered by the :class:`~modelsteal.PredictionAPI` (inference is
serialised by a lock and runs in the thread pool, off the event loop). A query is one input row. When the
API has a detector, the number of the request's rows it flagged is written to the store next to the ledger
entry before the answer is sent; a batch its ``refuse`` response refuses is a 403 ``query_refused`` and is
taken back out of the ledger, like any request that was not answered. A *stateful* detector (PRADA) keeps
each client's state in the store (:mod:`modelsteal.serve.detector_state`): loaded before the request, its
change saved after it in the same transaction as the request's flag count, before the answer is sent.
The body format lives in :mod:`modelsteal.serve.codec`, the server's settings in
:mod:`modelsteal.serve.config`; both are re-exported here.

Example::

    api = PredictionAPI(model, defense=make_defense("mad", epsilon=0.5), output="probs")
    app = create_app(api, store="ledger.db")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at runtime, and
# the fastapi/starlette names they use are imported lazily inside create_app.
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from modelsteal.blackbox import PredictionAPI, QueryRefusedError
from modelsteal.serve import require
from modelsteal.serve.codec import ENCODINGS, APIError, check_batch, decode_request, encode_tensor, parse_request
from modelsteal.serve.config import CONFIG_ENV, ServeConfig, build_api, default_max_body_bytes
from modelsteal.serve.detector_state import DetectorJournal
from modelsteal.serve.store import (
    AuthenticationError,
    BudgetExhaustedError,
    ClientInfo,
    DetectorStateConflict,
    LedgerEntry,
    RateLimitedError,
    Store,
    open_store,
)

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

__all__ = [
    "CONFIG_ENV", "ENCODINGS", "APIError", "ServeConfig", "app_from_environment", "build_api", "create_app",
    "create_app_from_config", "decode_request", "default_max_body_bytes", "encode_tensor",
]

log = logging.getLogger("modelsteal.serve")
_STATE_RETRIES = 8  # a request re-scored after another worker saved the same client's detector state


# -- the application ----------------------------------------------------------------------------------------
_PREDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "additionalProperties": False,
    "properties": {
        "inputs": {
            "description": "A batch (N, *input_shape) of raw values in the model's range ([0, 1]): nested arrays "
                           "of numbers, or the compact {dtype: float32, shape, base64} object.",
            "oneOf": [
                {"type": "array", "items": {}},
                {
                    "type": "object",
                    "required": ["shape", "base64"],
                    "properties": {
                        "dtype": {"type": "string", "enum": ["float32"]},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "base64": {"type": "string", "description": "little-endian float32 bytes, base64"},
                    },
                },
            ],
        },
        "encoding": {"type": "string", "enum": list(ENCODINGS),
                     "description": "encoding of the outputs; defaults to that of the inputs"},
    },
}

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed JSON"},
    401: {"description": "Missing or invalid API key"},
    403: {"description": "Revoked key, query budget exhausted, or batch refused by the detector (query_refused)"},
    413: {"description": "Body or batch too large"},
    422: {"description": "Inputs of the wrong shape, dtype or range, or NaN/Inf"},
    429: {"description": "Rate limit exceeded (see Retry-After)"},
}


class _Service:
    """The state one app instance shares between requests: API, store, limits and the inference lock."""

    def __init__(self, api: PredictionAPI, store: Store, *, max_batch: int, max_body_bytes: int,
                 input_range: tuple[float, float], tolerance: float, record_inputs: bool,
                 info: dict[str, Any]) -> None:
        self.api = api
        self.store = store
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        self.input_range = input_range
        self.tolerance = tolerance
        self.record_inputs = record_inputs
        self.info = info
        self.lock = threading.Lock()
        detector = api.detector
        self.journal = DetectorJournal(detector, store) if detector is not None and detector.stateful else None
        self.prefetch: Callable[[Any], None] | None = getattr(api.model, "prefetch", None)

    def answer(self, client: ClientInfo, body: bytes) -> bytes:
        """The whole ``/v1/predict`` path off the event loop: decode, :meth:`answer_rows`, encode."""
        arr, encoding = parse_request(body, max_batch=self.max_batch)
        y, entry, updated = self.answer_rows(client, arr, encode=lambda y: encode_tensor(y, encoding))
        payload = {"outputs": y, "queries": updated.queries, "remaining": updated.remaining, "ledger_id": entry.id}
        return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")

    def answer_rows(self, client: ClientInfo, x: Any, *, encode: Callable[[Any], Any] | None = None,
                    ) -> tuple[Any, LedgerEntry, ClientInfo]:
        """Answer a decoded batch ``x`` (an array or tensor ``(N, *input_shape)``), whatever protocol carried it:
        validate it (:func:`check_batch`), record its rows in the ledger (budget and rate limit checked there),
        query the API, and return ``(answer, ledger entry, updated client)``; ``encode`` (optional) turns the
        ``(N, K)`` answer into what the protocol sends, inside the same release-on-failure guard: a request that
        fails anywhere before its answer is encoded is taken back out of the ledger."""
        x = check_batch(x, input_shape=self.api.input_shape, max_batch=self.max_batch,
                        input_range=self.input_range, tolerance=self.tolerance)
        blob = x.numpy().astype("<f4", copy=False).tobytes() if self.record_inputs else None
        entry, updated = self.store.reserve(client.id, int(x.shape[0]), inputs=blob)
        try:
            if self.prefetch is not None:  # a gateway (serve/upstream.py) asks its upstream outside the lock
                self.prefetch(x)
            if self.journal is None:
                with self.lock:  # defenses may keep per-client state; no inference_mode: MAD needs autograd
                    y, flagged = self._query(x, client)
                    marks = self._new_watermarks(client)
                self.store.record_flags(entry.id, flagged)
            else:
                y = self._query_stateful(x, client, entry.id)
                with self.lock:
                    marks = self._new_watermarks(client)
            if marks is not None:
                self.store.record_watermarks(entry.id, marks)
            out = encode(y) if encode is not None else y
        except BaseException:
            try:
                self.store.release(entry.id)
            except Exception:  # noqa: BLE001 - keep the original error; an over-count is the safe side
                log.exception("could not release ledger entry %s after a failed request", entry.id)
            raise
        return out, entry, updated

    def _new_watermarks(self, client: ClientInfo) -> bytes | None:
        """What a watermarking defense (DAWN) recorded for this request, as the store keeps it (call under the
        lock, right after the query)."""
        new = None if self.api.defense is None else self.api.defense.take_new_records(client.name)
        return None if new is None else json.dumps(new, separators=(",", ":")).encode("utf-8")

    def _query(self, x: Any, client: ClientInfo) -> tuple[Any, int]:
        """The API's answer and how many of its rows the detector flagged (call under the lock)."""
        before = self.api.flags(client.name)
        y = self.api.query(x, client=client.name)
        return y, self.api.flags(client.name) - before

    def _query_stateful(self, x: Any, client: ClientInfo, ledger_id: int) -> Any:
        """Load the client's detector state from the store, answer, and save the change with the request's flags
        (a refused batch saves the change too: the detector has seen it). When another worker saved this
        client's state in between, reload and score the request again."""
        assert self.journal is not None
        for _ in range(_STATE_RETRIES):
            with self.lock:
                try:
                    self.journal.load(client.id, client.name)
                    try:
                        y, flagged = self._query(x, client)
                    except QueryRefusedError:
                        self.journal.save(client.id, client.name, ledger_id=None, flagged=0)
                        raise
                    self.journal.save(client.id, client.name, ledger_id=ledger_id, flagged=flagged)
                    return y
                except DetectorStateConflict:
                    continue  # journal.save forgot the in-memory state; load rebuilds it
                except QueryRefusedError:
                    raise  # answered (as a refusal), and its state change saved
                except BaseException:
                    self.journal.forget(client.id)  # the state may be half updated: reload on the next request
                    raise
        raise RuntimeError(f"detector state of client {client.name!r} kept changing under this worker "
                           f"({_STATE_RETRIES} tries)")


def _bearer(request: "Request") -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'", code="missing_key")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError("malformed Authorization header: expected 'Bearer <key>'", code="missing_key")
    return key.strip()


async def admit(service: _Service, request: "Request") -> ClientInfo:
    """The caller's key, authenticated; an exhausted budget or rate limit refused before the body is read."""
    from starlette.concurrency import run_in_threadpool

    client = await run_in_threadpool(service.store.authenticate, _bearer(request))
    now = time.time()
    if client.budget is not None and client.queries >= client.budget:
        raise BudgetExhaustedError(f"query budget exhausted: all {client.budget} queries of this key are used")
    if client.rate_limit is not None and client.available_tokens(now) <= 0:
        wait = client.retry_after(now)
        raise RateLimitedError(f"rate limit of {client.rate_limit:g} queries/s exceeded; retry in {wait:.2f} s",
                               retry_after=wait)
    return client


async def read_body(request: "Request", *, limit: int) -> bytes:
    """The request body, refused (413) as soon as it exceeds ``limit`` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "bad_request", f"invalid Content-Length {declared!r}") from None
        if size > limit:
            raise APIError(413, "body_too_large", f"request body of {size} bytes exceeds the maximum of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise APIError(413, "body_too_large", f"request body exceeds the maximum of {limit} bytes")
        chunks.append(chunk)
    if total == 0:
        raise APIError(400, "malformed_json", 'empty request body; send {"inputs": [...]}')
    return b"".join(chunks)


def _usage(client: ClientInfo, now: float, *, flagged: int) -> dict[str, Any]:
    return {
        "client": client.name,
        "key_prefix": client.key_prefix,
        "queries": client.queries,
        "requests": client.requests,
        "budget": client.budget,
        "remaining": client.remaining,
        "rate_limit": client.rate_limit,
        "flags": {
            "budget_exhausted": client.budget is not None and client.queries >= client.budget,
            "rate_limited": client.rate_limit is not None and client.available_tokens(now) <= 0,
        },
        "flagged": flagged,
    }


def create_app(
    api: PredictionAPI,
    *,
    store: Store | str | None = None,
    max_batch: int = 1024,
    max_body_bytes: int | None = None,
    input_range: tuple[float, float] = (0.0, 1.0),
    range_tolerance: float = 1e-6,
    record_inputs: bool = False,
    info: dict[str, Any] | None = None,
) -> "FastAPI":
    """The FastAPI application serving ``api`` behind the keys and ledger of ``store``.

    ``store`` is a :class:`Store` (owned by the caller) or a URL for :func:`open_store` (opened now, closed
    when the app shuts down). Build ``api`` with ``budget=None``: the ledger is the source of truth for
    budgets, shared by every worker process using the same store.
    """
    fastapi = require("fastapi")
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if api.budget is not None:
        raise ValueError("serve a PredictionAPI built with budget=None: budgets are per key, in the store")
    owns_store = not isinstance(store, Store)
    the_store = store if isinstance(store, Store) else open_store(store)
    limit = max_body_bytes or default_max_body_bytes(max_batch=max_batch, input_shape=api.input_shape)
    if limit < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {limit}")
    service = _Service(api, the_store, max_batch=max_batch, max_body_bytes=limit,
                       input_range=(float(input_range[0]), float(input_range[1])), tolerance=float(range_tolerance),
                       record_inputs=record_inputs, info=dict(info or {}))

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        if owns_store:
            the_store.close()

    from modelsteal import __version__

    app = fastapi.FastAPI(
        title="modelsteal prediction API",
        version=__version__,
        description="A (possibly defended) model behind API keys, query budgets, rate limits and a durable "
                    "query ledger. A query is one input row.",
        lifespan=lifespan,
    )
    app.state.service = service

    def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"detail": message, "code": code}, status_code=status, headers=headers)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return error(exc.status, exc.code, exc.message, exc.headers)

    async def on_auth_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthenticationError)
        status = 403 if exc.code == "revoked_key" else 401
        return error(status, exc.code, str(exc), {"WWW-Authenticate": "Bearer"})

    async def on_budget(request: Request, exc: Exception) -> Response:
        return error(403, "budget_exhausted", str(exc))

    async def on_refused(request: Request, exc: Exception) -> Response:
        return error(403, "query_refused", str(exc))

    async def on_rate(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RateLimitedError)
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        resp = error(429, "rate_limited", str(exc), headers)
        return resp

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, "internal_error", f"internal error: {type(exc).__name__}: {exc}")

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(AuthenticationError, on_auth_error)
    app.add_exception_handler(BudgetExhaustedError, on_budget)
    app.add_exception_handler(RateLimitedError, on_rate)
    app.add_exception_handler(QueryRefusedError, on_refused)
    app.add_exception_handler(Exception, on_unexpected)

    @app.post(
        "/v1/predict",
        summary="Answer a batch of queries",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _PREDICT_SCHEMA}}}},
        responses=_ERROR_RESPONSES,
    )
    async def predict(request: Request) -> Response:
        """Answer ``{"inputs": X}`` with ``{"outputs": Y}``; every row is counted in the ledger first."""
        client = await admit(service, request)
        try:
            body = await read_body(request, limit=service.max_body_bytes)
        except ClientDisconnect:
            return Response(status_code=400)
        payload = await run_in_threadpool(service.answer, client, body)
        return Response(payload, media_type="application/json")

    @app.get("/v1/usage", summary="The caller's own usage", responses={401: _ERROR_RESPONSES[401]})
    async def usage(request: Request) -> dict[str, Any]:
        """The caller's query count, budget, rate limit, flags and flagged queries (only ever its own)."""
        client = await run_in_threadpool(service.store.authenticate, _bearer(request))
        flagged = await run_in_threadpool(service.store.flags, client.id)
        return _usage(client, time.time(), flagged=flagged)

    @app.get("/v1/info", summary="What the API serves")
    async def get_info() -> dict[str, Any]:
        """Input shape, number of classes, defense, output format and request limits."""
        return {
            "input_shape": list(service.api.input_shape),
            "num_classes": service.api.num_classes,
            "output": service.api.output.describe(),
            "input_range": list(service.input_range),
            "max_batch": service.max_batch,
            "max_body_bytes": service.max_body_bytes,
            "encodings": list(ENCODINGS),
            "version": __version__,
            "defense": {"name": "none"} if service.api.defense is None else {
                "name": service.api.defense.name, "description": repr(service.api.defense)},
            "detector": {"name": "none"} if service.api.detector is None else {
                "name": service.api.detector.name, "description": repr(service.api.detector),
                "response": service.api.response.name or type(service.api.response).__name__},
            **service.info,
        }

    from modelsteal.serve.v2 import v2_router

    app.include_router(v2_router(service))  # the Open Inference Protocol, same keys, ledger and API

    @app.get("/healthz", summary="Liveness and store health")
    async def healthz() -> Response:
        """``{"status": "ok"}`` when the ledger answers; 503 otherwise."""
        try:
            await run_in_threadpool(service.store.ping)
        except Exception as e:  # noqa: BLE001 - any failure of the store means "not healthy"
            return error(503, "store_unavailable", f"ledger store unavailable: {type(e).__name__}: {e}")
        return JSONResponse({"status": "ok"})

    return app


def create_app_from_config(config: "ServeConfig") -> "FastAPI":
    """Build the API and the app from a :class:`ServeConfig` (what each uvicorn worker does)."""
    api, info = build_api(config)
    return create_app(
        api, store=config.store, max_batch=config.max_batch, max_body_bytes=config.max_body_bytes,
        input_range=config.input_range, range_tolerance=config.range_tolerance,
        record_inputs=config.record_inputs, info=info,
    )


def app_from_environment() -> "FastAPI":
    """Uvicorn factory for ``--workers N``: reads the :class:`ServeConfig` JSON from ``MODELSTEAL_SERVE_CONFIG``."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"{CONFIG_ENV} is not set; start the server with `modelsteal serve`")
    return create_app_from_config(ServeConfig.from_json(text))
