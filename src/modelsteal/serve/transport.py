"""A keep-alive HTTP/1.1 client on the standard library's :mod:`http.client`, for :class:`HTTPBlackBox`'s plain
``http://`` calls: the part of ``httpx.Client``'s interface the black box uses (``request(method, path, content=,
json=, headers=)``, a response with ``status_code``, ``headers``, ``content``, ``text``, ``json()``), and
``httpx``'s exceptions for what goes wrong, so the black box's retry and error handling is the same on both.

Why not ``httpx`` here: the gateway calls its upstream once per batch from one thread, and ``httpx``'s layers
(request and response models, the transport, ``httpcore``'s connection pool, ``h11``) cost about twice the CPU of
the call itself — 1.54 ms against 0.76 ms per 256-row v2 call to MLServer, 0.67 against 0.22 ms per 16-row one
(``bench/json_codec.py`` measures the JSON part, ``bench/upstream_throughput.py`` the gateway). ``httpx`` stays
for ``https://`` and for a custom ``transport`` (TLS settings, proxies, mocks); the standard library does the rest.

One connection per thread (threads never share one), reopened when the server has closed it while it sat idle.
"""

from __future__ import annotations

import http.client
import json as _json
import select
import socket
import threading
import zlib
from typing import Any
from urllib.parse import urlsplit

from modelsteal.serve import jsonio, require

__all__ = ["StdlibHTTP", "StdlibResponse"]


class StdlibResponse:
    """What :class:`HTTPBlackBox` reads of an answer: status, headers (case-insensitive), the body."""

    def __init__(self, status_code: int, reason_phrase: str, headers: http.client.HTTPMessage, content: bytes) -> None:
        self.status_code = status_code
        self.reason_phrase = reason_phrase
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonio.loads(self.content)


class StdlibHTTP:
    """``request(method, path, ...)`` against ``base_url`` (``http://host[:port][/prefix]``) with ``timeout``
    seconds for the connection and for each read, and ``headers`` sent with every request."""

    def __init__(self, base_url: str, *, timeout: float, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"StdlibHTTP speaks plain http://host[:port] only, got {base_url!r}")
        self._httpx = require("httpx")  # its exceptions are the black box's vocabulary
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and _closed_by_peer(conn.sock):
            conn.close()  # the server closed it while idle: http.client reconnects on the next request
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def request(self, method: str, path: str, *, content: bytes | None = None, json: Any = None,
                headers: dict[str, str] | None = None) -> StdlibResponse:
        """One request and its whole answer; ``httpx.ConnectError``/``ConnectTimeout`` when the server cannot
        be reached, ``httpx.ReadTimeout`` and ``httpx.RemoteProtocolError`` when the exchange breaks."""
        httpx = self._httpx
        sent = {**self.headers, **(headers or {})}
        if json is not None:
            content = _json.dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
            sent.setdefault("Content-Type", "application/json")
        conn = self._connection()
        connecting = conn.sock is None
        try:
            if connecting:
                conn.connect()
        except TimeoutError as e:
            conn.close()
            raise httpx.ConnectTimeout(f"timed out connecting to {self.host}:{self.port}: {e}") from None
        except OSError as e:
            conn.close()
            raise httpx.ConnectError(str(e)) from None
        try:
            conn.request(method, self.prefix + path, body=content, headers=sent)
            resp = conn.getresponse()
            body = resp.read()
        except TimeoutError as e:
            conn.close()
            raise httpx.ReadTimeout(f"timed out waiting for {self.host}:{self.port}: {e}") from None
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise httpx.RemoteProtocolError(f"{type(e).__name__}: {e}") from None
        encoding = (resp.headers.get("content-encoding") or "").lower()
        if encoding in ("gzip", "deflate"):  # asked for identity; a server may compress anyway
            try:
                body = zlib.decompress(body, 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
            except zlib.error as e:
                raise httpx.DecodingError(f"cannot decode the {encoding} answer: {e}") from None
        return StdlibResponse(resp.status, resp.reason, resp.headers, body)

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether an idle keep-alive socket has been closed (or written to) by the server: readable with nothing
    asked means EOF or stray bytes, and either way it cannot carry the next request."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
