"""The wire format of ``POST /v1/predict``: decoding and validating a request body, encoding the answer.

A request is ``{"inputs": X}`` (optionally ``"encoding": "json" | "base64"`` for the answer), ``X`` a batch
``(N, *input_shape)`` of raw values, either nested JSON arrays or the compact
``{"dtype": "float32", "shape": [N, ...], "base64": "<little-endian bytes>"}``. Every problem is an
:class:`APIError` carrying the HTTP status and a message that names it. No web framework is needed here.

Example::

    x, encoding = decode_request(body, input_shape=(1, 28, 28), max_batch=1024)
    payload = {"outputs": encode_tensor(api.query(x), encoding)}
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

ENCODINGS = ("json", "base64")
_REQUEST_FIELDS = ("inputs", "encoding")


class APIError(Exception):
    """An error answered as ``{"detail": message, "code": code}`` with HTTP ``status``."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}




def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def decode_request(
    body: bytes,
    *,
    input_shape: Sequence[int],
    max_batch: int,
    input_range: tuple[float, float] = (0.0, 1.0),
    tolerance: float = 1e-6,
) -> tuple[Tensor, str]:
    """Parse and validate a ``/v1/predict`` body; returns the float32 batch and the answer encoding.

    Raises :class:`APIError` (400 malformed JSON, 413 too many rows, 422 anything else wrong with the
    inputs) with a message that names the problem.
    """
    arr, encoding = parse_request(body, max_batch=max_batch)
    return check_batch(arr, input_shape=input_shape, max_batch=max_batch, input_range=input_range,
                       tolerance=tolerance), encoding


def parse_request(body: bytes, *, max_batch: int) -> tuple[np.ndarray, str]:
    """Parse a ``/v1/predict`` body into its (not yet validated) batch and the answer encoding; the batch's
    shape, values and size are checked by :func:`check_batch`, which every protocol shares."""
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise APIError(400, "malformed_json", "request body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as e:
        raise APIError(400, "malformed_json", f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise APIError(400, "malformed_json", "JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise APIError(422, "bad_request", 'request body must be a JSON object like {"inputs": [[...], ...]}')
    unknown = sorted(set(payload) - set(_REQUEST_FIELDS))
    if unknown:
        raise APIError(
            422, "unknown_field",
            f"unknown field(s) {', '.join(map(repr, unknown))}; a request has 'inputs' and optionally 'encoding' "
            "(the client is identified by its API key only)",
        )
    if "inputs" not in payload:
        raise APIError(422, "missing_inputs", "request body has no 'inputs' field")
    raw = payload["inputs"]
    if isinstance(raw, dict):
        arr = _decode_base64_tensor(raw, max_batch=max_batch)
        in_encoding = "base64"
    elif isinstance(raw, list):
        arr = _decode_nested(raw, max_batch=max_batch, check_bools=b"true" in body or b"false" in body)
        in_encoding = "json"
    else:
        raise APIError(
            422, "bad_dtype",
            f"'inputs' must be a nested array of numbers or a {{dtype, shape, base64}} object, got {_json_type(raw)}",
        )
    encoding = payload.get("encoding", in_encoding)
    if encoding not in ENCODINGS:
        raise APIError(422, "bad_encoding", f"'encoding' must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    return arr, encoding


def check_batch(
    arr: np.ndarray | Tensor,
    *,
    input_shape: Sequence[int],
    max_batch: int,
    input_range: tuple[float, float] = (0.0, 1.0),
    tolerance: float = 1e-6,
) -> Tensor:
    """Check a decoded batch, whatever protocol carried it: shape ``(N, *input_shape)`` with ``1 <= N <=
    max_batch``, finite values inside ``input_range`` (up to ``tolerance``). Returns a writable float32 CPU
    tensor, clamped to the range; :class:`APIError` (413 too many rows, 422 anything else) otherwise."""
    if isinstance(arr, Tensor):
        arr = arr.detach().to("cpu").numpy()
    shape = tuple(int(s) for s in input_shape)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise APIError(422, "empty_batch", "'inputs' is an empty batch; send at least one row")
    if tuple(arr.shape[1:]) != shape:
        hint = " (wrap a single example in a list to make a batch of one)" if tuple(arr.shape) == shape else ""
        raise APIError(
            422, "bad_shape",
            f"'inputs' must be a batch of shape (N, {', '.join(map(str, shape))}); got {_shape_str(arr.shape)}{hint}",
        )
    if arr.shape[0] > max_batch:
        raise _too_many(arr.shape[0], max_batch)
    lo, hi = input_range
    out = np.array(arr, dtype=np.float32)  # a writable copy
    low, high = out.min(), out.max()  # NaN in either fails both comparisons; Inf fails one
    if low >= lo - tolerance and high <= hi + tolerance:  # the common case: two reductions, no row search
        return torch.from_numpy(np.clip(out, lo, hi, out=out))
    finite = np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise APIError(422, "not_finite", f"'inputs' contain NaN or Infinity (first in row {row})")
    flat = arr.reshape(arr.shape[0], -1)
    bad = ((flat < lo - tolerance) | (flat > hi + tolerance)).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = float(flat[row][(flat[row] < lo - tolerance) | (flat[row] > hi + tolerance)][0])
        raise APIError(
            422, "out_of_range",
            f"'inputs' must lie in [{lo:g}, {hi:g}] (raw values; normalisation is inside the model); "
            f"row {row} holds {value:g}",
        )
    return torch.from_numpy(np.array(arr, dtype=np.float32)).clamp_(lo, hi)  # a writable copy


def _too_many(n: int, max_batch: int) -> APIError:
    return APIError(413, "batch_too_large", f"batch of {n} rows exceeds the maximum of {max_batch} rows per request")


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _decode_nested(raw: list[Any], *, max_batch: int, check_bools: bool) -> np.ndarray:
    if len(raw) > max_batch:
        raise _too_many(len(raw), max_batch)
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise APIError(422, "ragged", "'inputs' is ragged: its rows do not all have the same shape") from None
    kind = arr.dtype.kind
    if kind == "b":
        raise APIError(422, "bad_dtype", "'inputs' must hold numbers; got booleans")
    if kind in "USa":
        raise APIError(422, "bad_dtype", "'inputs' must hold numbers; got strings")
    if kind == "O":
        leaves = [v for v in _leaves(raw) if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if leaves:
            raise APIError(422, "bad_dtype", f"'inputs' must hold numbers only; found {_json_type(leaves[0])}")
        if any(isinstance(v, int) for v in _leaves(raw)):
            raise APIError(422, "bad_dtype", "'inputs' holds an integer too large for float32")
        raise APIError(422, "ragged", "'inputs' is ragged: its rows do not all have the same shape")
    if kind not in "fiu":
        raise APIError(422, "bad_dtype", f"'inputs' must hold numbers; got dtype {arr.dtype}")
    if check_bools and any(isinstance(v, bool) for v in _leaves(raw)):
        raise APIError(422, "bad_dtype", "'inputs' must hold numbers; found a boolean")
    with np.errstate(over="ignore"):
        return arr.astype(np.float64, copy=False)


def _leaves(obj: Any, *, limit: int = 10_000_000) -> list[Any]:
    """The non-list leaves of a nested list, iteratively (no recursion limit), at most ``limit``."""
    out: list[Any] = []
    stack = [obj]
    while stack and len(out) < limit:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        else:
            out.append(v)
    return out


def _decode_base64_tensor(raw: dict[str, Any], *, max_batch: int) -> np.ndarray:
    extra = sorted(set(raw) - {"dtype", "shape", "base64"})
    if extra or "base64" not in raw or "shape" not in raw:
        raise APIError(
            422, "bad_tensor",
            "a compact 'inputs' object is {\"dtype\": \"float32\", \"shape\": [N, ...], \"base64\": \"...\"}",
        )
    dtype = raw.get("dtype", "float32")
    if dtype not in ("float32", "<f4"):
        raise APIError(422, "bad_dtype", f"compact 'inputs' must be little-endian float32; got dtype {dtype!r}")
    shape = raw["shape"]
    if (not isinstance(shape, list) or not shape or len(shape) > 8
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise APIError(422, "bad_shape", f"'inputs.shape' must be a list of non-negative integers, got {shape!r}")
    if shape[0] > max_batch:
        raise _too_many(shape[0], max_batch)
    data = raw["base64"]
    if not isinstance(data, str):
        raise APIError(422, "bad_tensor", f"'inputs.base64' must be a string, got {_json_type(data)}")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(422, "bad_base64", "'inputs.base64' is not valid base64") from None
    need = 4 * math.prod(shape)
    if len(blob) != need:
        raise APIError(
            422, "bad_shape",
            f"'inputs.base64' holds {len(blob)} bytes but shape {_shape_str(shape)} of float32 needs {need}",
        )
    return np.frombuffer(blob, dtype="<f4").reshape(shape)


def encode_tensor(t: Tensor, encoding: str) -> Any:
    """A ``(N, K)`` tensor as nested JSON arrays (exact float32 values) or the compact base64 object."""
    t = t.detach().to("cpu", torch.float32).contiguous()
    if encoding == "base64":
        blob = t.numpy().astype("<f4", copy=False).tobytes()
        return {"dtype": "float32", "shape": list(t.shape), "base64": base64.b64encode(blob).decode("ascii")}
    return t.tolist()

