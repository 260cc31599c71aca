"""A real prediction API: ``modelsteal serve`` (FastAPI + uvicorn), its ledger and the HTTP black box.

- :mod:`modelsteal.serve.app`: ``create_app(api, store=...)``, the FastAPI application serving a
  :class:`~modelsteal.PredictionAPI` behind API keys, budgets and rate limits;
- :mod:`modelsteal.serve.codec`: the ``/v1/predict`` body format (decoding and validating a request,
  encoding the answer); :mod:`modelsteal.serve.config`: ``ServeConfig`` and ``build_api``;
- :mod:`modelsteal.serve.store`: ``open_store(url)``, keys (stored hashed) and the durable query ledger,
  SQLite by default (``store/sqlite.py``) and PostgreSQL by URL (``store/postgres.py``);
- :mod:`modelsteal.serve.detector_state`: a stateful detector's per-client state (PRADA), journalled in the
  store (compacted into periodic snapshots), loaded before and saved after every request;
- :mod:`modelsteal.serve.batcher`: dynamic batching of concurrent requests and the group commit of a batch;
- :mod:`modelsteal.serve.client`: ``HTTPBlackBox(url, key)``, the client side of the
  :class:`~modelsteal.BlackBox` contract, so any attack runs unchanged against a live server — ``modelsteal
  serve``'s ``/v1``, or any Open Inference Protocol (v2) endpoint such as Triton, KServe or MLServer;
- :mod:`modelsteal.serve.v2` and :mod:`modelsteal.serve.codec_v2`: the Open Inference Protocol (KServe "v2"
  REST) routes and wire format, beside ``/v1``;
- :mod:`modelsteal.serve.upstream`: the gateway, ``serve --upstream URL``: keys, budgets, the ledger and the
  defenses in front of an existing model server.

FastAPI, uvicorn and httpx are the ``serve`` extra (``pip install 'modelsteal[serve]'``); they are imported
only by the modules that need them, so importing this package costs nothing.
"""

from __future__ import annotations

from typing import Any

from modelsteal._extras import MissingDependencyError, require_extra

__all__ = ["HTTPBlackBox", "MissingDependencyError", "ServeConfig", "create_app", "open_store"]


def __getattr__(name: str) -> Any:
    if name == "HTTPBlackBox":
        from modelsteal.serve.client import HTTPBlackBox

        return HTTPBlackBox
    if name == "ServeConfig":
        from modelsteal.serve.config import ServeConfig

        return ServeConfig
    if name == "create_app":
        from modelsteal.serve.app import create_app

        return create_app
    if name == "open_store":
        from modelsteal.serve.store import open_store

        return open_store
    raise AttributeError(f"module 'modelsteal.serve' has no attribute {name!r}")


def require(module: str) -> Any:
    """Import an optional dependency of the ``serve`` extra, with an install hint when it is missing."""
    return require_extra(module, extra="serve", purpose="modelsteal's server and HTTP client")
