"""The wire format of the Open Inference Protocol (KServe "v2" REST), both directions.

The protocol (``github.com/kserve/open-inference-protocol``, ``specification/protocol/inference_rest.md``)
carries tensors as ``{"name", "shape", "datatype", "data"}`` objects; an inference request is
``{"id"?, "parameters"?, "inputs": [tensor, ...], "outputs"?: [{"name", "parameters"?}, ...]}`` and the
answer ``{"model_name", "model_version"?, "id"?, "parameters"?, "outputs": [tensor, ...]}``; an error is
``{"error": message}``. ``data`` is the tensor's elements in row-major order, flat or nested.

Triton's *binary tensor data* extension is understood as well, since ``tritonclient`` uses it by default:
the body is the JSON header (its length in the ``Inference-Header-Content-Length`` header) followed by the
raw little-endian bytes of each tensor whose ``parameters`` hold ``binary_data_size``, in order; an answer
tensor is sent the same way when the request asks for it (``"binary_data": true`` on a requested output,
or ``"binary_data_output": true`` in the request's parameters).

This module holds no web framework: the server's routes (:mod:`modelsteal.serve.v2`), the client
(:class:`~modelsteal.serve.client.HTTPBlackBox` with ``protocol="v2"``) and the gateway
(:mod:`modelsteal.serve.upstream`) all use it. Problems with a request raise
:class:`~modelsteal.serve.codec.APIError` with status 400.

Example::

    req = parse_infer_request(body, header_length=None, max_batch=1024)
    x = tensor_to_array(req.inputs[0], max_batch=1024)        # (N, ...) float32 numpy
    body, header_length = encode_infer_response(model_name="victim", outputs=[("probabilities", y, False)])
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from modelsteal.serve import jsonio
from modelsteal.serve.codec import APIError

HEADER_LENGTH = "inference-header-content-length"  #: the binary extension's header (HTTP headers ignore case)
#: the protocol's datatypes that carry numbers, and their little-endian NumPy dtypes
DATATYPES: dict[str, str] = {
    "BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
    "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}
_MAX_DIMS = 8


@dataclass
class InferTensor:
    """One tensor of a request or an answer: ``data`` is a flat or nested list, or raw bytes (binary extension)."""

    name: str
    shape: list[int]
    datatype: str
    data: Any
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    """A parsed inference request: its tensors, the outputs it asks for (``{name: binary?}``; empty: all)."""

    inputs: list[InferTensor]
    outputs: dict[str, bool]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_output: bool = False  #: ``binary_data_output`` in the request's parameters


def _bad(message: str) -> APIError:
    return APIError(400, "bad_request", message)


def _json_object(text: bytes, what: str) -> dict[str, Any]:
    try:
        obj = jsonio.loads(text)
    except UnicodeDecodeError:
        raise _bad(f"{what} is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as e:
        raise _bad(f"malformed JSON in {what} at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise _bad(f"{what}: JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise _bad(f"{what} must be a JSON object")
    return obj


def _shape(value: Any, where: str) -> list[int]:
    if (not isinstance(value, list) or len(value) > _MAX_DIMS
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)):
        raise _bad(f"{where}: 'shape' must be a list of at most {_MAX_DIMS} non-negative integers, got {value!r}")
    return [int(s) for s in value]


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where}: 'parameters' must be an object")
    return value


def parse_infer_request(body: bytes, *, header_length: str | None) -> InferRequest:
    """Parse an inference request body (JSON, or JSON + binary tensors when ``header_length`` is the value of
    the ``Inference-Header-Content-Length`` header). Checks the structure only; :func:`tensor_to_array`
    checks a tensor's datatype and data against its shape."""
    blob = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise _bad(f"invalid Inference-Header-Content-Length {header_length!r}") from None
        if not 0 < n <= len(body):
            raise _bad(f"Inference-Header-Content-Length {n} does not fit a body of {len(body)} bytes")
        body, blob = body[:n], body[n:]
    req = _json_object(body, "inference request")
    unknown = sorted(set(req) - {"id", "parameters", "inputs", "outputs"})
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(map(repr, unknown))} in the inference request; it has 'inputs' "
                   "and optionally 'id', 'parameters' and 'outputs'")
    rid = req.get("id")
    if rid is not None and not isinstance(rid, str):
        raise _bad("'id' must be a string")
    params = _parameters(req.get("parameters"), "request")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("'inputs' must be a non-empty list of tensors {name, shape, datatype, data}")
    tensors: list[InferTensor] = []
    offset = 0
    for i, t in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise _bad(f"{where} must be an object {{name, shape, datatype, data}}")
        missing = [k for k in ("name", "shape", "datatype") if k not in t]
        if missing:
            raise _bad(f"{where} has no {', '.join(map(repr, missing))}")
        if not isinstance(t["name"], str) or not isinstance(t["datatype"], str):
            raise _bad(f"{where}: 'name' and 'datatype' must be strings")
        tparams = _parameters(t.get("parameters"), where)
        size = tparams.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(blob):
                left = len(blob) - offset
                raise _bad(f"{where}: binary_data_size {size!r} does not fit the {left} binary bytes left")
            data: Any = blob[offset:offset + size]
            offset += size
        elif "data" in t:
            data = t["data"]
        else:
            raise _bad(f"{where} has no 'data' (nor a binary_data_size parameter)")
        tensors.append(InferTensor(name=t["name"], shape=_shape(t["shape"], where), datatype=t["datatype"],
                                   data=data, parameters=tparams))
    if offset != len(blob):
        raise _bad(f"{len(blob) - offset} binary bytes after the JSON header belong to no input")
    outputs: dict[str, bool] = {}
    requested = req.get("outputs")
    if requested is not None:
        if not isinstance(requested, list):
            raise _bad("'outputs' must be a list of {name, parameters}")
        for i, o in enumerate(requested):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise _bad(f"outputs[{i}] must be an object with a string 'name'")
            outputs[o["name"]] = bool(_parameters(o.get("parameters"), f"outputs[{i}]").get("binary_data", False))
    return InferRequest(inputs=tensors, outputs=outputs, id=rid, parameters=params,
                        binary_output=bool(params.get("binary_data_output", False)))


def tensor_to_array(t: InferTensor, *, max_batch: int, datatypes: Sequence[str] = ("FP32",)) -> np.ndarray:
    """The tensor's data as a NumPy array of its declared shape, after checking the datatype (one of
    ``datatypes``), that the data holds numbers and exactly ``prod(shape)`` of them, and that the first
    dimension (the batch) is at most ``max_batch`` (413)."""
    where = f"input {t.name!r}"
    if t.datatype not in datatypes:
        raise _bad(f"{where} has datatype {t.datatype!r}; this model takes {' or '.join(datatypes)}")
    if t.shape and t.shape[0] > max_batch:
        raise APIError(413, "batch_too_large",
                       f"batch of {t.shape[0]} rows exceeds the maximum of {max_batch} rows per request")
    need = math.prod(t.shape)
    dtype = np.dtype(DATATYPES[t.datatype])
    if isinstance(t.data, bytes | bytearray):
        if len(t.data) != need * dtype.itemsize:
            raise _bad(f"{where}: {len(t.data)} binary bytes do not hold shape {t.shape} of {t.datatype} "
                       f"({need * dtype.itemsize} bytes)")
        return np.frombuffer(t.data, dtype=dtype).reshape(t.shape)
    if not isinstance(t.data, list):
        raise _bad(f"{where}: 'data' must be a list of numbers")
    if len(t.data) == need and all(type(v) is float or type(v) is int for v in t.data):  # flat: the common case
        return _numbers(t.data, t, dtype)
    flat = _flatten(t.data, limit=need + 1)
    if len(flat) != need:
        held = f"more than {need}" if len(flat) > need else str(len(flat))
        raise _bad(f"{where}: 'data' holds {held} elements but shape {t.shape} needs {need}")
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in flat):
        bad = next(v for v in flat if isinstance(v, bool) or not isinstance(v, int | float))
        raise _bad(f"{where}: 'data' must hold numbers, found {type(bad).__name__} {bad!r:.40}")
    return _numbers(flat, t, dtype)


def _numbers(flat: list[Any], t: Any, dtype: np.dtype) -> np.ndarray:
    """``flat`` (checked numbers, row-major) as ``dtype`` of ``t``'s shape."""
    with np.errstate(over="ignore"):
        try:
            return np.asarray(flat, dtype=np.float64).astype(dtype).reshape(t.shape)
        except OverflowError:
            raise _bad(f"input {t.name!r}: 'data' holds an integer too large for {t.datatype}") from None


def _flatten(data: list[Any], *, limit: int) -> list[Any]:
    """Row-major leaves of a (possibly nested) list, iteratively, stopping after ``limit`` leaves."""
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack and len(out) < limit:
        try:
            v = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(v, list):
            stack.append(iter(v))
        else:
            out.append(v)
    return out


def encode_infer_response(
    *, model_name: str, outputs: Sequence[tuple[str, Tensor | np.ndarray, bool]], id: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The answer body for ``outputs`` (``(name, array, binary?)``; arrays sent as FP32) and the JSON header's
    length when a tensor is sent binary (``None``: a plain JSON body)."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr, binary in outputs:
        a = arr.detach().to("cpu").numpy() if isinstance(arr, Tensor) else np.asarray(arr)
        a = np.ascontiguousarray(a, dtype="<f4")
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(a.shape)}
        if binary:
            blob = a.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = a.reshape(-1)
        tensors.append(entry)
    payload: dict[str, Any] = {"model_name": model_name}
    if id is not None:
        payload["id"] = id
    if parameters:
        payload["parameters"] = parameters
    payload["outputs"] = tensors
    head = jsonio.dumps(payload)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def encode_infer_request(x: Tensor | np.ndarray, *, input_name: str, output_name: str | None = None,
                         datatype: str = "FP32") -> dict[str, Any]:
    """A JSON inference request for the batch ``x`` (flat row-major data, a NumPy array: write it with
    :func:`modelsteal.serve.jsonio.dumps`), asking for ``output_name`` only when given."""
    a = x.detach().to("cpu").numpy() if isinstance(x, Tensor) else np.asarray(x)
    a = np.ascontiguousarray(a, dtype=DATATYPES[datatype])
    req: dict[str, Any] = {"inputs": [{"name": input_name, "shape": list(a.shape), "datatype": datatype,
                                       "data": a.reshape(-1)}]}
    if output_name is not None:
        req["outputs"] = [{"name": output_name}]
    return req


def decode_infer_response(body: bytes, *, header_length: str | None, output_name: str | None) -> np.ndarray:
    """The named output tensor (or the only one) of an inference answer as float32 of its declared shape;
    ``ValueError`` naming what is wrong with a malformed answer."""
    blob = b""
    if header_length is not None:
        n = int(header_length)
        body, blob = body[:n], body[n:]
    try:
        payload = jsonio.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError(f"the answer is not JSON: {body[:80]!r}") from None
    outputs = payload.get("outputs") if isinstance(payload, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise ValueError(f"the answer has no 'outputs' list: {str(payload)[:200]}")
    offset = 0
    chosen = None
    for o in outputs:
        if not isinstance(o, dict):
            raise ValueError("an answer output is not an object")
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            o = {**o, "data": blob[offset:offset + int(size)]}
            offset += int(size)
        if output_name is None or o.get("name") == output_name:
            chosen = o
            break
    if chosen is None:
        names = [o.get("name") for o in outputs if isinstance(o, dict)]
        raise ValueError(f"the answer has no output {output_name!r}; it has {names}")
    if output_name is None and len(outputs) > 1:
        raise ValueError(f"the answer has {len(outputs)} outputs {[o.get('name') for o in outputs]}; name one")
    datatype = chosen.get("datatype")
    if datatype not in DATATYPES or datatype == "BOOL":
        raise ValueError(f"output {chosen.get('name')!r} has datatype {datatype!r}, not a number type")
    tensor = InferTensor(name=str(chosen.get("name")), shape=_answer_shape(chosen.get("shape")), datatype=datatype,
                         data=chosen.get("data"))
    try:
        arr = tensor_to_array(tensor, max_batch=2**62, datatypes=tuple(DATATYPES))
    except APIError as e:
        raise ValueError(e.message) from None
    return arr.astype(np.float32)


def _answer_shape(value: Any) -> list[int]:
    try:
        return _shape(value, "answer output")
    except APIError as e:
        raise ValueError(e.message) from None
