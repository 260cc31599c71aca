"""``HTTPBlackBox``: the client side of the :class:`~modelsteal.BlackBox` contract for ``modelsteal serve``.

An attack cannot tell it from an in-process :class:`~modelsteal.PredictionAPI`: ``query(x)`` sends ``x`` in
batches of ``batch_size`` rows to ``POST /v1/predict`` (compact base64 float32 by default, so answers come
back bit-exact), retries with exponential backoff and jitter on 429 (honouring ``Retry-After``), 5xx and
connection errors, and returns the ``(N, K)`` answers as float32 on the CPU. Each request carries its own
``Idempotency-Key`` (kept across its retries), so a retry whose first answer was lost is not counted twice.

The first request (``GET /v1/info``, made by the constructor) does not retry a refused connection or an
unknown host: nothing listens there, so :class:`ServerUnreachableError` is raised at once. Later requests
retry them, since a server that answered before may be restarting.

Errors map onto the toolkit's exceptions: an exhausted budget raises :class:`KeyBudgetExhaustedError` (a
:class:`~modelsteal.BudgetExceededError`), a batch the server's detector refused
:class:`~modelsteal.QueryRefusedError`, a missing/invalid/revoked key ``PermissionError``, and a request
the server rejects (wrong shape, range, ...) ``ValueError`` with the server's message.

Example::

    victim = HTTPBlackBox("http://127.0.0.1:8000", key)
    victim.input_shape, victim.num_classes     # from GET /v1/info
    y = victim.query(x)                        # (N, K), float32, CPU
    victim.usage()["queries"]                  # this key's count in the server's ledger
"""

from __future__ import annotations

import base64
import math
import random
import re
import time
import uuid
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelsteal.blackbox import BudgetExceededError, QueryCounter, QueryRefusedError, answer_in_batches, as_batch
from modelsteal.serve import jsonio, require
from modelsteal.serve.codec_v2 import DATATYPES, HEADER_LENGTH, decode_infer_response, encode_infer_request
from modelsteal.serve.transport import StdlibHTTP


class ServerError(RuntimeError):
    """The server kept failing (5xx or unreachable) after every retry."""


class ServerTimeoutError(ServerError):
    """The server's last failure was a timeout (the gateway answers 504 for it)."""


class ServerUnreachableError(ConnectionError):
    """Nothing answers at the server's address (connection refused, unknown host) on the first contact, or the
    server stopped answering mid-run: a condition the user fixes, shown as one line by the CLI."""


class KeyBudgetExhaustedError(BudgetExceededError):
    """The server refused a batch because this key's query budget does not cover it."""


class HTTPBlackBox(QueryCounter):
    """A :class:`~modelsteal.BlackBox` answered by a ``modelsteal serve`` instance at ``url``, or by any server of
    the Open Inference Protocol (Triton, KServe, MLServer, TorchServe, ``modelsteal serve``'s ``/v2``): a URL
    ``http://host:port/v2/models/NAME``, or ``protocol="v2"`` with ``model_name``. Its input and output come from
    the model metadata (``output_name`` picks the output when there are several; ``logits=True`` applies the
    softmax to an output of logits; answers of another server must otherwise be probabilities); ``key`` may be
    ``None`` for a v2 server without keys; ``pool_size`` caps ``httpx``'s connection pool (``https://``).

    ``key`` is the API key (sent as ``Authorization: Bearer``); it *is* the client identity, so the
    ``client`` argument of :meth:`query` only names the local count (:meth:`queries`, ``total_queries``: the
    rows the server answered, as its ledger counts them; the budget is the server's). ``batch_size`` is
    the number of rows per request (capped by the server's ``max_batch``); ``binary`` sends and receives
    compact base64 float32 instead of nested JSON arrays; ``max_retries`` bounds the retries of one request
    on 429/5xx/connection errors, with backoff ``backoff * 2**attempt`` (capped at ``max_backoff``, jittered).
    ``transport`` is an optional ``httpx`` transport (custom TLS, proxies, or a mock in tests). Plain
    ``http://`` without a transport goes through :class:`~modelsteal.serve.transport.StdlibHTTP` (the standard
    library's keep-alive connections, one per thread; half the client CPU of ``httpx``), ``https://`` and a
    given transport through ``httpx``; errors and retries are the same on both.
    """

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        batch_size: int = 256,
        timeout: float = 30.0,
        max_retries: int = 8,
        binary: bool = True,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        transport: Any = None,
        protocol: str = "auto",
        model_name: str | None = None,
        output_name: str | None = None,
        logits: bool = False,
        pool_size: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {url!r}")
        base, self.protocol, self.model_name = split_endpoint(url, protocol=protocol, model_name=model_name)
        if not key and self.protocol == "v1":
            raise ValueError("an API key is needed (create one with `modelsteal keys create`)")
        httpx = require("httpx")
        self._httpx = httpx
        self.url = base
        self.binary = binary
        self.logits = bool(logits)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._rng = random.Random()
        # answers are small: a gzip round trip would cost both sides more CPU than the bytes it saves
        headers = ({"Accept": "application/json", "Accept-Encoding": "identity"}
                   | ({"Authorization": f"Bearer {key}"} if key else {}))
        self._http: Any
        if transport is None and self.url.startswith("http://"):  # the lean client: see serve/transport.py
            self._http = StdlibHTTP(self.url, timeout=timeout, headers=headers)
        else:
            limits = (httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size) if pool_size
                      else None)
            self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, headers=headers,
                                      **({"limits": limits} if limits is not None else {}))
        try:
            if self.protocol == "v2":
                self.info: dict[str, Any] = self._v2_info(output_name)
            else:
                self.info = self._request("GET", "/v1/info", retry_unreachable=False).json()
        except BaseException:
            self._http.close()
            raise
        try:
            self.input_shape: tuple[int, ...] = tuple(int(s) for s in self.info["input_shape"])
            self.num_classes: int = int(self.info["num_classes"])
        except (KeyError, TypeError, ValueError):
            self._http.close()
            raise ValueError(f"{self.url}/v1/info did not describe a modelsteal API: {self.info!r}") from None
        self._wire_shape = self.input_shape  # what the endpoint takes; input_shape may be a view of it
        self.batch_size = min(int(batch_size), int(self.info.get("max_batch") or batch_size))
        QueryCounter.__init__(self)  # counts what the server answered; the key's budget is the server's

    def _v2_info(self, output_name: str | None) -> dict[str, Any]:
        """What ``GET /v2/models/NAME`` says, in the shape of ``/v1/info``: the input tensor's name, shape and
        datatype, the output to ask for and the number of classes (from its shape)."""
        meta = self._request("GET", f"/v2/models/{self.model_name}", retry_unreachable=False).json()
        where = f"{self.url}/v2/models/{self.model_name}"
        inputs, outputs = meta.get("inputs") or [], meta.get("outputs") or []
        if len(inputs) != 1:
            raise ValueError(f"{where} declares {len(inputs)} inputs; a black box has one input tensor")
        shape = inputs[0].get("shape") or []
        if len(shape) < 2 or any(int(s) < 1 for s in shape[1:]):
            raise ValueError(f"{where} does not declare its input shape [-1, ...] (got {shape!r}); declare it in "
                             "the model's configuration (MLServer: 'inputs' in model-settings.json)")
        if inputs[0].get("datatype") not in DATATYPES or inputs[0].get("datatype") == "BOOL":
            raise ValueError(f"{where}: input datatype {inputs[0].get('datatype')!r} is not a number type")
        out = _pick_output(outputs, output_name, where=where)
        classes = (out.get("shape") or [])[-1:] if out else []
        if not classes or int(classes[0]) < 2:
            raise ValueError(f"{where} does not declare the number of classes (output shape [-1, K], got "
                             f"{None if not out else out.get('shape')!r})")
        params = meta.get("parameters") or {}
        return {"input_shape": [int(s) for s in shape[1:]], "num_classes": int(classes[0]),
                "max_batch": params.get("max_batch"), "input_name": inputs[0]["name"],
                "input_datatype": inputs[0]["datatype"], "output_name": out.get("name") if out else None,
                "model_name": self.model_name, "protocol": "v2", "platform": meta.get("platform"),
                "dataset": params.get("dataset"), "arch": params.get("arch"),
                "defense": {"name": params.get("defense") or "unknown"}}

    def view_inputs_as(self, shape: tuple[int, ...]) -> None:
        """Take inputs of ``shape`` and send them reshaped to the endpoint's (same number of values, row-major):
        a scikit-learn model served with 64 features answers (1, 8, 8) digits."""
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != math.prod(self._wire_shape):
            raise ValueError(f"inputs of shape {shape} cannot be sent as {self._wire_shape}: "
                             f"{math.prod(shape)} values against {math.prod(self._wire_shape)}")
        self.input_shape = shape

    # -- the BlackBox contract -------------------------------------------------------------------------
    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        """Answer ``x`` ``(N, *input_shape)`` (or one example ``input_shape``) with ``(N, K)`` float32 on CPU."""
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x)
        x = as_batch(x.detach().to("cpu", torch.float32), self.input_shape)
        return answer_in_batches(x, self.batch_size, lambda xb: self._predict(xb.contiguous(), client=client),
                                 empty=lambda: torch.empty(0, self.num_classes))

    def queries_left(self, client: str = "default") -> int | None:
        """What this key may still spend, from the server's ledger (``GET /v1/usage``; ``None``: no budget)."""
        left = self.usage().get("remaining")
        return None if left is None else int(left)

    def usage(self) -> dict[str, Any]:
        """This key's usage from ``GET /v1/usage``: ``queries``, ``budget``, ``remaining``, ``flags``, and
        ``flagged`` (its queries the server's detector flagged)."""
        if self.protocol == "v2":  # a modelsteal server answers /v1/usage too; another server has no usage
            try:
                return self._request("GET", "/v1/usage", retry_unreachable=False).json()
            except (ValueError, PermissionError, ServerError, ServerUnreachableError):
                return {}
        return self._request("GET", "/v1/usage").json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HTTPBlackBox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.protocol == "v2":
            return f"HTTPBlackBox({self.url!r}, protocol='v2', model_name={self.model_name!r})"
        return f"HTTPBlackBox({self.url!r}, defense={self.info.get('defense', {}).get('name')!r})"

    # -- transport ---------------------------------------------------------------------------------------
    def _predict(self, xb: Tensor, *, client: str) -> Tensor:
        n = int(xb.shape[0])
        if self.protocol == "v2":
            out = self._predict_v2(xb.reshape(n, *self._wire_shape))
        else:
            out = self._predict_v1(xb)
        if out.shape != (n, self.num_classes):
            raise ServerError(f"server answered shape {tuple(out.shape)} for a batch of {n}; expected ({n}, "
                              f"{self.num_classes})")
        if not torch.isfinite(out).all():
            raise ServerError("server answered NaN or Infinity")
        if self.logits:
            out = torch.softmax(out, dim=1)
        elif self.protocol == "v2":
            out = _as_probabilities(out)
        self.record(client, n)
        return out

    def _predict_v1(self, xb: Tensor) -> Tensor:
        if self.binary:
            blob = xb.numpy().astype("<f4", copy=False).tobytes()
            inputs: Any = {"dtype": "float32", "shape": list(xb.shape),
                           "base64": base64.b64encode(blob).decode("ascii")}
        else:
            inputs = xb.tolist()
        # one Idempotency-Key per request, the same on its retries: the server counts a retried request once
        reply = self._request("POST", "/v1/predict", json={"inputs": inputs},
                              headers={"Idempotency-Key": uuid.uuid4().hex})
        try:
            return _decode_outputs(reply.json().get("outputs"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ServerError(f"server answer is malformed: {type(e).__name__}: {e}") from None

    def _predict_v2(self, xb: Tensor) -> Tensor:
        body = encode_infer_request(xb, input_name=self.info["input_name"], output_name=self.info["output_name"],
                                    datatype=self.info["input_datatype"])
        resp = self._request("POST", f"/v2/models/{self.model_name}/infer", content=jsonio.dumps(body),
                             headers={"Content-Type": "application/json"})
        try:
            arr = decode_infer_response(resp.content, header_length=resp.headers.get(HEADER_LENGTH),
                                        output_name=self.info["output_name"])
        except ValueError as e:
            raise ServerError(f"{self.url}/v2/models/{self.model_name}/infer: malformed answer: {e}") from None
        return torch.from_numpy(np.array(arr, dtype=np.float32))

    def _request(self, method: str, path: str, *, retry_unreachable: bool = True, **kwargs: Any) -> Any:
        """One API call with retries, returning the ``httpx`` response of a success;
        ``retry_unreachable=False`` fails at once when nothing listens."""
        httpx = self._httpx
        last = ""
        timed_out = False
        for attempt in range(self.max_retries + 1):
            wait = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + 0.5 * self._rng.random())
            try:
                resp = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if not retry_unreachable:
                    reason = _reason(e)
                    server = "`modelsteal serve`" if self.protocol == "v1" else "the model server"
                    hint = "check the host name" if "name" in reason else f"is {server} running there?"
                    raise ServerUnreachableError(f"cannot reach {self.url} ({reason}); {hint}") from None
                last, timed_out = f"{type(e).__name__}: {e}", isinstance(e, httpx.ConnectTimeout)
            except httpx.TransportError as e:  # reset, timed out: the server may be restarting
                last, timed_out = f"{type(e).__name__}: {e}", isinstance(e, httpx.TimeoutException)
            else:
                if resp.status_code < 400:
                    return resp
                detail, code = _error_detail(resp)
                timed_out = resp.status_code == 504
                if resp.status_code == 429:
                    retry_after = _retry_after(resp.headers.get("retry-after"))
                    wait = max(wait, retry_after) if retry_after is not None else wait
                    last = f"429 {detail}"
                elif resp.status_code >= 500 or code == "idempotency_in_progress":
                    last = f"{resp.status_code} {detail}"
                elif code == "budget_exhausted":
                    raise KeyBudgetExhaustedError(f"{self.url}: {detail}")
                elif code == "query_refused":
                    raise QueryRefusedError(f"{self.url}: {detail}", **_refusal_facts(resp, detail))
                elif resp.status_code in (401, 403):
                    raise PermissionError(f"{self.url} refused the API key: {detail}")
                else:
                    raise ValueError(f"{self.url} rejected the request ({resp.status_code}): {detail}")
            if attempt < self.max_retries:
                time.sleep(wait)
        error = ServerTimeoutError if timed_out else ServerError
        raise error(f"{method} {self.url}{path} failed after {self.max_retries + 1} attempt(s); last error: {last}")


def split_endpoint(url: str, *, protocol: str = "auto", model_name: str | None = None) -> tuple[str, str, str | None]:
    """``(server root, protocol, model name)`` of an endpoint: ``http://h:p/v2/models/NAME`` is the Open
    Inference Protocol's model NAME (``protocol="auto"`` or ``"v2"``); any other URL is a server root, speaking
    ``v1`` unless ``protocol="v2"`` (then ``model_name`` is needed). One-line ``ValueError`` for a mistake."""
    if protocol not in ("auto", "v1", "v2"):
        raise ValueError(f"protocol must be auto, v1 or v2, got {protocol!r}")
    root, sep, rest = url.rstrip("/").partition("/v2/models/")
    if sep:
        name = rest.split("/")[0]
        if protocol == "v1":
            raise ValueError(f"{url} is an Open Inference Protocol (v2) endpoint; drop --protocol v1")
        if model_name is not None and model_name != name:
            raise ValueError(f"the URL names model {name!r}, but the model name given is {model_name!r}")
        return root, "v2", name
    if protocol == "v2":
        if not model_name:
            raise ValueError(f"a v2 endpoint needs a model name: pass --model-name NAME or the URL "
                             f"{url.rstrip('/')}/v2/models/NAME")
        return url.rstrip("/"), "v2", model_name
    if model_name is not None:
        raise ValueError("a model name is for the v2 protocol: pass --protocol v2 or a /v2/models/NAME URL")
    return url.rstrip("/"), "v1", None


def _pick_output(outputs: list[Any], name: str | None, *, where: str) -> dict[str, Any] | None:
    """The output tensor to ask for: ``name``, the only one, or the one whose name says probabilities."""
    names = [o.get("name") for o in outputs if isinstance(o, dict)]
    if name is not None:
        if name not in names:
            raise ValueError(f"{where} has no output {name!r}; it has {names}")
        return outputs[names.index(name)]
    if len(outputs) == 1:
        return outputs[0]
    for wanted in ("probabilities", "predict_proba", "probs", "probability", "output"):
        if wanted in names:
            return outputs[names.index(wanted)]
    if not outputs:
        return None
    raise ValueError(f"{where} has outputs {names}; say which holds the class probabilities")


def _as_probabilities(out: Tensor, *, tol: float = 1e-3) -> Tensor:
    """Another server's answer, checked to be probabilities (rows on the simplex) and renormalised in float32."""
    if (out < -tol).any() or ((out.sum(dim=1) - 1).abs() > tol).any():
        raise ServerError(f"server answered rows that are not probabilities (row sums {out.sum(dim=1)[:3].tolist()}, "
                          f"min {float(out.min()):.3g}); if the model outputs logits, pass logits=True")
    out = out.clamp_min(0)
    return out / out.sum(dim=1, keepdim=True)


def _reason(error: Exception) -> str:
    """``[Errno 111] Connection refused`` → ``connection refused``; an unknown host says so."""
    text = str(error).strip() or type(error).__name__
    if "]" in text and text.startswith("["):
        text = text.split("]", 1)[1].strip()
    return text[:1].lower() + text[1:]


def _error_detail(resp: Any) -> tuple[str, str]:
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason_phrase, ""
    if isinstance(body, dict):
        return str(body.get("detail", body.get("error", body))), str(body.get("code", ""))
    return str(body), ""


_REFUSAL_RE = re.compile(r"detector '([^']*)' flagged (\d+) of the batch's (\d+) rows")


def _refusal_facts(resp: Any, detail: str) -> dict[str, Any]:
    """``flagged``, ``rows`` and ``detector`` of a 403 ``query_refused``: from the body's fields when the server
    sends them, else read from its message (``detector 'prada' flagged 67 of the batch's 100 rows ...``)."""
    try:
        body = resp.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    m = _REFUSAL_RE.search(detail)
    facts: dict[str, Any] = {"detector": m.group(1), "flagged": int(m.group(2)), "rows": int(m.group(3))} if m else {}
    for k in ("flagged", "rows", "detector"):
        if body.get(k) is not None:
            facts[k] = body[k]
    return facts


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _decode_outputs(outputs: Any) -> Tensor:
    if isinstance(outputs, dict):
        blob = base64.b64decode(outputs["base64"])
        arr = np.frombuffer(blob, dtype="<f4").reshape(outputs["shape"])
        return torch.from_numpy(arr.copy())
    if isinstance(outputs, list):
        return torch.tensor(outputs, dtype=torch.float32)
    raise ServerError(f"server answer has no usable 'outputs': {type(outputs).__name__}")
