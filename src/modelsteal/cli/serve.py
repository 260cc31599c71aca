"""``modelsteal serve``: serve a checkpoint behind a defense, API keys, budgets and a durable ledger.

Example::

    modelsteal keys create --store ledger.db --name alice --budget 10000
    modelsteal serve --model runs/demo/victim.pt --defense mad --defense-option epsilon=0.5 \\
        --store ledger.db --port 8000
    modelsteal serve --model runs/demo/victim.pt --detector prada --response refuse --store ledger.db
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any

from modelsteal.cli._common import add_model_flags, model_spec, number, parse_options

# Below this fraction of test answers keeping the undefended top-1 label, serve warns that the setting
# flips most labels (the API is then of little use to honest clients).
MIN_LABEL_AGREEMENT = 0.5


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve a checkpoint as an HTTP prediction API (FastAPI + uvicorn)",
        description="Serve a checkpoint with a defense and an output format over HTTP: POST /v1/predict, "
                    "GET /v1/usage, GET /v1/info, GET /healthz, docs at /docs. Clients need a key from "
                    "`modelsteal keys create`; every answered query is recorded in the store first.",
    )
    p.add_argument("--model", default=None, help="model file: a checkpoint written by `modelsteal train`, ONNX, "
                   "TorchScript, .pt2, scikit-learn or python:module:factory (see --format); or --upstream URL")
    p.add_argument("--defense", default="none", help="defense name, e.g. mad, reverse-sigmoid, top-k (default none)")
    p.add_argument("--strength", type=number, default=None, help="the defense's strength parameter")
    p.add_argument("--defense-option", action="append", default=[], metavar="K=V",
                   help="defense option, repeatable (numbers and true/false are parsed)")
    p.add_argument("--detector", default="none",
                   help="detector watching the queries, e.g. prada (per-client state kept in the store), msp, odin; "
                        "fitted on the victim's data and calibrated on its validation split (default none)")
    p.add_argument("--detector-option", action="append", default=[], metavar="K=V",
                   help="detector option, repeatable, e.g. min_stream=100 or index=faiss for prada")
    p.add_argument("--detector-tnr", default="0.95", metavar="RATE",
                   help="calibrate the detector for this true-negative rate on the victim's validation split "
                        "(default 0.95); 'none' keeps the detector's own threshold (prada: 1 - delta)")
    p.add_argument("--response", default=None,
                   help="what flagged queries get: none (only counted), shuffle, misinform (Adaptive "
                        "Misinformation's f-hat) or refuse (403 query_refused); needs --detector (default none)")
    p.add_argument("--output", default="probs", help="output format: probs, top-k (or top-N), label, rounded")
    p.add_argument("--output-option", action="append", default=[], metavar="K=V",
                   help="output option, repeatable: k=N for top-k, decimals=N for rounded")
    p.add_argument("--store", default=os.environ.get("MODELSTEAL_STORE", "modelsteal.db"),
                   help="key store and ledger: a SQLite path, sqlite:///path or postgresql://... "
                        "(default $MODELSTEAL_STORE or modelsteal.db)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (they share the store)")
    p.add_argument("--max-batch", type=int, default=1024, help="most rows per request (default 1024)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body (default: from --max-batch)")
    p.add_argument("--record-inputs", action="store_true", help="store every query's inputs in the ledger")
    p.add_argument("--ledger-sync", choices=["full", "normal"], default="full",
                   help="full (default): a ledger commit is on disk before the request is answered (survives a "
                        "power loss); normal: handed to the OS / database server (survives kill -9 of the server, "
                        "not a machine crash) and no flush wait per batch")
    p.add_argument("--exact-layout", action="store_true",
                   help="keep the checkpoint's memory layout (by default a convolutional model on the CPU is served "
                        "channels-last: 1.8-2.5x faster at batch 10-32, answers equal up to the last bit)")
    p.add_argument("--max-batch-rows", type=int, default=256, metavar="N",
                   help="dynamic batching: most rows of concurrent requests answered as one batch (default 256)")
    p.add_argument("--max-batch-delay-ms", type=float, default=2.0, metavar="MS",
                   help="dynamic batching: a batch runs when full or when its oldest request has waited this "
                        "long (default 2; 0 turns batching off)")
    p.add_argument("--batch-workers", type=int, default=1, metavar="N",
                   help="dynamic batching: threads that run batches in turn, one batch's ledger flush overlapping "
                        "the previous batch's inference, arrival order kept (default 1; 2 pays when inference or "
                        "the upstream is slow against the flush)")
    p.add_argument("--idempotency-window", type=float, default=86400.0, metavar="SECONDS",
                   help="how long a request's Idempotency-Key replays its stored answer (default 86400)")
    p.add_argument("--journal-snapshot-every", type=int, default=1000, metavar="N",
                   help="a stateful detector's journal: a snapshot of the client's state every N entries, older "
                        "entries dropped, so a restart replays at most N per client (default 1000; 0: never)")
    p.add_argument("--device", default="auto", help="device for the model: cpu, cuda, cuda:N or auto (default; CUDA "
                   "when available)")
    p.add_argument("--eval-size", type=int, default=1000, metavar="N",
                   help="at start-up, measure the defended accuracy on the first N examples of the victim's "
                        "test split (default 1000; 0 skips)")
    p.add_argument("--data-dir", default=None, help="where the victim's dataset is (for the start-up measurement)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads per worker")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    p.add_argument("--model-name", default=None,
                   help="the model's name on /v2/models/NAME (default: the checkpoint's file stem, or the upstream's)")
    g = p.add_argument_group("gateway", "answer from an existing model server instead of --model (serve/upstream.py)")
    g.add_argument("--upstream", default=None, metavar="URL",
                   help="endpoint to guard: http://host:port/v2/models/NAME (Open Inference Protocol: Triton, KServe, "
                        "MLServer, TorchServe) or a modelsteal server's root")
    g.add_argument("--upstream-protocol", default="auto", choices=["auto", "v1", "v2"],
                   help="the upstream's protocol (auto: v2 for a /v2/models/NAME URL, else v1)")
    g.add_argument("--upstream-model", default=None, help="model name on a v2 upstream given by its root URL")
    g.add_argument("--upstream-key", default=os.environ.get("MODELSTEAL_UPSTREAM_KEY"),
                   help="key sent to the upstream as Bearer (default $MODELSTEAL_UPSTREAM_KEY)")
    g.add_argument("--upstream-timeout", type=float, default=10.0,
                   help="seconds to wait for the upstream before answering 504 (default 10)")
    g.add_argument("--upstream-pool", type=int, default=32,
                   help="most connections to an https:// upstream (default 32); on http:// each calling thread "
                   "keeps one")
    g.add_argument("--surrogate", default=None, metavar="ARCH",
                   help="local architecture for MAD's surrogate (random init) and AM's f-hat, e.g. mlp or lenet")
    add_model_flags(p, dataset=True)
    return p


def run(args: argparse.Namespace) -> int:
    from modelsteal.devices import resolve_device
    from modelsteal.serve import require
    from modelsteal.serve.app import CONFIG_ENV, ServeConfig, build_api, create_app, freeze_startup_objects
    from modelsteal.serve.config import check_detector
    from modelsteal.serve.store import open_store

    uvicorn = require("uvicorn")
    require("fastapi")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_batch_rows < 1:
        raise ValueError(f"--max-batch-rows must be >= 1, got {args.max_batch_rows}")
    if not 1 <= args.batch_workers <= 16:
        raise ValueError(f"--batch-workers must be in 1..16, got {args.batch_workers}")
    if not 0 <= args.max_batch_delay_ms <= 10_000:
        raise ValueError(f"--max-batch-delay-ms must be in 0..10000, got {args.max_batch_delay_ms:g}")
    if not args.idempotency_window > 0:
        raise ValueError(f"--idempotency-window must be > 0 seconds, got {args.idempotency_window:g}")
    if args.journal_snapshot_every < 0:
        raise ValueError(f"--journal-snapshot-every must be >= 0 (0: never), got {args.journal_snapshot_every}")
    if args.eval_size < 0:
        raise ValueError(f"--eval-size must be >= 0, got {args.eval_size}")
    if (args.model is None) == (args.upstream is None):
        raise ValueError("give one model to serve: --model CHECKPOINT or --upstream URL")
    if args.model is not None and any(v is not None for v in (args.upstream_model, args.surrogate)):
        raise ValueError("--upstream-model and --surrogate are gateway options: they need --upstream URL")
    if args.response is not None and args.detector.strip().lower() == "none":
        raise ValueError(f"--response {args.response} needs --detector NAME (e.g. prada): without a detector no "
                         "query is flagged")
    config = ServeConfig(
        detector=args.detector, detector_options=parse_options(args.detector_option, flag="--detector-option"),
        response=args.response or "none", detector_tnr=_rate_or_none(args.detector_tnr), data_dir=args.data_dir,
        checkpoint=args.model or "", defense=args.defense, model_name=args.model_name, upstream=args.upstream,
        upstream_protocol=args.upstream_protocol, upstream_model=args.upstream_model, upstream_key=args.upstream_key,
        upstream_timeout=args.upstream_timeout, upstream_pool=args.upstream_pool, surrogate=args.surrogate,
        dataset=args.dataset if args.upstream else None,
        defense_options=parse_options(args.defense_option, flag="--defense-option"), strength=args.strength,
        output=args.output, output_options=parse_options(args.output_option, flag="--output-option"),
        store=args.store, max_batch=args.max_batch, max_body_bytes=args.max_body_bytes,
        record_inputs=args.record_inputs, fast_layout=not args.exact_layout, ledger_sync=args.ledger_sync,
        device=str(resolve_device(args.device)), torch_threads=args.threads,
        model_format=args.format, model_weights=args.weights, model_spec_file=args.spec,
        model_spec=model_spec(args).to_dict(),
        max_batch_rows=args.max_batch_rows, max_batch_delay_ms=args.max_batch_delay_ms,
        batch_workers=args.batch_workers,
        idempotency_window_s=args.idempotency_window, snapshot_every=args.journal_snapshot_every or None,
    )
    # Build everything once here so that a bad checkpoint, defense or store is a one-line error, not a
    # traceback from inside a worker.
    check_detector(config)  # before the victim is loaded
    api, info = build_api(config)
    store = open_store(config.store, sync=config.ledger_sync)
    active = store.clients(include_revoked=False)
    if not active:
        print(f"modelsteal serve: warning: no active API keys in {store.url}; create one with "
              f"`modelsteal keys create --store {args.store} --name NAME`", file=sys.stderr)

    sock = _bind(args.host, args.port)  # a port in use is an error before the measurement below
    if args.eval_size:
        try:
            report_defense_cost(api, info, eval_size=args.eval_size, data_dir=args.data_dir)
        except BaseException:
            sock.close()
            raise
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if api.detector is not None:
        print(f"modelsteal serve: detector {api.detector!r} (response {config.response}), fitted and calibrated "
              f"on {info.get('dataset')}", flush=True)
    served = args.model or f"a gateway to {args.upstream}"
    print(f"modelsteal serve: {served} with defense {info['defense']['description']}, output "
          f"{api.output.describe()}, store {store.url}; listening on http://{shown}:{port}", flush=True)
    common: dict[str, Any] = {"log_level": args.log_level, "access_log": not args.no_access_log,
                              "timeout_graceful_shutdown": 10}
    if args.workers == 1:
        app = create_app(api, store=store, max_batch=config.max_batch, max_body_bytes=config.max_body_bytes,
                         record_inputs=config.record_inputs, info=info, max_batch_rows=config.max_batch_rows,
                         max_batch_delay_ms=config.max_batch_delay_ms, batch_workers=config.batch_workers,
                         idempotency_window_s=config.idempotency_window_s, snapshot_every=config.snapshot_every)
        server = uvicorn.Server(uvicorn.Config(app, **common))
        freeze_startup_objects()
        try:
            server.run(sockets=[sock])
        finally:
            store.close()
            sock.close()
        return 0 if server.started else 1
    # Several workers: each process rebuilds the app from the config passed in the environment and opens
    # its own connection to the shared store.
    store.close()
    sock.close()
    os.environ[CONFIG_ENV] = config.to_json()
    uvicorn.run("modelsteal.serve.app:app_from_environment", factory=True, host=args.host, port=port,
                workers=args.workers, **common)
    return 0


def _rate_or_none(text: str) -> float | None:
    """``--detector-tnr``: a rate in (0, 1), or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"--detector-tnr expects a rate in (0, 1) or 'none', got {text!r}") from None
    if not 0 < rate < 1:
        raise ValueError(f"--detector-tnr must lie in (0, 1), got {text}")
    return rate


def report_defense_cost(api: Any, info: dict[str, Any], *, eval_size: int, data_dir: str | None) -> None:
    """Print the defended API's top-1 accuracy on the victim's test split; warn when most labels flip. A
    detector is off for this measurement (its response would depend on the order of the test examples).

    Skipped with a note when the checkpoint's dataset is not registered or its files are not here.
    """
    from modelsteal.data import load_dataset
    from modelsteal.metrics import defense_cost

    dataset = info.get("dataset")
    if not dataset:
        print("modelsteal serve: defended accuracy not measured: the checkpoint does not name its dataset",
              flush=True)
        return
    try:
        data = load_dataset(str(dataset), data_dir=data_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"modelsteal serve: defended accuracy not measured: dataset {dataset!r} is not available "
              f"({str(e).splitlines()[0][:160]})", flush=True)
        return
    x, y = data.x_test[:eval_size], data.y_test[:eval_size]
    detector, api.detector = api.detector, None  # the defense's cost; the detector would see a client's stream
    try:
        cost = defense_cost(api, x, y)
    finally:
        api.detector = detector
    defense = info["defense"]["description"]
    print(f"modelsteal serve: defended top-1 accuracy {100 * cost['defender_accuracy']:.1f}% on {len(y)} test "
          f"examples of {data.name} (undefended {100 * cost['victim_accuracy']:.1f}%), mean L1 distance "
          f"{cost['l1_mean']:.3f} to the undefended posteriors", flush=True)
    if cost["label_agreement"] < MIN_LABEL_AGREEMENT:
        hint = ("pass --defense-option preserve_argmax=true to keep the labels, or a smaller --strength"
                if getattr(api.defense, "preserve_argmax", True) is False else "try a smaller --strength")
        print(f"modelsteal serve: warning: defense {defense} changes the top-1 label of "
              f"{100 * (1 - cost['label_agreement']):.1f}% of the test answers, so honest clients get mostly "
              f"wrong labels; {hint}", file=sys.stderr, flush=True)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every answer waits for the client's delayed ACK, a stall on every request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock
