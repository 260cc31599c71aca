"""PRADA's per-query detection cost against the client's history, and the server's throughput with and without it.

Three measurements, in one run, printed as ratios:

1. **Crossover**: the exact minimum distance from one query (and from a batch of 64) to a class set of ``m``
   members, by chunked float64 ``cdist`` (``index=torch``) and by faiss candidates + exact re-ranking
   (``index=faiss``), for growing ``m``: where faiss starts to win (``_FAISS_MIN`` in ``prada.py``).
2. **Per-query cost at client histories** of 1K, 10K and 50K queries: one client's stream (ten classes, queries
   drawn around ten prototypes, so the class sets grow as PRADA admits queries) is fed up to each history, then
   single-row queries (and batches of 64) are timed with each index; the cost is split into the nearest-member
   search and the Shapiro-Wilk test on the distance stream (each the fastest of ``--repeats`` calls). Ratios
   are to the 1K history.
3. **Server throughput**: ``/v1/predict`` through the FastAPI app in process (httpx's ASGI transport, SQLite
   store with WAL and synchronous=FULL), ``--clients`` keys sending ``--requests`` requests of ``--rows`` rows
   concurrently, with no detector and with PRADA (its per-client state loaded from and saved to the store
   around every request); ratio of the two.

::

    python bench/prada_cost.py                               # 1x28x28 inputs, histories 1K 10K 50K
    python bench/prada_cost.py --histories 1000 10000 --input-shape 1,8,8 --requests 100

The victim is a randomly initialised LeNet (the cost does not depend on how well it was trained); PRADA's scores
in part 2 get one-hot posteriors of the prototype a query was drawn around, so no model runs there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelsteal.data import DatasetSplits
from modelsteal.detectors import make_detector
from modelsteal.detectors import prada as prada_module

CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-shape", default="1,28,28", help="C,H,W (default 1,28,28)")
    p.add_argument("--histories", type=int, nargs="+", default=[1000, 10_000, 50_000],
                   help="client histories (queries) at which the per-query cost is measured; ratios to the first")
    p.add_argument("--repeats", type=int, default=50, help="timed single-row queries per history (default 50)")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024, 4096, 16384],
                   help="class-set sizes for the crossover (default 16 .. 16384)")
    p.add_argument("--clients", type=int, default=4, help="server: concurrent keys (default 4)")
    p.add_argument("--requests", type=int, default=150, help="server: requests per key (default 150)")
    p.add_argument("--rows", type=int, default=1, help="server: rows per request (default 1)")
    p.add_argument("--skip-server", action="store_true", help="only parts 1 and 2")
    return p.parse_args(argv)


def _timed(fn: Any, repeats: int) -> float:
    """Fastest of ``repeats`` calls of ``fn``, in seconds, after one warm-up call (the best of several is what
    stays put on a machine shared with other jobs; a median would measure their load too)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


# -- 1. crossover --------------------------------------------------------------------------------------------
def crossover(dim: int, sizes: list[int]) -> list[dict[str, float]]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for m in sizes:
        cls = prada_module._ClassSet(torch.rand(m, dim, generator=g), [], 0.0)
        one, batch = torch.rand(1, dim, generator=g), torch.rand(64, dim, generator=g)
        out = {"m": m}
        for index in ("torch", "faiss"):
            reps = 20 if m <= 4096 else 5
            out[f"{index}_1"] = _timed(lambda c=cls, q=one, i=index: c.nearest(q, index=i), reps)
            out[f"{index}_64"] = _timed(lambda c=cls, q=batch, i=index: c.nearest(q, index=i), max(2, reps // 4)) / 64
        assert torch.equal(cls.nearest(batch, index="torch"), cls.nearest(batch, index="faiss"))
        rows.append(out)
    return rows


# -- 2. per-query cost at client histories ---------------------------------------------------------------
class _Stream:
    """Queries drawn around ten prototypes (Gaussian, std 0.15, clipped to [0, 1]), one-hot posteriors."""

    def __init__(self, dim: int, *, seed: int = 0) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.protos = torch.rand(CLASSES, dim, generator=self.g)
        self.dim = dim

    def take(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(CLASSES, (n,), generator=self.g)
        x = (self.protos[labels] + 0.15 * torch.randn(n, self.dim, generator=self.g)).clamp(0, 1)
        return x, nn.functional.one_hot(labels, CLASSES).float()


def _detector(dim: int) -> prada_module.PRADA:
    model = nn.Sequential(nn.Flatten(), nn.Linear(dim, CLASSES))
    x, y = torch.zeros(2, dim), torch.arange(2)
    data = DatasetSplits(name="bench", x_train=x, y_train=y, x_val=x, y_val=y, x_test=x, y_test=y, num_classes=CLASSES)
    return make_detector("prada", index="faiss").fit(model, data)


def history_costs(dim: int, histories: list[int], *, repeats: int) -> list[dict[str, float]]:
    stream, det = _Stream(dim), _detector(dim)
    fed, rows = 0, []
    for h in histories:
        t0 = time.perf_counter()
        while fed < h:
            x, p = stream.take(min(4096, h - fed))
            det.score(x, p, client="c")
            fed += len(x)
        feed_s = time.perf_counter() - t0
        state = det._clients["c"]
        out: dict[str, float] = {"history": h, "members": sum(c.n for c in state.classes.values()),
                                 "feed_s": feed_s}
        for index in ("torch", "faiss"):
            det.index = index
            for cls in state.classes.values():  # build every class's faiss index before timing
                cls.nearest(cls.members[:1], index=index)
            xs, ps = stream.take(repeats + 1)
            rows_left = iter(range(repeats + 1))

            def one_query(xs=xs, ps=ps, rows_left=rows_left) -> None:
                i = next(rows_left)  # a new query each call: the history grows by one
                det.score(xs[i:i + 1], ps[i:i + 1], client="c")

            out[f"{index}_query"] = _timed(one_query, repeats)
            xb, pb = stream.take(64)
            t0 = time.perf_counter()
            det.score(xb, pb, client="c")
            out[f"{index}_batch64"] = (time.perf_counter() - t0) / 64
            fed += repeats + 1 + 64
            one = xs[-1:]
            cls = state.classes[int(ps[-1].argmax())]
            out[f"{index}_search"] = _timed(lambda c=cls, q=one, i=index: c.nearest(q, index=i), repeats)
        out["shapiro"] = _timed(lambda s=state: prada_module.shapiro_w(s.stream(), ordered=s.ordered()),
                                max(5, repeats // 3))
        rows.append(out)
    return rows


# -- 3. server throughput ----------------------------------------------------------------------------------
def _body(x: torch.Tensor) -> dict[str, Any]:
    blob = x.numpy().astype("<f4").tobytes()
    return {"inputs": {"dtype": "float32", "shape": list(x.shape), "base64": base64.b64encode(blob).decode()}}


def server_throughput(shape: tuple[int, ...], *, detector: bool, args: argparse.Namespace, work: Path) -> dict:
    import httpx

    from modelsteal import PredictionAPI
    from modelsteal.models import build_model
    from modelsteal.serve.app import create_app
    from modelsteal.serve.store import open_store

    model = build_model("lenet", input_shape=shape, num_classes=CLASSES, seed=0).eval()
    det = None
    if detector:
        dim = math.prod(shape)
        x, y = torch.zeros(2, *shape), torch.arange(2)
        data = DatasetSplits(name="bench", x_train=x, y_train=y, x_val=x, y_val=y, x_test=x, y_test=y,
                             num_classes=CLASSES)
        det = make_detector("prada").fit(model, data)
        assert dim > 0
    store = open_store(work / f"ledger-{'prada' if detector else 'none'}.db")
    keys = [store.create_key(name=f"c{i}")[1] for i in range(args.clients)]
    app = create_app(PredictionAPI(model, detector=det), store=store)
    g = torch.Generator().manual_seed(1)
    bodies = [_body(torch.rand(args.rows, *shape, generator=g)) for _ in range(32)]
    latencies: list[float] = []

    async def client(c: int, http: httpx.AsyncClient) -> None:
        auth = {"Authorization": f"Bearer {keys[c]}"}
        for i in range(args.requests):
            t0 = time.perf_counter()
            r = await http.post("/v1/predict", json=bodies[(7 * c + i) % len(bodies)], headers=auth)
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()

    async def run() -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=120) as http:
            t0 = time.perf_counter()
            await asyncio.gather(*(client(c, http) for c in range(args.clients)))
            return time.perf_counter() - t0

    wall = asyncio.run(run())
    total = sum(c.queries for c in store.clients())
    store.close()
    n = args.clients * args.requests
    if total != n * args.rows:
        raise RuntimeError(f"ledger counts {total} queries, {n * args.rows} were answered")
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"rps": n / wall, "p50": q[49] * 1e3, "p99": q[98] * 1e3}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = tuple(int(s) for s in args.input_shape.split(","))
    dim = math.prod(shape)
    torch.set_num_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        print("faiss-cpu is not installed: pip install 'modelsteal[faiss]'", file=sys.stderr)
        return 2
    print(f"PRADA cost, inputs {shape} ({dim} values), 1 torch thread, 1 faiss thread, {os.cpu_count()} CPUs")

    print("\n1. exact nearest-member search, ms per query, by class-set size m")
    print(f"{'m':>8}{'torch 1':>11}{'faiss 1':>11}{'torch/64':>11}{'faiss/64':>11}{'speed-up 1':>12}")
    for r in crossover(dim, args.sizes):
        print(f"{r['m']:>8}{r['torch_1'] * 1e3:>11.3f}{r['faiss_1'] * 1e3:>11.3f}{r['torch_64'] * 1e3:>11.3f}"
              f"{r['faiss_64'] * 1e3:>11.3f}{r['torch_1'] / r['faiss_1']:>11.1f}x")
    print(f"   (auto uses faiss from m >= {prada_module._FAISS_MIN}; both give the same distances, checked)")

    print("\n2. per-query detection cost (score of one row), ms, by client history")
    rows = history_costs(dim, args.histories, repeats=args.repeats)
    print(f"{'history':>8}{'|G|':>8}{'torch':>10}{'faiss':>10}{'faiss/64':>10}{'search f':>10}{'search t':>10}"
          f"{'shapiro':>10}")
    for r in rows:
        print(f"{r['history']:>8}{r['members']:>8}{r['torch_query'] * 1e3:>10.3f}{r['faiss_query'] * 1e3:>10.3f}"
              f"{r['faiss_batch64'] * 1e3:>10.3f}{r['faiss_search'] * 1e3:>10.3f}{r['torch_search'] * 1e3:>10.3f}"
              f"{r['shapiro'] * 1e3:>10.3f}")
    b = rows[0]
    for r in rows[1:]:
        print(f"ratio {r['history']} / {b['history']}: per-query cost "
              f"torch {r['torch_query'] / b['torch_query']:.2f}x, faiss {r['faiss_query'] / b['faiss_query']:.2f}x "
              f"(search {r['faiss_search'] / b['faiss_search']:.2f}x, "
              f"Shapiro-Wilk {r['shapiro'] / b['shapiro']:.2f}x); "
              f"faiss vs torch {r['torch_query'] / r['faiss_query']:.1f}x")

    if not args.skip_server:
        print(f"\n3. server /v1/predict in process, LeNet {shape}, {args.clients} keys x {args.requests} requests x "
              f"{args.rows} row(s), SQLite store")
        with tempfile.TemporaryDirectory(prefix="modelsteal-bench-") as tmp:
            plain = server_throughput(shape, detector=False, args=args, work=Path(tmp))
            prada = server_throughput(shape, detector=True, args=args, work=Path(tmp))
        for name, r in (("none", plain), ("prada", prada)):
            print(f"{name:<8}{r['rps']:>10.1f} req/s  p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms")
        print(f"ratio prada / none: throughput {prada['rps'] / plain['rps']:.3f}x, p50 latency "
              f"{prada['p50'] / plain['p50']:.2f}x")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
