"""Closed-loop HTTP load for the serving benchmarks: ``clients`` threads, each posting ``requests`` bodies in turn
to one URL as soon as its previous answer came, started together by a barrier."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


def closed_loop(url: str, bodies: list[dict[str, Any]], *, headers: dict[str, str], clients: int, requests: int,
                warmup: int = 0, at_start: Callable[[], Any] | None = None) -> tuple[list[float], float, Any]:
    """``warmup`` requests first (their errors raise), then the load: each request's latency in seconds, the wall
    time from the barrier to the last thread's end, and what ``at_start()`` returned just before the barrier (a
    counter to difference, for instance). A non-200 answer stops its thread; any is a ``RuntimeError`` after."""
    import httpx

    with httpx.Client(headers=headers, timeout=60) as http:
        for i in range(warmup):
            http.post(url, json=bodies[i % len(bodies)]).raise_for_status()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        mine: list[float] = []
        with httpx.Client(headers=headers, timeout=60) as http:
            start.wait()
            for i in range(requests):
                t0 = time.perf_counter()
                r = http.post(url, json=bodies[(c + i) % len(bodies)])
                mine.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    with lock:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                    return
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    started = at_start() if at_start is not None else None
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests to {url} failed, e.g. {errors[0]}")
    return latencies, wall, started
