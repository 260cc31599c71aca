"""The Open Inference Protocol (KServe "v2" REST) routes of ``modelsteal serve``.

Beside ``/v1`` the server answers, for its one model (named by ``info["model_name"]``, default ``model``):

- ``GET /v2/health/live`` → ``{"live": true}``; ``GET /v2/health/ready`` → ``{"ready": true}`` when the ledger
  store answers (503 otherwise); ``GET /v2`` → server metadata (``name``, ``version``, ``extensions``);
- ``GET /v2/models/{name}`` → model metadata: ``inputs`` ``[{"name": "input", "datatype": "FP32",
  "shape": [-1, *input_shape]}]`` and ``outputs`` ``[{"name": "probabilities", "datatype": "FP32",
  "shape": [-1, K]}]``; ``GET /v2/models/{name}/ready`` → ``{"name", "ready": true}``;
- ``POST /v2/models/{name}/infer`` with ``Authorization: Bearer KEY``: one FP32 input tensor of shape
  ``[N, *input_shape]`` (``data`` flat or nested, or binary with Triton's extension) → the defended
  probabilities as the ``probabilities`` output (FP32 ``[N, K]``), with ``parameters`` ``{"queries",
  "remaining", "ledger_id"}``.

An inference goes through exactly the path of ``/v1/predict``
(:meth:`~modelsteal.serve.service.Service.answer_rows`: validation, the ledger with budget and rate limit,
detector, defense, output format). Every error is the protocol's
``{"error": message}`` (plus our ``"code"``): 400 for a malformed request (wrong input name, datatype,
shape against data, NaN/Inf, values out of range), 401/403 for keys, budgets and refused batches, 404 for an
unknown model or path, 413 for a batch or body too large, 429 with ``Retry-After``, 502/504 when a
gateway's upstream failed.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations at runtime.
import logging
import math
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from modelsteal.blackbox import QueryRefusedError
from modelsteal.serve.codec import APIError
from modelsteal.serve.codec_v2 import HEADER_LENGTH, encode_infer_response, parse_infer_request, tensor_to_array
from modelsteal.serve.store import AuthenticationError, BudgetExhaustedError, RateLimitedError

if TYPE_CHECKING:
    from fastapi import APIRouter

log = logging.getLogger("modelsteal.serve")

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def as_v2_error(exc: BaseException) -> Any:
    """The protocol's ``{"error": ...}`` answer for an exception of the request path (an unexpected one is
    logged with its traceback and answered 500)."""
    if isinstance(exc, APIError):
        status = 400 if exc.status == 422 else exc.status  # the protocol's status for a bad request is 400
        return _error(status, exc.message, exc.code, exc.headers)
    if isinstance(exc, AuthenticationError):
        return _error(403 if exc.code == "revoked_key" else 401, str(exc), exc.code, {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, BudgetExhaustedError):
        return _error(403, str(exc), "budget_exhausted")
    if isinstance(exc, QueryRefusedError):
        return _error(403, str(exc), "query_refused")
    if isinstance(exc, RateLimitedError):
        return _error(429, str(exc), "rate_limited", {"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
    log.error("unexpected error answering a v2 request", exc_info=exc)
    return _error(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error")


def model_metadata(service: Any, name: str) -> dict[str, Any]:
    """The model metadata object of the protocol for the served API."""
    api = service.api
    return {
        "name": name,
        "versions": [],
        "platform": "modelsteal",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *map(int, api.input_shape)]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, int(api.num_classes)]}],
        "parameters": {"output": api.output.describe(), "input_range": list(service.input_range),
                       "max_batch": service.max_batch, "dataset": service.info.get("dataset"),
                       "arch": service.info.get("arch"),
                       "defense": "none" if api.defense is None else repr(api.defense)},
    }


def infer(service: Any, client: Any, body: bytes, *, header_length: str | None, name: str) -> tuple[bytes, int | None]:
    """Answer one inference request body for ``client`` in a worker thread: parse, check the input's name,
    datatype and shape, :meth:`answer_rows`, encode. Returns the body and the binary header length."""
    req, x, binary = _infer_input(service, body, header_length=header_length, name=name)
    y, entry, updated = service.answer_rows(client, x, encode=_finite_array)
    return _infer_output(req, name, y, entry, updated, binary=binary)


async def infer_async(service: Any, client: Any, body: bytes, *, header_length: str | None,
                      name: str) -> tuple[bytes, int | None]:
    """:func:`infer` on the event loop for a body of at most ``INLINE_BODY_BYTES`` (in a worker thread above)."""
    from modelsteal.serve.service import INLINE_BODY_BYTES

    if len(body) > INLINE_BODY_BYTES:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(partial(infer, service, client, body, header_length=header_length, name=name))
    req, x, binary = _infer_input(service, body, header_length=header_length, name=name)
    y, entry, updated = await service.answer_rows_async(client, x, encode=_finite_array)
    return _infer_output(req, name, y, entry, updated, binary=binary)


def _infer_input(service: Any, body: bytes, *, header_length: str | None, name: str) -> tuple[Any, Any, bool]:
    """The parsed request, its input rows and whether the output is asked in binary."""
    req = parse_infer_request(body, header_length=header_length)
    if len(req.inputs) != 1:
        raise APIError(400, "bad_request", f"model {name!r} takes one input {INPUT_NAME!r}; got {len(req.inputs)}")
    tensor = req.inputs[0]
    if tensor.name != INPUT_NAME:
        raise APIError(400, "bad_input_name", f"model {name!r} has no input {tensor.name!r}; its input is "
                       f"{INPUT_NAME!r}")
    unknown = sorted(set(req.outputs) - {OUTPUT_NAME})
    if unknown:
        raise APIError(400, "bad_output_name", f"model {name!r} has no output {unknown[0]!r}; its output is "
                       f"{OUTPUT_NAME!r}")
    x = tensor_to_array(tensor, max_batch=service.max_batch)
    return req, x, req.outputs.get(OUTPUT_NAME, req.binary_output)


def _infer_output(req: Any, name: str, y: Any, entry: Any, updated: Any, *, binary: bool) -> tuple[bytes, int | None]:
    ledger = {"queries": updated.queries, "remaining": updated.remaining, "ledger_id": entry.id}
    return encode_infer_response(model_name=name, id=req.id, outputs=[(OUTPUT_NAME, y, binary)], parameters=ledger)


def _finite_array(y: Any) -> np.ndarray:
    """The answer as float32 NumPy, checked finite (inside the ledger's release-on-failure guard)."""
    arr = np.ascontiguousarray(y.detach().to("cpu").numpy(), dtype="<f4")
    if not np.isfinite(arr).all():
        raise RuntimeError("the API answered NaN or Infinity")
    return arr


_V2_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "string"}, "code": {"type": "string"}},
}


def _v2_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _V2_ERROR_SCHEMA}}}


#: what the OpenAPI document says each /v2 route may answer besides 200 (the protocol's ``{"error": ...}`` form)
_UNKNOWN_MODEL = {404: _v2_error("Unknown model name")}
_INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _v2_error("Malformed request: JSON, datatype, shape, input name, NaN/Inf or range"),
    401: _v2_error("Missing or invalid API key"),
    403: _v2_error("Revoked key, query budget exhausted, or request refused by the detector"),
    404: _v2_error("Unknown model name"),
    413: _v2_error("Body or batch too large"),
    429: _v2_error("Rate limit exceeded (see Retry-After)"),
    502: _v2_error("The upstream model server failed (gateway)"),
    504: _v2_error("The upstream model server timed out (gateway)"),
}


#: the JSON form of an inference request (the binary-tensor extension's body is described by its header)
_INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype"],
            "properties": {"name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
                           "datatype": {"type": "string"}, "data": {"type": "array"},
                           "parameters": {"type": "object"}}}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                               "properties": {"name": {"type": "string"}}}},
        "parameters": {"type": "object"},
    },
}


def v2_router(service: Any) -> "APIRouter":
    """The ``/v2`` routes serving ``service`` (the app's :class:`~modelsteal.serve.service.Service`)."""
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    from modelsteal import __version__
    from modelsteal.serve.app import admit, read_body

    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"])
    model_name = str(service.info.get("model_name") or "model")

    def unknown_model(name: str) -> Any:
        return _error(404, f"unknown model {name!r}; this server serves {model_name!r}", "unknown_model")

    @router.get("", summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "modelsteal", "version": __version__, "extensions": ["binary_tensor_data"]}

    @router.get("/health/live", summary="Server liveness")
    async def live() -> dict[str, Any]:
        return {"live": True}

    @router.get("/health/ready", summary="Server readiness (the ledger store answers)",
                responses={503: _v2_error("The ledger store does not answer")})
    async def ready() -> Any:
        try:
            await run_in_threadpool(service.store.ping)
        except Exception as e:  # noqa: BLE001 - any failure of the store means "not ready"
            return _error(503, f"ledger store unavailable: {type(e).__name__}: {e}", "store_unavailable")
        return {"ready": True}

    @router.get("/models/{name}", summary="Model metadata", responses=_UNKNOWN_MODEL)
    async def metadata(name: str) -> Any:
        if name != model_name:
            return unknown_model(name)
        return model_metadata(service, name)

    @router.get("/models/{name}/ready", summary="Model readiness", responses=_UNKNOWN_MODEL)
    async def model_ready(name: str) -> Any:
        if name != model_name:
            return unknown_model(name)
        return {"name": name, "ready": True}

    @router.post("/models/{name}/infer", summary="Answer an inference request (counted in the ledger)",
                 responses=_INFER_ERRORS, openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": _INFER_REQUEST_SCHEMA}}}})
    async def infer_route(name: str, request: Request) -> Any:
        if name != model_name:
            return unknown_model(name)
        try:
            client = await admit(service, request)
            try:
                body = await read_body(request, limit=service.max_body_bytes)
            except ClientDisconnect:
                return Response(status_code=400)
            payload, length = await infer_async(service, client, body,
                                                header_length=request.headers.get(HEADER_LENGTH), name=name)
        except Exception as e:  # noqa: BLE001 - every failure is answered in the protocol's error form
            return as_v2_error(e)
        if length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(length)})

    async def infer_served(request: Request) -> Any:
        return await infer_route(model_name, request)

    #: the served model's infer route, for the app's hot path (app.py ``HotPath``)
    router.hot_routes = {("POST", f"/v2/models/{model_name}/infer"): infer_served}  # type: ignore[attr-defined]

    @router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
    async def not_found(path: str) -> Any:
        return JSONResponse({"error": f"no such endpoint: /v2/{path}", "code": "not_found"}, status_code=404)

    return router
