"""The FastAPI application behind ``modelsteal serve``.

Endpoints (all JSON):

- ``POST /v1/predict`` with ``Authorization: Bearer KEY`` and body ``{"inputs": X}``, where ``X`` is a
  batch ``(N, *input_shape)`` of raw ``[0, 1]`` values, either nested arrays or the compact form
  ``{"dtype": "float32", "shape": [N, ...], "base64": "<little-endian bytes>"}``. The answer is
  ``{"outputs": Y, "queries": used, "remaining": left, "ledger_id": id}`` with ``Y`` the ``(N, K)`` defended
  answers in the same encoding as the inputs (``"encoding": "json" | "base64"`` in the request overrides).
- the Open Inference Protocol (``/v2/health/*``, ``/v2/models/{name}[/ready|/infer]``), same keys, ledger and
  API: :mod:`modelsteal.serve.v2`.
- ``GET /v1/usage``: the caller's own ``queries``, ``budget``, ``remaining``, ``rate_limit``, ``flags`` (the
  key's state: budget exhausted, rate limited) and ``flagged`` (how many of its queries the API's detector
  flagged, from the store, so it survives a restart).
- ``GET /v1/info``: ``input_shape``, ``num_classes``, defense, output format and request limits.
- ``GET /healthz``; OpenAPI docs at ``/docs`` and ``/openapi.json``.

Every request is authenticated against the :class:`~modelsteal.serve.store.Store`; a batch is validated
(shape, dtype, finiteness, value range, size), then queued for the dynamic batcher
(:mod:`modelsteal.serve.batcher`), which records the requests of a batch in the ledger in one transaction —
budget, rate limit and ``Idempotency-Key`` checked per request — answers them with one pass of the
:class:`~modelsteal.PredictionAPI` (:meth:`~modelsteal.PredictionAPI.query_many`, serialised by a lock, off the
event loop) and makes their flags, detector-state entries and stored answers durable in one more, before any
is answered. A retry carrying the ``Idempotency-Key`` of an answered request gets the stored answer. A query
is one input row. When the API has a detector, the number of the request's rows it flagged is written to the
store before the answer is sent; a request its ``refuse`` response refuses is a 403 ``query_refused``, is taken
back out of the ledger and kept as a refusal (its flagged rows still count in ``/v1/usage``). A *stateful*
detector (PRADA) keeps each client's state in the store (:mod:`modelsteal.serve.detector_state`): loaded before
the batch, its change saved in the batch's transaction with the request's flag count, before it is answered.
The body format lives in :mod:`modelsteal.serve.codec`, the server's settings in
:mod:`modelsteal.serve.config`; both are re-exported here.

Example::

    api = PredictionAPI(model, defense=make_defense("mad", epsilon=0.5), output="probs")
    app = create_app(api, store="ledger.db")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at runtime, and
# the fastapi/starlette names they use are imported lazily inside create_app.
import gc
import logging
import math
import os
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from modelsteal.blackbox import PredictionAPI, QueryRefusedError
from modelsteal.serve import require
from modelsteal.serve.codec import ENCODINGS, APIError, decode_request, encode_tensor
from modelsteal.serve.config import CONFIG_ENV, ServeConfig, build_api, default_max_body_bytes
from modelsteal.serve.openapi import (
    AUTH_RESPONSES,
    ERROR_RESPONSES,
    PREDICT_ANSWER,
    USAGE,
    error_response,
    ok_response,
    predict_schema,
)
from modelsteal.serve.service import Service
from modelsteal.serve.store import (
    AuthenticationError,
    BudgetExhaustedError,
    ClientInfo,
    IdempotencyConflict,
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


# -- the application ----------------------------------------------------------------------------------------
def _idempotency_key(request: "Request") -> str | None:
    """The ``Idempotency-Key`` header (1 to 255 visible ASCII characters), ``None`` when absent."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all(33 <= ord(ch) <= 126 for ch in key):
        raise APIError(400, "bad_idempotency_key", "the Idempotency-Key header must be 1 to 255 visible ASCII "
                                                   "characters (e.g. a UUID)")
    return key


def _bearer(request: "Request") -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'", code="missing_key")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationError("malformed Authorization header: expected 'Bearer <key>'", code="missing_key")
    return key.strip()


async def admit(service: "Service", request: "Request", *, idempotency_key: str | None = None) -> ClientInfo:
    """The caller's key, authenticated; an exhausted budget or rate limit refused before the body is read (a retry
    carrying an ``Idempotency-Key`` is let through to the ledger, which replays an answered one)."""
    client = await service.authenticate(_bearer(request))
    now = time.time()
    if idempotency_key is None and client.budget is not None and client.queries >= client.budget:
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


def _usage(client: ClientInfo, now: float, *, flagged: int, refused: tuple[int, int] = (0, 0)) -> dict[str, Any]:
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
        "refused": {"requests": refused[0], "queries": refused[1]},
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
    max_batch_rows: int = 256,
    max_batch_delay_ms: float = 2.0,
    batch_workers: int = 1,
    idempotency_window_s: float = 86_400.0,
    snapshot_every: int | None = 1000,
    ledger_sync: str = "full",
) -> "FastAPI":
    """The FastAPI application serving ``api`` behind the keys and ledger of ``store``.

    ``store`` is a :class:`Store` (owned by the caller) or a URL for :func:`open_store` (opened now with
    ``ledger_sync`` as its ``sync``, closed when the app shuts down).
    Build ``api`` with ``budget=None``: the ledger is the source of truth for
    budgets, shared by every worker process using the same store.

    Concurrent requests are answered in batches (:mod:`modelsteal.serve.batcher`) of at most
    ``max_batch_rows`` rows, formed when full or when the oldest has waited ``max_batch_delay_ms``
    (0: no batching), run by ``batch_workers`` threads in turn (arrival order kept). An
    ``Idempotency-Key`` header makes a retry within ``idempotency_window_s`` seconds
    replay the stored answer. A stateful detector's journal is compacted into a snapshot every
    ``snapshot_every`` entries per client (``None``: never).
    """
    fastapi = require("fastapi")
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import ClientDisconnect

    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if max_batch_rows < 1:
        raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
    if not max_batch_delay_ms >= 0:
        raise ValueError(f"max_batch_delay_ms must be >= 0, got {max_batch_delay_ms}")
    if not idempotency_window_s > 0:
        raise ValueError(f"idempotency_window_s must be > 0, got {idempotency_window_s}")
    if api.budget is not None:
        raise ValueError("serve a PredictionAPI built with budget=None: budgets are per key, in the store")
    owns_store = not isinstance(store, Store)
    the_store = store if isinstance(store, Store) else open_store(store, sync=ledger_sync)
    limit = max_body_bytes or default_max_body_bytes(max_batch=max_batch, input_shape=api.input_shape)
    if limit < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {limit}")
    service = Service(api, the_store, max_batch=max_batch, max_body_bytes=limit,
                       input_range=(float(input_range[0]), float(input_range[1])), tolerance=float(range_tolerance),
                       record_inputs=record_inputs, info=dict(info or {}), max_batch_rows=max_batch_rows,
                       max_batch_delay_ms=max_batch_delay_ms, batch_workers=batch_workers,
                       idempotency_window_s=idempotency_window_s,
                       snapshot_every=snapshot_every)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        import anyio.to_thread

        # a request waiting for its batch holds a worker thread: let a batch gather more than the default 40
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, 256)
        yield
        service.close()
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

    async def on_idempotency(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, IdempotencyConflict)
        return error(409 if exc.code == "idempotency_in_progress" else 422, exc.code, str(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                     dict(exc.headers or {}))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, "internal_error", f"internal error: {type(exc).__name__}: {exc}")

    handlers: dict[type[BaseException], Any] = {
        APIError: on_api_error, AuthenticationError: on_auth_error, BudgetExhaustedError: on_budget,
        RateLimitedError: on_rate, QueryRefusedError: on_refused, IdempotencyConflict: on_idempotency,
        StarletteHTTPException: on_http, Exception: on_unexpected}
    for kind, handler in handlers.items():
        app.add_exception_handler(kind, handler)

    @app.post(
        "/v1/predict",
        summary="Answer a batch of queries",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": predict_schema(
            tuple(api.input_shape), max_batch, service.input_range)}}},
                       "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                       "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                                       "description": "a client-chosen key per request (e.g. a UUID): a retry "
                                                      "with the same key and inputs replays the stored answer "
                                                      "without counting it again"}]},
        responses={200: ok_response(PREDICT_ANSWER, "The answers"), **ERROR_RESPONSES},
    )
    async def predict(request: Request) -> Response:
        """Answer ``{"inputs": X}`` with ``{"outputs": Y}``; every row is counted in the ledger first."""
        with service.batcher.arriving() as arrival:  # the batch being formed waits for this request
            return await _predict(request, arrival)

    async def _predict(request: Request, arrival: Any) -> Response:
        idempotency_key = _idempotency_key(request)
        client = await admit(service, request, idempotency_key=idempotency_key)
        try:
            body = await read_body(request, limit=service.max_body_bytes)
        except ClientDisconnect:
            return Response(status_code=400)
        payload = await service.answer_async(client, body, idempotency_key=idempotency_key, arrival=arrival)
        return Response(payload, media_type="application/json")

    #: (method, exact path) -> the route's own handler, answered by :class:`HotPath`
    hot: dict[tuple[str, str], Any] = {}

    class HotPath:
        """The prediction routes (``POST /v1/predict``, ``POST /v2/models/NAME/infer``) straight to their
        handlers, past the router and FastAPI's request handling: route matching, dependency solving and their
        wrappers were about a quarter of the event loop's time per request under load, and these routes use
        none of it. The routes stay registered for the OpenAPI document; their errors are answered by the same
        handlers (``handlers``). Everything else goes to the app."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            route = hot.get((scope.get("method"), scope.get("path"))) if scope["type"] == "http" else None
            if route is None:
                await self.inner(scope, receive, send)
                return
            request = Request(scope, receive)
            try:
                response = await route(request)
            except Exception as exc:  # noqa: BLE001 - answered as the app answers it (handlers above)
                kind = next(k for k in type(exc).__mro__ if k in handlers)
                response = await handlers[kind](request, exc)
            await response(scope, receive, send)

    app.add_middleware(HotPath)

    @app.get("/v1/usage", summary="The caller's own usage",
             responses={200: ok_response(USAGE, "This key's usage"), **AUTH_RESPONSES})
    async def usage(request: Request) -> dict[str, Any]:
        """The caller's query count, budget, rate limit, flags, flagged queries (refused ones included) and
        refused requests (only ever its own)."""
        client = await run_in_threadpool(service.store.authenticate, _bearer(request))
        flagged = await run_in_threadpool(service.store.flags, client.id)
        refused = await run_in_threadpool(service.store.refusals, client.id)
        return _usage(client, time.time(), flagged=flagged, refused=refused)

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
            "batching": {"max_batch_rows": service.batcher.max_rows,
                         "max_batch_delay_ms": 1000 * service.batcher.max_delay_s,
                         "workers": service.batcher.workers,
                         "batches": service.runner.batches, "requests": service.runner.requests},
            "version": __version__,
            "defense": {"name": "none"} if service.api.defense is None else {
                "name": service.api.defense.name, "description": repr(service.api.defense)},
            "detector": {"name": "none"} if service.api.detector is None else {
                "name": service.api.detector.name, "description": repr(service.api.detector),
                "response": service.api.response.name or type(service.api.response).__name__},
            **service.info,
        }

    from modelsteal.serve.v2 import v2_router

    v2 = v2_router(service)
    app.include_router(v2)  # the Open Inference Protocol, same keys, ledger and API
    hot[("POST", "/v1/predict")] = predict
    hot.update(v2.hot_routes)

    @app.get("/healthz", summary="Liveness and store health",
             responses={200: ok_response({"type": "object", "required": ["status"],
                                  "properties": {"status": {"type": "string"}}}, "Healthy"),
                        503: error_response("The ledger store does not answer")})
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
        api, store=config.store, ledger_sync=config.ledger_sync, max_batch=config.max_batch,
        max_body_bytes=config.max_body_bytes,
        input_range=config.input_range, range_tolerance=config.range_tolerance,
        record_inputs=config.record_inputs, info=info, max_batch_rows=config.max_batch_rows,
        max_batch_delay_ms=config.max_batch_delay_ms, batch_workers=config.batch_workers,
        idempotency_window_s=config.idempotency_window_s,
        snapshot_every=config.snapshot_every,
    )


def app_from_environment() -> "FastAPI":
    """Uvicorn factory for ``--workers N``: reads the :class:`ServeConfig` JSON from ``MODELSTEAL_SERVE_CONFIG``."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"{CONFIG_ENV} is not set; start the server with `modelsteal serve`")
    app = create_app_from_config(ServeConfig.from_json(text))
    freeze_startup_objects()
    return app


def freeze_startup_objects() -> None:
    """Move everything alive in a server process once it is set up (torch, the model, the app) out of the
    garbage collector's view (:func:`gc.freeze`): a full collection would otherwise walk all of it, a pause of
    about 100 ms under load that was the server's p99 (``bench/serve_throughput.py``: p99 126 -> 39 ms at 32
    clients). For a process that serves until it exits, not for one that builds many apps (tests)."""
    gc.collect()
    gc.freeze()
