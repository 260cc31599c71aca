"""The key store and query ledger behind ``modelsteal serve``.

One store holds the API clients (a name, a hashed key, a query budget, a rate limit, the running query
count) and the ledger: one row per answered request with its number of queries (input rows) and, when
asked, the inputs themselves for stateful detectors; and, for a server with a detector, how many of each
request's queries it flagged (:meth:`Store.record_flags`, :meth:`Store.flags`), and a stateful detector's
per-client state as a journal of entries (:meth:`Store.save_detector_state`, :meth:`Store.detector_entries`),
appended in the transaction that records the request's flags. Two back-ends share the
same SQL:

- SQLite (the embedded default; a path, ``sqlite:///path`` or ``sqlite:////abs/path``) opened with
  ``journal_mode=WAL`` and ``synchronous=FULL``, so a committed transaction survives a crash of the server
  and several server processes can share the file;
- PostgreSQL (``postgresql://user@host:port/db``), through psycopg 3, imported only when such a URL is
  given; several uvicorn workers or hosts then share one ledger.

:meth:`Store.reserve` is the one write on the query path: in a single transaction it checks that the key
is active, that the batch fits the budget and the rate limit, adds the rows to the client's count and
appends the ledger row. The server calls it *before* it answers, so every answered query is in the
ledger (a crash between the commit and the answer can only over-count).

Example::

    store = open_store("ledger.db")
    client, key = store.create_key(name="alice", budget=10_000)
    who = store.authenticate(key)
    entry = store.reserve(who.id, 32)        # raises BudgetExhaustedError / RateLimitedError
"""

from __future__ import annotations

import re
from pathlib import Path

from modelsteal.serve.store.base import SCHEMA_VERSION, Store, _redact
from modelsteal.serve.store.keys import KEY_PREFIX, hash_key, new_key
from modelsteal.serve.store.postgres import PostgresStore
from modelsteal.serve.store.records import (
    AuthenticationError,
    BudgetExhaustedError,
    ClientInfo,
    DetectorStateConflict,
    IdempotencyConflict,
    IdempotencyKey,
    IdempotentReplay,
    LedgerEntry,
    LedgerWriteError,
    RateLimitedError,
    RequestRecord,
    StateEntry,
)
from modelsteal.serve.store.sqlite import SQLiteStore

__all__ = [
    "DEFAULT_STORE", "KEY_PREFIX", "SCHEMA_VERSION", "AuthenticationError", "BudgetExhaustedError", "ClientInfo",
    "DetectorStateConflict", "IdempotencyConflict", "IdempotencyKey", "IdempotentReplay", "LedgerEntry",
    "LedgerWriteError", "PostgresStore", "RateLimitedError", "RequestRecord", "SQLiteStore", "StateEntry", "Store",
    "hash_key",
    "new_key", "open_store",
]

DEFAULT_STORE = "modelsteal.db"


#: the ledger's durability settings (:func:`open_store`'s ``sync``)
SYNC_MODES = ("full", "normal")


def open_store(url: str | Path | None = None, *, sync: str = "full") -> Store:
    """Open (creating if needed) the store at ``url``.

    ``url`` is a SQLite path (``ledger.db``), ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or
    ``postgresql://user:password@host:port/dbname`` (also ``postgres://``). ``None`` means
    ``modelsteal.db`` in the working directory. Anything else is a ``ValueError`` saying what is accepted.

    ``sync``: when a committed write is durable. ``"full"`` (default): on disk before the commit returns
    (SQLite ``synchronous=FULL``, PostgreSQL ``synchronous_commit=on``): it survives a power loss. ``"normal"``:
    handed to the operating system (SQLite WAL with ``synchronous=NORMAL``) or to the database server
    (PostgreSQL ``synchronous_commit=off``) before the commit returns: it survives ``kill -9`` of the serving
    process, but the last commits can be lost if the machine (or the database server) crashes, and each commit
    no longer waits for the disk's flush.
    """
    if sync not in SYNC_MODES:
        raise ValueError(f"ledger sync must be one of {', '.join(SYNC_MODES)}, got {sync!r}")
    url = str(url) if url is not None else DEFAULT_STORE
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return PostgresStore(url.replace("postgresql+psycopg://", "postgresql://", 1), sync=sync)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if path.startswith("/"):
            path = path[1:]
        if not path or path == ":memory:":
            raise ValueError("the store must be a file: an in-memory SQLite database would lose the ledger")
        return SQLiteStore(path, sync=sync)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise ValueError(
            f"unsupported store URL {_redact(url)!r}; use a SQLite path (ledger.db), sqlite:///path or "
            "postgresql://user@host:port/dbname"
        )
    if not url.strip():
        raise ValueError("empty store URL")
    return SQLiteStore(url, sync=sync)
