"""``HTTPBlackBox``: the client side of the :class:`~modelsteal.BlackBox` contract for ``modelsteal serve``.

An attack cannot tell it from an in-process :class:`~modelsteal.PredictionAPI`: ``query(x)`` sends ``x`` in
batches of ``batch_size`` rows to ``POST /v1/predict`` (compact base64 float32 by default, so answers come
back bit-exact), retries with exponential backoff and jitter on 429 (honouring ``Retry-After``), 5xx and
connection errors, and returns the ``(N, K)`` answers as float32 on the CPU.

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
import random
import re
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelsteal.blackbox import BudgetExceededError, QueryCounter, QueryRefusedError, answer_in_batches, as_batch
from modelsteal.serve import require


class ServerError(RuntimeError):
    """The server kept failing (5xx or unreachable) after every retry."""


class ServerUnreachableError(ConnectionError):
    """Nothing answers at the server's address (connection refused, unknown host) on the first contact, or the
    server stopped answering mid-run: a condition the user fixes, shown as one line by the CLI."""


class KeyBudgetExhaustedError(BudgetExceededError):
    """The server refused a batch because this key's query budget does not cover it."""


class HTTPBlackBox(QueryCounter):
    """A :class:`~modelsteal.BlackBox` answered by a ``modelsteal serve`` instance at ``url``.

    ``key`` is the API key (sent as ``Authorization: Bearer``); it *is* the client identity, so the
    ``client`` argument of :meth:`query` only names the local count (:meth:`queries`, ``total_queries``: the
    rows the server answered, as its ledger counts them; the budget is the server's). ``batch_size`` is
    the number of rows per request (capped by the server's ``max_batch``); ``binary`` sends and receives
    compact base64 float32 instead of nested JSON arrays; ``max_retries`` bounds the retries of one request
    on 429/5xx/connection errors, with backoff ``backoff * 2**attempt`` (capped at ``max_backoff``, jittered).
    ``transport`` is an optional ``httpx`` transport (custom TLS, proxies, or a mock in tests).
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        batch_size: int = 256,
        timeout: float = 30.0,
        max_retries: int = 8,
        binary: bool = True,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        transport: Any = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {url!r}")
        if not key:
            raise ValueError("an API key is needed (create one with `modelsteal keys create`)")
        httpx = require("httpx")
        self._httpx = httpx
        self.url = url.rstrip("/")
        self.binary = binary
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._rng = random.Random()
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {key}", "Accept": "application/json"})
        try:
            self.info: dict[str, Any] = self._request("GET", "/v1/info", retry_unreachable=False)
        except BaseException:
            self._http.close()
            raise
        try:
            self.input_shape: tuple[int, ...] = tuple(int(s) for s in self.info["input_shape"])
            self.num_classes: int = int(self.info["num_classes"])
        except (KeyError, TypeError, ValueError):
            self._http.close()
            raise ValueError(f"{self.url}/v1/info did not describe a modelsteal API: {self.info!r}") from None
        self.batch_size = min(int(batch_size), int(self.info.get("max_batch", batch_size)))
        QueryCounter.__init__(self)  # counts what the server answered; the key's budget is the server's

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
        return self._request("GET", "/v1/usage")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HTTPBlackBox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HTTPBlackBox({self.url!r}, defense={self.info.get('defense', {}).get('name')!r})"

    # -- transport ---------------------------------------------------------------------------------------
    def _predict(self, xb: Tensor, *, client: str) -> Tensor:
        n = int(xb.shape[0])
        if self.binary:
            blob = xb.numpy().astype("<f4", copy=False).tobytes()
            inputs: Any = {"dtype": "float32", "shape": list(xb.shape),
                           "base64": base64.b64encode(blob).decode("ascii")}
        else:
            inputs = xb.tolist()
        reply = self._request("POST", "/v1/predict", json={"inputs": inputs})
        out = _decode_outputs(reply.get("outputs"))
        if out.shape != (n, self.num_classes):
            raise ServerError(f"server answered shape {tuple(out.shape)} for a batch of {n}; expected ({n}, "
                              f"{self.num_classes})")
        self.record(client, n)
        return out

    def _request(self, method: str, path: str, *, retry_unreachable: bool = True, **kwargs: Any) -> dict[str, Any]:
        """One API call with retries; ``retry_unreachable=False`` fails at once when nothing listens."""
        httpx = self._httpx
        last = ""
        for attempt in range(self.max_retries + 1):
            wait = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + 0.5 * self._rng.random())
            try:
                resp = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if not retry_unreachable:
                    reason = _reason(e)
                    hint = "check the host name" if "name" in reason else "is `modelsteal serve` running there?"
                    raise ServerUnreachableError(f"cannot reach {self.url} ({reason}); {hint}") from None
                last = f"{type(e).__name__}: {e}"
            except httpx.TransportError as e:  # reset, timed out: the server may be restarting
                last = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code < 400:
                    return resp.json()
                detail, code = _error_detail(resp)
                if resp.status_code == 429:
                    retry_after = _retry_after(resp.headers.get("retry-after"))
                    wait = max(wait, retry_after) if retry_after is not None else wait
                    last = f"429 {detail}"
                elif resp.status_code >= 500:
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
        raise ServerError(f"{method} {self.url}{path} failed after {self.max_retries + 1} attempts; last error: {last}")


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
        return str(body.get("detail", body)), str(body.get("code", ""))
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
