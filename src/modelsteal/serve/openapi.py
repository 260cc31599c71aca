"""The OpenAPI pieces of ``modelsteal serve``'s ``/v1`` routes: the request body's schema (exact, so that a fuzzer's
schema-valid body is one the server can answer), the error body, and the documented answers of each route."""

from __future__ import annotations

from typing import Any

from modelsteal.serve.codec import ENCODINGS


def predict_schema(input_shape: tuple[int, ...], max_batch: int, input_range: tuple[float, float]) -> dict[str, Any]:
    """The ``/v1/predict`` body as JSON Schema, exact for nested arrays (``1..max_batch`` rows of the input
    shape, numbers in the input range); the compact object's byte length must match its shape, which JSON
    Schema cannot say (the server answers 422 when it does not)."""
    row: dict[str, Any] = {"type": "number", "minimum": input_range[0], "maximum": input_range[1]}
    for size in reversed(input_shape):
        row = {"type": "array", "minItems": int(size), "maxItems": int(size), "items": row}
    return {
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "inputs": {
                "description": "A batch (N, *input_shape) of raw values in the model's range: nested arrays of "
                               "numbers, or the compact {dtype: float32, shape, base64} object.",
                "oneOf": [
                    {"type": "array", "minItems": 1, "maxItems": int(max_batch), "items": row},
                    {
                        "type": "object",
                        "required": ["shape", "base64"],
                        "additionalProperties": False,
                        "properties": {
                            "dtype": {"type": "string", "enum": ["float32"]},
                            "shape": {"type": "array", "minItems": len(input_shape) + 1,
                                      "maxItems": len(input_shape) + 1, "items": {"type": "integer", "minimum": 1}},
                            "base64": {"type": "string", "description": "little-endian float32 bytes, base64"},
                        },
                    },
                ],
            },
            "encoding": {"type": "string", "enum": list(ENCODINGS),
                         "description": "encoding of the outputs; defaults to that of the inputs"},
        },
    }


ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail", "code"],
    "properties": {"detail": {"type": "string", "description": "what is wrong, in one sentence"},
                   "code": {"type": "string", "description": "a stable machine-readable code, e.g. budget_exhausted"}},
}


def error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: error_response("Malformed JSON or a bad Idempotency-Key header"),
    401: error_response("Missing or invalid API key"),
    403: error_response("Revoked key, query budget exhausted, or batch refused by the detector (query_refused)"),
    409: error_response("A request with the same Idempotency-Key is still being answered"),
    413: error_response("Body or batch too large"),
    422: error_response("Inputs of the wrong shape, dtype or range, or NaN/Inf; or an Idempotency-Key reused for other "
                "inputs"),
    429: error_response("Rate limit exceeded (see Retry-After)"),
    500: error_response("Internal error (a bug: the request was not counted)"),
}
AUTH_RESPONSES = {k: ERROR_RESPONSES[k] for k in (401, 403)}

PREDICT_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["outputs", "queries", "remaining", "ledger_id"],
    "properties": {
        "outputs": {"description": "the (N, K) answers, in the request's encoding",
                    "oneOf": [{"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                              {"type": "object", "required": ["dtype", "shape", "base64"],
                               "properties": {"dtype": {"type": "string"},
                                              "shape": {"type": "array", "items": {"type": "integer"}},
                                              "base64": {"type": "string"}}}]},
        "queries": {"type": "integer", "description": "this key's queries, this request included"},
        "remaining": {"type": ["integer", "null"], "description": "queries left in the budget (null: no budget)"},
        "ledger_id": {"type": "integer", "description": "the ledger entry that counts this request"},
    },
}
USAGE: dict[str, Any] = {
    "type": "object",
    "required": ["client", "queries", "requests", "budget", "remaining", "flags", "flagged", "refused"],
    "properties": {
        "client": {"type": "string"}, "key_prefix": {"type": "string"},
        "queries": {"type": "integer"}, "requests": {"type": "integer"},
        "budget": {"type": ["integer", "null"]}, "remaining": {"type": ["integer", "null"]},
        "rate_limit": {"type": ["number", "null"]},
        "flags": {"type": "object", "properties": {"budget_exhausted": {"type": "boolean"},
                                                   "rate_limited": {"type": "boolean"}}},
        "flagged": {"type": "integer", "description": "queries the detector flagged, refused ones included"},
        "refused": {"type": "object", "description": "requests and queries the detector's refuse response refused",
                    "properties": {"requests": {"type": "integer"}, "queries": {"type": "integer"}}},
    },
}


def ok_response(schema: dict[str, Any], description: str = "Successful Response") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}
