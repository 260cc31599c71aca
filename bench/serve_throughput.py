"""Throughput and latency of ``modelsteal serve`` on loopback, undefended vs MAD, batching off vs on, in one run.

For each defense and each batching mode a real server process is started on 127.0.0.1 (SQLite ledger, WAL +
full sync, so every answered request is durable before it is answered), warmed up, then ``--clients`` threads
each send ``--requests`` ``POST /v1/predict`` requests of ``--rows`` rows (compact base64 float32) as fast as
they are answered. ``--batching off`` serves with ``--max-batch-delay-ms 0`` (each request its own batch),
``on`` with ``--delay-ms`` and ``--max-batch-rows``; ``both`` (the default) runs both and prints the ratios
with batching to without, per defense, and the ratios of each defense to the first::

    python bench/serve_throughput.py --clients 32 --rows 1                 # none vs MAD, batching off vs on
    python bench/serve_throughput.py --clients 1 --rows 1 --defenses none  # the latency batching adds
    python bench/serve_throughput.py --clients 50 --rows 16 --count-fsyncs # + fsyncs per answered row
    python bench/serve_throughput.py --upstream      # the gateway in front of MLServer (upstream_throughput.py)

``--count-fsyncs`` runs each server under ``strace --seccomp-bpf -e trace=fsync,fdatasync`` and counts the
durable flushes made while the timed requests were answered (startup and warm-up excluded), per answered row;
strace stops the server on each flush, so its timings are not comparable to a run without it.

The model is a randomly initialised classifier (no dataset needed): MAD's cost does not depend on how well
the victim was trained. Every answered row is checked against the ledger count at the end.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _http_load import closed_loop  # noqa: E402

from modelsteal.models import build_model, save_checkpoint  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--defenses", nargs="+", default=["none", "mad:epsilon=0.5"],
                   help="defense specs NAME[:k=v,k=v] (default: none mad:epsilon=0.5); ratios are to the first")
    p.add_argument("--arch", default="lenet", help="victim architecture (default lenet)")
    p.add_argument("--input-shape", default="1,28,28", help="C,H,W (default 1,28,28)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    p.add_argument("--requests", type=int, default=40, help="requests per client (default 40)")
    p.add_argument("--rows", type=int, default=1, help="rows (queries) per request (default 1)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up requests before timing (default 20)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server (default 1)")
    p.add_argument("--batching", choices=["on", "off", "both"], default="both",
                   help="serve with dynamic batching on, off, or both in one run (default both)")
    p.add_argument("--delay-ms", type=float, default=2.0, help="--max-batch-delay-ms when on (default 2)")
    p.add_argument("--max-batch-rows", type=int, default=256, help="--max-batch-rows when on (default 256)")
    p.add_argument("--count-fsyncs", action="store_true",
                   help="count the server's fsync/fdatasync calls per answered row (under strace)")
    args = p.parse_args(argv)
    if args.count_fsyncs and shutil.which("strace") is None:
        p.error("--count-fsyncs needs strace (apt-get install strace)")
    return args


def _spec(spec: str) -> tuple[str, list[str]]:
    name, _, opts = spec.partition(":")
    args: list[str] = []
    for kv in filter(None, opts.split(",")):
        args += ["--defense-option", kv]
    return name, args


class _Server:
    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.url = ""
        deadline = time.monotonic() + 120
        import httpx

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{log.read_text()}")
            m = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
            if m:
                try:
                    if httpx.get(m.group(1) + "/healthz", timeout=2).status_code == 200:
                        self.url = m.group(1)
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _body(x: torch.Tensor) -> dict[str, Any]:
    blob = x.numpy().astype("<f4").tobytes()
    return {"inputs": {"dtype": "float32", "shape": list(x.shape), "base64": base64.b64encode(blob).decode()}}


def _syncs(path: Path) -> int:
    """fsync/fdatasync calls strace has logged so far."""
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if "sync(" in line)
    except FileNotFoundError:
        return 0


def run_one(spec: str, *, args: argparse.Namespace, ckpt: Path, work: Path, batching: str) -> dict[str, float]:
    import httpx

    name, opts = _spec(spec)
    tag = re.sub(r"[^A-Za-z0-9]+", "_", spec) + "-" + batching
    store_url = str(work / f"ledger-{tag}.db")
    with open_store(store_url) as store:
        _, key = store.create_key(name="bench")
    delay = args.delay_ms if batching == "on" else 0.0
    argv = [sys.executable, "-m", "modelsteal", "serve", "--model", str(ckpt), "--store", store_url,
            "--port", "0", "--log-level", "warning", "--no-access-log", "--threads", str(args.threads),
            "--defense", name, *opts, "--max-batch-delay-ms", str(delay), "--max-batch-rows", str(args.max_batch_rows)]
    trace = work / f"strace-{tag}.txt"
    if args.count_fsyncs:
        argv = ["strace", "-f", "--seccomp-bpf", "-e", "trace=fsync,fdatasync", "-o", str(trace), *argv]
    server = _Server(argv, work / f"server-{tag}.log")
    shape = tuple(int(s) for s in args.input_shape.split(","))
    headers = {"Authorization": f"Bearer {key}"}
    try:
        bodies = [_body(torch.rand(args.rows, *shape, generator=torch.Generator().manual_seed(i)))
                  for i in range(16)]
        latencies, wall, synced = closed_loop(server.url + "/v1/predict", bodies, headers=headers,
                                              clients=args.clients, requests=args.requests, warmup=args.warmup,
                                              at_start=lambda: _syncs(trace))
        synced = _syncs(trace) - synced
        used = httpx.get(server.url + "/v1/usage", headers=headers, timeout=10).json()["queries"]
    finally:
        server.stop()
    n = args.clients * args.requests
    expected = (n + args.warmup) * args.rows
    if used != expected:
        raise RuntimeError(f"ledger counts {used} queries, {expected} were answered")
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"rps": n / wall, "rows_s": n * args.rows / wall, "p50": q[49] * 1e3, "p99": q[98] * 1e3,
            "fsyncs_per_row": synced / (n * args.rows) if args.count_fsyncs else float("nan")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--upstream" in argv:  # the gateway in front of MLServer: bench/upstream_throughput.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from upstream_throughput import main as upstream_main

        return upstream_main([a for a in argv if a != "--upstream"])
    args = parse_args(argv)
    shape = tuple(int(s) for s in args.input_shape.split(","))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="modelsteal-bench-") as tmp:
        work = Path(tmp)
        model = build_model(args.arch, input_shape=shape, num_classes=args.classes, seed=0)
        ckpt = save_checkpoint(model, work / "victim.pt", dataset="synthetic")
        modes = ["off", "on"] if args.batching == "both" else [args.batching]
        print(f"modelsteal serve on loopback: {args.arch} {shape} -> {args.classes} classes, {args.clients} clients x "
              f"{args.requests} requests x {args.rows} row(s), server torch threads {args.threads}, "
              f"SQLite ledger (WAL, synchronous=FULL), {os.cpu_count()} CPUs; batching {'/'.join(modes)} "
              f"(on: --max-batch-delay-ms {args.delay_ms:g} --max-batch-rows {args.max_batch_rows})"
              + ("; fsyncs counted under strace" if args.count_fsyncs else ""))
        results = {(spec, mode): run_one(spec, args=args, ckpt=ckpt, work=work, batching=mode)
                   for spec in args.defenses for mode in modes}
    print(f"{'defense':<24}{'batching':>9}{'req/s':>10}{'rows/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
          + (f"{'fsync/row':>11}" if args.count_fsyncs else ""))
    for (spec, mode), r in results.items():
        print(f"{spec:<24}{mode:>9}{r['rps']:>10.1f}{r['rows_s']:>10.1f}{r['p50']:>10.2f}{r['p99']:>10.2f}"
              + (f"{r['fsyncs_per_row']:>11.3f}" if args.count_fsyncs else ""))
    if len(modes) == 2:
        for spec in args.defenses:
            off, on = results[(spec, "off")], results[(spec, "on")]
            print(f"batching on / off, {spec}: rows/s {on['rows_s'] / off['rows_s']:.2f}x, "
                  f"p50 {on['p50'] - off['p50']:+.2f} ms ({on['p50'] / off['p50']:.2f}x), "
                  f"p99 {on['p99'] / off['p99']:.2f}x"
                  + (f", fsyncs per row {off['fsyncs_per_row']:.3f} -> {on['fsyncs_per_row']:.3f}"
                     if args.count_fsyncs else ""))
    base_spec = args.defenses[0]
    for spec in args.defenses[1:]:
        for mode in modes:
            r, base = results[(spec, mode)], results[(base_spec, mode)]
            print(f"ratio {spec} / {base_spec} (batching {mode}): throughput {r['rps'] / base['rps']:.3f}x, "
                  f"p50 latency {r['p50'] / base['p50']:.2f}x, p99 latency {r['p99'] / base['p99']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
