"""The gateway's cost: ``modelsteal serve --upstream`` in front of Seldon MLServer against MLServer called
directly, measured in one run (``python bench/serve_throughput.py --upstream`` runs this).

MLServer (from ``.venv-mlserver``, ``make mlserver``) serves a logistic regression of the digits (64 features,
joblib, trained by MLServer's own Python); the gateway is a ``modelsteal serve --upstream`` process (SQLite
ledger, WAL + full sync). ``--clients`` connections each send ``--requests`` requests of ``--rows`` rows as fast
as they are answered, to:

- MLServer directly (``POST /v2/models/NAME/infer``, JSON data);
- the gateway's ``/v2`` (the same JSON request, plus a key) and its ``/v1/predict`` (compact base64), with no
  defense and with reverse sigmoid (beta 0.5).

It prints rows/s and p50/p99 latency per target, and for each gateway the throughput ratio to MLServer and the
p50 it adds. Every answered row is checked against the gateway's ledger count::

    python bench/serve_throughput.py --upstream                      # 16 clients x 16 rows
    python bench/upstream_throughput.py --clients 16 --rows 16 --requests 60
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import mlserver_helpers as mls  # noqa: E402
from serve_helpers import ServerProcess  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import run_load  # noqa: E402

from modelsteal.data import load_dataset  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16, help="concurrent client connections (default 16)")
    p.add_argument("--rows", type=int, default=16, help="rows per request (default 16)")
    p.add_argument("--requests", type=int, default=40, help="requests per client (default 40)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up requests per target (default 20)")
    p.add_argument("--delay-ms", type=float, default=2.0,
                   help="the gateway's --max-batch-delay-ms (default 2; 0 turns its batching off)")
    p.add_argument("--ledger-sync", choices=["full", "normal"], default="full",
                   help="the gateway's --ledger-sync (default full: a flush per batch before it is answered)")
    p.add_argument("--batch-workers", type=int, default=1, help="the gateway's --batch-workers (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every target this many times, interleaved, and keep each one's best (default 1)")
    return p.parse_args(argv)


def _v2_body(x: torch.Tensor, name: str) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}


def _v1_body(x: torch.Tensor) -> dict[str, Any]:
    blob = x.numpy().astype("<f4").tobytes()
    return {"inputs": {"dtype": "float32", "shape": list(x.shape), "base64": base64.b64encode(blob).decode()}}


def measure(url: str, bodies: list[dict[str, Any]], *, headers: dict[str, str], args: argparse.Namespace,
            ) -> dict[str, float]:
    """rows/s, p50 and p99 (ms) of ``--clients`` connections posting ``bodies`` to ``url`` (after a warm-up)."""
    parts = urlsplit(url)
    base, path = f"{parts.scheme}://{parts.netloc}", parts.path
    warm = run_load(base, path, bodies, headers=headers, clients=1, requests=args.warmup)
    stats = run_load(base, path, bodies, headers=headers, clients=args.clients, requests=args.requests)
    errors = warm.errors + stats.errors
    if errors:
        raise RuntimeError(f"{len(errors)} requests to {url} failed, e.g. {errors[0]}")
    q = statistics.quantiles(stats.latencies, n=100, method="inclusive")
    n = args.clients * args.requests
    return {"rows_s": n * args.rows / stats.wall, "p50": q[49] * 1e3, "p99": q[98] * 1e3}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not mls.available():
        print(f"upstream benchmark skipped: {mls.SKIP_REASON}", file=sys.stderr)
        return 2
    data = load_dataset("digits")
    xs = [data.x_test[i * args.rows:(i + 1) * args.rows] for i in range(16)]
    with tempfile.TemporaryDirectory(prefix="modelsteal-bench-upstream-") as tmp:
        work = Path(tmp)
        model = mls.train_model(work / "mlserver", data.x_train.reshape(len(data.x_train), -1).numpy(),
                                data.y_train.numpy())
        with mls.MLServerProcess(work / "mlserver", model) as upstream:
            gateways: dict[str, tuple[ServerProcess, str]] = {}
            try:
                for defense in ("none", "reverse-sigmoid"):
                    store_url = str(work / f"ledger-{defense}.db")
                    with open_store(store_url) as store:
                        key = store.create_key(name="bench")[1]
                    extra = ["--strength", "0.5"] if defense != "none" else []
                    srv = ServerProcess(model=work / "unused", store=store_url, log_path=work / f"gw-{defense}.log",
                                        args=["--upstream", upstream.endpoint, "--dataset", "digits", "--defense",
                                              defense, *extra, "--eval-size", "0", "--ledger-sync", args.ledger_sync,
                                              "--batch-workers", str(args.batch_workers),
                                              "--max-batch-delay-ms", str(args.delay_ms)])
                    i = srv.argv.index("--model")
                    del srv.argv[i:i + 2]
                    gateways[defense] = (srv.start(), key)
                targets: dict[str, tuple[str, list[dict[str, Any]], dict[str, str]]] = {
                    "mlserver direct (v2)": (upstream.endpoint + "/infer",
                                             [_v2_body(x.reshape(len(x), -1), "input-0") for x in xs], {}),
                }
                pids: dict[str, int | None] = {"mlserver direct (v2)": None}
                for defense, (srv, key) in gateways.items():
                    auth = {"Authorization": f"Bearer {key}"}
                    targets[f"gateway v2, {defense}"] = (srv.url + f"/v2/models/{mls.MODEL_NAME}/infer",
                                                         [_v2_body(x, "input") for x in xs], auth)
                    targets[f"gateway v1, {defense}"] = (srv.url + "/v1/predict", [_v1_body(x) for x in xs], auth)
                    pids[f"gateway v2, {defense}"] = pids[f"gateway v1, {defense}"] = srv.proc.pid
                print(f"gateway (modelsteal serve --upstream) in front of MLServer {mls.MODEL_NAME} (logistic "
                      f"regression, 64 features) on loopback: {args.clients} clients x {args.requests} requests x "
                      f"{args.rows} rows, best of {args.rounds} round(s); gateway --ledger-sync {args.ledger_sync}",
                      flush=True)
                results: dict[str, dict[str, float]] = {}
                for _ in range(args.rounds):
                    for name, (url, bodies, headers) in targets.items():
                        gw = pids[name]
                        cpu0 = (_cpu_seconds(upstream.proc.pid), _cpu_seconds(gw) if gw else 0.0)
                        r = measure(url, bodies, headers=headers, args=args)
                        k_rows = (args.clients * args.requests + args.warmup) * args.rows / 1000
                        r["cpu_up"] = (_cpu_seconds(upstream.proc.pid) - cpu0[0]) * 1e3 / k_rows
                        r["cpu_gw"] = ((_cpu_seconds(gw) - cpu0[1]) * 1e3 / k_rows) if gw else 0.0
                        best = results.get(name)
                        if best is None or r["rows_s"] > best["rows_s"]:
                            results[name] = r
                for defense, (srv, _key) in gateways.items():
                    with open_store(srv.argv[srv.argv.index("--store") + 1]) as store:
                        used = store.clients()[0].queries
                    want = 2 * args.rounds * (args.clients * args.requests + args.warmup) * args.rows
                    if used != want:
                        raise RuntimeError(f"gateway {defense}: the ledger counts {used} rows, {want} were answered")
            finally:
                for srv, _ in gateways.values():
                    srv.stop()
    print(f"{'target':<32}{'rows/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'x direct':>10}{'+p50 ms':>10}"
          f"{'CPU ms/1k rows: mlserver':>26}{'gateway':>9}")
    base = results["mlserver direct (v2)"]
    for name, r in results.items():
        print(f"{name:<32}{r['rows_s']:>10.1f}{r['p50']:>10.2f}{r['p99']:>10.2f}"
              f"{r['rows_s'] / base['rows_s']:>10.3f}{r['p50'] - base['p50']:>10.2f}"
              f"{r['cpu_up']:>26.1f}{r['cpu_gw']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
