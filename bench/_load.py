"""A light HTTP/1.1 load generator for the serving benchmarks (``serve_throughput.py``, ``upstream_throughput.py``).

``clients`` keep-alive connections, each sending its requests one after the other as fast as they are
answered (a closed loop, like the ``--clients`` threads of a real client pool), from one asyncio event loop
(uvloop when installed) with the requests' bytes built once. A thread-per-client client written with a full
HTTP library costs the load generator about as much CPU per request as the server it measures, and on a
small machine the two share the cores: the numbers would then measure the client. This one spends a few tens
of microseconds per request, parses only the status line and ``Content-Length`` (or chunked framing), and
records each request's latency from its first byte written to its last byte read.

    stats = run_load("http://127.0.0.1:8000", "/v1/predict", bodies, headers={"Authorization": "Bearer k"},
                     clients=32, requests=100)
    stats.wall, stats.latencies, stats.errors
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any
from urllib.parse import urlsplit


@dataclasses.dataclass
class LoadStats:
    """What one load run measured: its wall time (first request sent to last answer read, seconds), every
    request's latency (seconds), and the first failures (``"status: body"``)."""

    wall: float
    latencies: list[float]
    errors: list[str]


def request_bytes(host: str, path: str, body: bytes, headers: dict[str, str],
                  content_type: str = "application/json") -> bytes:
    """One HTTP/1.1 ``POST`` (keep-alive) as bytes."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = None, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        return status, await reader.readexactly(length)
    if not chunked:
        raise RuntimeError("response without Content-Length or chunked encoding")
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _run(url: str, path: str, bodies: list[bytes], *, headers: dict[str, str], clients: int, requests: int,
               content_type: str) -> LoadStats:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payloads = [request_bytes(f"{host}:{port}", path, b, headers, content_type) for b in bodies]
    conns = [await asyncio.open_connection(host, port) for _ in range(clients)]
    latencies: list[float] = []
    errors: list[str] = []

    async def client(c: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(requests):
            t0 = time.perf_counter()
            writer.write(payloads[(c + i) % len(payloads)])
            status, body = await _read_response(reader)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(f"{status}: {body[:200].decode(errors='replace')}")
                return

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c, r, w) for c, (r, w) in enumerate(conns)))
    wall = time.perf_counter() - t0
    for _, w in conns:
        w.close()
    return LoadStats(wall=wall, latencies=latencies, errors=errors)


def run_load(url: str, path: str, bodies: list[Any], *, headers: dict[str, str], clients: int, requests: int,
             content_type: str = "application/json") -> LoadStats:
    """Send ``clients`` x ``requests`` POSTs of ``bodies`` (JSON-able objects or bytes, used in turn) to
    ``url`` + ``path``; see the module docstring."""
    raw = [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_run(url, path, raw, headers=headers, clients=clients, requests=requests,
                       content_type=content_type))
