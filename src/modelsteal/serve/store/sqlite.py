"""The SQLite back-end of the key store: the embedded default, durable and shared between processes.

The file is opened with ``journal_mode=WAL`` and ``synchronous=FULL``, so a committed transaction survives
a crash of the server and several server processes can share it. Concurrent reservations are written by
*group commit* (:class:`SQLiteStore`): one transaction, and one fsync, for every request waiting.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelsteal.serve.store.base import SCHEMA_VERSION, Store
from modelsteal.serve.store.records import LedgerWriteError

__all__ = ["LedgerWriteError", "SQLiteStore"]

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    budget INTEGER,
    rate_limit REAL,
    queries INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    tokens REAL NOT NULL DEFAULT 0,
    tokens_at REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS clients_active_name ON clients (name) WHERE revoked_at IS NULL;
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id INTEGER NOT NULL REFERENCES clients (id),
    n INTEGER NOT NULL,
    created_at REAL NOT NULL,
    inputs BLOB
);
CREATE INDEX IF NOT EXISTS ledger_client ON ledger (client_id);
CREATE TABLE IF NOT EXISTS flags (
    ledger_id INTEGER PRIMARY KEY REFERENCES ledger (id),
    client_id INTEGER NOT NULL REFERENCES clients (id),
    n INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS flags_client ON flags (client_id);
CREATE TABLE IF NOT EXISTS detector_state (
    client_id INTEGER NOT NULL REFERENCES clients (id),
    seq INTEGER NOT NULL,
    detector TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (client_id, seq)
);
CREATE TABLE IF NOT EXISTS watermarks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ledger_id INTEGER NOT NULL REFERENCES ledger (id),
    client_id INTEGER NOT NULL REFERENCES clients (id),
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS watermarks_client ON watermarks (client_id);
CREATE TABLE IF NOT EXISTS idempotency (
    client_id INTEGER NOT NULL REFERENCES clients (id),
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    ledger_id INTEGER,
    status INTEGER NOT NULL,
    answer BLOB,
    created_at REAL NOT NULL,
    PRIMARY KEY (client_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_ledger ON idempotency (ledger_id);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id INTEGER NOT NULL REFERENCES clients (id),
    n INTEGER NOT NULL,
    flagged INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS refusals_client ON refusals (client_id);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SQLiteStore(Store):
    """SQLite with ``journal_mode=WAL`` and ``synchronous=FULL``: one connection per store, behind a lock.

    Reservations use *group commit* (:meth:`Store.reserve`): one transaction, and one fsync, for every
    request waiting; a batch's records go in one more (:meth:`Store.commit_batch`).
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0, sync: str = "full") -> None:
        self.path = Path(path).expanduser()
        self.url = f"sqlite:///{self.path}"
        if not self.path.parent.is_dir():
            raise ValueError(f"store directory {self.path.parent} does not exist")
        try:
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                         check_same_thread=False)
        except sqlite3.Error as e:
            raise ValueError(f"cannot open SQLite store {self.path}: {e}") from None
        self._lock = threading.RLock()
        self._busy_timeout_s = busy_timeout_s
        self._readers = threading.local()  # one read-only connection per thread: WAL readers never wait
        self._reader_conns: list[sqlite3.Connection] = []  # for a writer's commit (its fsync)
        self._init_group_commit()
        try:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ValueError(f"SQLite store {self.path} could not switch to WAL mode (got {mode!r})")
            self._conn.execute("PRAGMA synchronous=FULL" if sync == "full" else "PRAGMA synchronous=NORMAL")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._transaction(write=True) as cur:
                for stmt in _SQLITE_SCHEMA.split(";"):
                    if stmt.strip():
                        cur.execute(stmt)
                cur.execute("INSERT OR IGNORE INTO store_meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise ValueError(f"{self.path} is not a usable modelsteal store: {e}") from None

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), timeout=self._busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
            conn.execute("PRAGMA query_only=ON")
            with self._lock:
                self._reader_conns.append(conn)
            self._readers.conn = conn
        return conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Cursor]:
        if not write:  # a snapshot of the last commit, on this thread's own connection
            cur = self._reader().cursor()
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("COMMIT")
                cur.close()
            return
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
                if write:
                    self.write_transactions += 1
            finally:
                cur.close()

    def _insert_returning_id(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        cur.execute(sql, tuple(params))
        return int(cur.lastrowid)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            readers, self._reader_conns = self._reader_conns, []
        for conn in readers:
            conn.close()
