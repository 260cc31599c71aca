"""HTTPBlackBox's lean client (serve/transport.py) against a real HTTP/1.1 server on loopback: keep-alive reuse,
a connection the server closed while idle, one connection per thread, compressed answers, and httpx's exceptions
for what breaks."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from modelsteal.serve.transport import StdlibHTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.client_address[1], self.path, body, dict(self.headers)))
        if self.path == "/slow":
            time.sleep(1.0)
        payload = json.dumps({"port": self.client_address[1], "echo": body.decode()}).encode()
        headers = {"Content-Type": "application/json"}
        if self.path == "/gzip":
            payload, headers["Content-Encoding"] = gzip.compress(payload), "gzip"
        self.send_response(200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        if self.path == "/close-after":  # keep-alive promised, then the server drops the idle connection
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[int, str, bytes, dict[str, str]]]


@contextmanager
def _server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_one_kept_alive_connection_carries_a_thread_s_requests_with_the_default_headers() -> None:
    with _server() as srv:
        http = StdlibHTTP(_url(srv) + "/api", timeout=5.0, headers={"Authorization": "Bearer k"})
        ports = {http.request("POST", "/x", content=b"abc").json()["port"] for _ in range(5)}
        r = http.request("POST", "/y", json={"a": 1}, headers={"X-Extra": "1"})
    assert len(ports) == 1 and r.json()["port"] in ports  # no reconnect between requests
    assert [s[1] for s in srv.seen] == ["/api/x"] * 5 + ["/api/y"]  # the base URL's path prefixes every path
    headers = srv.seen[-1][3]
    assert headers["Authorization"] == "Bearer k" and headers["X-Extra"] == "1"
    assert headers["Content-Type"] == "application/json" and srv.seen[-1][2] == b'{"a":1}'  # httpx's encoding
    with pytest.raises(ValueError):  # as httpx: NaN is not JSON
        http.request("POST", "/y", json={"a": float("nan")})
    http.close()


def test_a_connection_the_server_closed_while_idle_is_reopened_not_an_error() -> None:
    with _server() as srv:
        http = StdlibHTTP(_url(srv), timeout=5.0)
        first = http.request("POST", "/close-after", content=b"1").json()["port"]
        time.sleep(0.2)  # the server has closed its end by now
        second = http.request("POST", "/x", content=b"2")  # without the idle check: RemoteProtocolError
        http.close()
    assert second.status_code == 200 and second.json()["echo"] == "2"
    assert second.json()["port"] != first


def test_threads_never_share_a_connection() -> None:
    with _server() as srv:
        http = StdlibHTTP(_url(srv), timeout=5.0)
        ports: dict[int, set[int]] = {}

        def work(i: int) -> None:
            ports[i] = {http.request("POST", "/x", content=str(i).encode()).json()["port"] for _ in range(20)}

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        http.close()
    assert all(len(p) == 1 for p in ports.values())  # each thread kept its own connection alive
    assert len(set().union(*ports.values())) == 4  # and no two threads used the same one
    assert sorted(s[2] for s in srv.seen) == sorted(str(i).encode() for i in range(4) for _ in range(20))


def test_a_gzip_answer_is_decoded() -> None:
    with _server() as srv:
        http = StdlibHTTP(_url(srv), timeout=5.0)
        r = http.request("POST", "/gzip", content=b"zipped")
        http.close()
    assert r.json()["echo"] == "zipped"


def test_failures_are_httpx_exceptions_the_black_box_already_handles() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(httpx.ConnectError):
        StdlibHTTP(f"http://127.0.0.1:{port}", timeout=2.0).request("GET", "/")
    with _server() as srv:
        http = StdlibHTTP(_url(srv), timeout=0.2)
        with pytest.raises(httpx.ReadTimeout):
            http.request("POST", "/slow", content=b"")
        http.close()
    with pytest.raises(ValueError, match="plain http"):
        StdlibHTTP("https://example.org", timeout=1.0)
