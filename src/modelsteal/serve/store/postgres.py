"""The PostgreSQL back-end of the key store (psycopg 3, imported only when a ``postgresql://`` URL is
opened), so several uvicorn workers or hosts share one ledger."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from modelsteal.serve.store.base import SCHEMA_VERSION, Store, _redact

_POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    budget BIGINT,
    rate_limit DOUBLE PRECISION,
    queries BIGINT NOT NULL DEFAULT 0,
    requests BIGINT NOT NULL DEFAULT 0,
    tokens DOUBLE PRECISION NOT NULL DEFAULT 0,
    tokens_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX IF NOT EXISTS clients_active_name ON clients (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS ledger (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client_id BIGINT NOT NULL REFERENCES clients (id),
    n INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    inputs BYTEA
);
CREATE INDEX IF NOT EXISTS ledger_client ON ledger (client_id);
CREATE TABLE IF NOT EXISTS flags (
    ledger_id BIGINT PRIMARY KEY REFERENCES ledger (id),
    client_id BIGINT NOT NULL REFERENCES clients (id),
    n INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS flags_client ON flags (client_id);
CREATE TABLE IF NOT EXISTS detector_state (
    client_id BIGINT NOT NULL REFERENCES clients (id),
    seq BIGINT NOT NULL,
    detector TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (client_id, seq)
);
CREATE TABLE IF NOT EXISTS watermarks (
    id BIGSERIAL PRIMARY KEY,
    ledger_id BIGINT NOT NULL REFERENCES ledger (id),
    client_id BIGINT NOT NULL REFERENCES clients (id),
    payload BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS watermarks_client ON watermarks (client_id);
CREATE TABLE IF NOT EXISTS idempotency (
    client_id BIGINT NOT NULL REFERENCES clients (id),
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    ledger_id BIGINT,
    status INTEGER NOT NULL,
    answer BYTEA,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (client_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_ledger ON idempotency (ledger_id);
CREATE TABLE IF NOT EXISTS refusals (
    id BIGSERIAL PRIMARY KEY,
    client_id BIGINT NOT NULL REFERENCES clients (id),
    n INTEGER NOT NULL,
    flagged INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS refusals_client ON refusals (client_id);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_SCHEMA_LOCK_ID = 0x6D73_7465  # pg_advisory_xact_lock id: several workers may create the schema at once


class PostgresStore(Store):
    """PostgreSQL through psycopg 3, with a small pool of autocommit connections and explicit transactions;
    reservations are group-committed like SQLite's (:meth:`Store.reserve`)."""

    _placeholder = "%s"
    _for_update = " FOR UPDATE"

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout_s: float = 10.0, sync: str = "full") -> None:
        try:
            import psycopg
        except ImportError:
            raise ValueError(
                "a postgresql:// store needs psycopg 3: pip install 'modelsteal[serve]' "
                "(or pip install 'psycopg[binary]')"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self._sync = sync
        self._connect_timeout = connect_timeout_s
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        self._init_group_commit()
        try:
            with self._transaction(write=True) as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
                for stmt in _POSTGRES_SCHEMA.split(";"):
                    if stmt.strip():
                        cur.execute(stmt)
                cur.execute("INSERT INTO store_meta (key, value) VALUES ('schema', %s) ON CONFLICT DO NOTHING",
                            (SCHEMA_VERSION,))
        except psycopg.Error as e:
            self.close()
            raise ValueError(f"cannot use PostgreSQL store {_redact(url)}: {str(e).strip()}") from None

    def _connect(self) -> Any:
        conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self._connect_timeout)))
        if self._sync != "full":
            conn.execute("SET synchronous_commit TO off")  # survives our kill -9, not the database server's crash
        with self._all_lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Any]:
        self._slots.acquire()
        conn = None
        try:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                conn = self._connect()
            if conn.closed:
                conn = self._connect()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
                if write:
                    self.write_transactions += 1
            except self._psycopg.OperationalError:
                conn.close()  # a broken connection is not returned to the pool
                raise
        finally:
            if conn is not None and not conn.closed:
                self._pool.put(conn)
            self._slots.release()

    def _insert_returning_id(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        cur.execute(self._sql(sql) + " RETURNING id", tuple(params))
        return int(cur.fetchone()[0])

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection must not fail the caller
                pass
