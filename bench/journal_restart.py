"""Restart time of a PRADA server before and after journal compaction, measured in one run.

Issue 29's "crash recovery that stays bounded": a server with ``--detector prada`` keeps each client's state as a
journal in its store; after a restart, the first request of each client replays that client's journal. This
bench makes the journals of ``--clients`` clients that together sent ``--queries`` PRADA queries (requests of
``--rows`` rows, answered in batches of ``--batch`` requests mixing the clients, through the server's own
:class:`~modelsteal.serve.batcher.BatchRunner` on a SQLite store with WAL and synchronous=FULL), once without
compaction and once with a snapshot every ``--snapshot-every`` entries, and then times the restart: a fresh
process opening each store and rebuilding every client's state (what the restarted server does before it can
answer each client). It checks the two rebuilt states are equal to the live ones and prints both times, the
journal sizes and their ratio::

    python bench/journal_restart.py                         # 10 clients, 100,000 queries, snapshot every 1000
    python bench/journal_restart.py --queries 20000 --snapshot-every 256

Queries are 1x8x8 points drawn around ten prototypes (so PRADA's class sets grow as it admits them), answered by
a randomly initialised MLP: the journal's size and replay cost do not depend on how well the victim is trained.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from modelsteal import PredictionAPI
from modelsteal.detectors import make_detector
from modelsteal.models import build_model
from modelsteal.serve.batcher import BatchRunner, Job
from modelsteal.serve.detector_state import DetectorJournal
from modelsteal.serve.store import open_store

SHAPE = (1, 8, 8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--queries", type=int, default=100_000, help="PRADA queries of all clients together")
    p.add_argument("--rows", type=int, default=4, help="rows per request (default 4)")
    p.add_argument("--batch", type=int, default=16, help="requests per server batch (default 16)")
    p.add_argument("--snapshot-every", type=int, default=1000, help="compaction: a snapshot every N entries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--restore", nargs=2, metavar=("STORE", "OUT"), help=argparse.SUPPRESS)  # the timed child
    return p.parse_args(argv)


def _api(seed: int) -> PredictionAPI:
    """A random MLP behind PRADA. Its Shapiro-Wilk test never runs here (``min_stream`` beyond the streams): the
    test reads the state but does not change it, so the journal is the one a server would write, made faster."""
    victim = build_model("mlp", input_shape=SHAPE, num_classes=10, seed=seed).eval()
    det = make_detector("prada", min_stream=10**9, delta=0.9).fit(victim, None)
    return PredictionAPI(victim, detector=det)


def make_journal(store_url: str, *, args: argparse.Namespace, snapshot_every: int | None) -> dict[str, dict]:
    """Feed every client's stream through a BatchRunner into ``store_url``; the live states, per client."""
    api = _api(args.seed)
    with open_store(store_url) as store:
        clients = [store.create_key(name=f"c{i}")[0] for i in range(args.clients)]
        journal = DetectorJournal(api.detector, store, snapshot_every=snapshot_every)
        runner = BatchRunner(api, store, journal=journal, lock=threading.Lock())
        g = torch.Generator().manual_seed(args.seed)
        prototypes = torch.rand(10, *SHAPE, generator=g)
        n_requests = args.queries // args.rows
        jobs = []
        for r in range(n_requests):
            x = (prototypes[torch.randint(0, 10, (args.rows,), generator=g)]
                 + 0.15 * torch.randn(args.rows, *SHAPE, generator=g)).clamp(0, 1)
            jobs.append(Job(clients[r % args.clients], x))
            if len(jobs) == args.batch or r == n_requests - 1:
                runner.run(jobs)
                if any(j.error is not None for j in jobs):
                    raise RuntimeError(next(j.error for j in jobs if j.error is not None))
                jobs = []
    return {c.name: api.detector.state_dict(c.name) for c in clients}


def restore(store_url: str, out: str) -> None:
    """The timed part, in a fresh process: open the store, rebuild every client's state, write the states."""
    t0 = time.perf_counter()
    api = _api(0)
    with open_store(store_url) as store:
        journal = DetectorJournal(api.detector, store)
        clients = store.clients()
        for c in clients:
            journal.load(c.id, c.name)
    elapsed = time.perf_counter() - t0
    torch.save({"seconds": elapsed, "states": {c.name: api.detector.state_dict(c.name) for c in clients}}, out)


def journal_size(store_url: str) -> tuple[int, int]:
    import sqlite3

    with sqlite3.connect(store_url) as db:
        n, size = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM detector_state").fetchone()
    return int(n), int(size)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.restore:
        restore(*args.restore)
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    results = {}
    with tempfile.TemporaryDirectory(prefix="modelsteal-journal-") as tmp:
        for label, every in (("no compaction", None), (f"snapshot every {args.snapshot_every}", args.snapshot_every)):
            url = str(Path(tmp) / f"{'plain' if every is None else 'compact'}.db")
            t0 = time.perf_counter()
            live = make_journal(url, args=args, snapshot_every=every)
            made = time.perf_counter() - t0
            out = str(Path(tmp) / "restored.pt")
            t1 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--restore", url, out], check=True, env=env)
            process = time.perf_counter() - t1
            restored = torch.load(out)
            if restored["states"] != live:
                raise RuntimeError(f"{label}: the restored states differ from the live ones")
            results[label] = {"made": made, "restore": restored["seconds"], "process": process,
                              "entries": journal_size(url)}
    print(f"PRADA journals of {args.clients} clients, {args.queries} queries in requests of {args.rows} rows, "
          f"batches of {args.batch} requests; SQLite (WAL, synchronous=FULL); {os.cpu_count()} CPUs")
    print(f"{'journal':<28}{'entries':>9}{'MB':>8}{'restore s':>11}{'process s':>11}{'build s':>9}")
    for label, r in results.items():
        n, size = r["entries"]
        print(f"{label:<28}{n:>9}{size / 1e6:>8.1f}{r['restore']:>11.2f}{r['process']:>11.2f}{r['made']:>9.1f}")
    before, after = results.values()
    print(f"restart with compaction / without: {after['restore'] / before['restore']:.3f}x "
          f"({before['restore']:.2f} s -> {after['restore']:.2f} s to rebuild every client's state; "
          f"'process s' adds the interpreter and torch start-up); restored states equal the live ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
