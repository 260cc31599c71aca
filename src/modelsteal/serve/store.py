"""The key store and query ledger behind ``modelsteal serve``.

One store holds the API clients (a name, a hashed key, a query budget, a rate limit, the running query
count) and the ledger: one row per answered request with its number of queries (input rows) and, when
asked, the inputs themselves for stateful detectors. Two back-ends share the same SQL:

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

import dataclasses
import hashlib
import queue
import re
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelsteal.blackbox import BudgetExceededError

KEY_PREFIX = "msk_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
SCHEMA_VERSION = "1"

_CLIENT_COLUMNS = (
    "id, name, key_prefix, budget, rate_limit, queries, requests, tokens, tokens_at, created_at, revoked_at"
)


class AuthenticationError(PermissionError):
    """A missing, unknown or revoked API key. ``code`` is ``missing_key``, ``invalid_key`` or ``revoked_key``."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class BudgetExhaustedError(BudgetExceededError):
    """The batch would take the client past its query budget; nothing was recorded."""


class RateLimitedError(RuntimeError):
    """The client is over its rate limit; ``retry_after`` seconds until it may query again."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ClientInfo:
    """One API client as stored: its budget, rate limit (queries per second) and counts."""

    id: int
    name: str
    key_prefix: str
    budget: int | None
    rate_limit: float | None
    queries: int
    requests: int
    tokens: float
    tokens_at: float
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def remaining(self) -> int | None:
        """Queries left in the budget, or ``None`` for an unlimited key."""
        return None if self.budget is None else max(0, self.budget - self.queries)

    def available_tokens(self, now: float) -> float:
        """Rate-limit tokens (queries) available at time ``now``: a bucket refilled at ``rate_limit``/s."""
        if self.rate_limit is None:
            return float("inf")
        return min(_capacity(self.rate_limit), self.tokens + max(0.0, now - self.tokens_at) * self.rate_limit)

    def retry_after(self, now: float) -> float:
        """Seconds until the rate-limit bucket is positive again (0 when it already is)."""
        if self.rate_limit is None:
            return 0.0
        deficit = -self.available_tokens(now)
        return max(0.0, deficit / self.rate_limit) if deficit >= 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "key_prefix": self.key_prefix, "budget": self.budget, "remaining": self.remaining,
            "rate_limit": self.rate_limit, "queries": self.queries, "requests": self.requests,
            "created_at": self.created_at, "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True)
class LedgerEntry:
    """One answered request: ``n`` queries for ``client_id`` at ``created_at`` (unix seconds)."""

    id: int
    client_id: int
    n: int
    created_at: float


def _capacity(rate: float) -> float:
    """Burst capacity of a rate-limit bucket: one second's worth of queries, at least one."""
    return max(1.0, float(rate))


def hash_key(key: str) -> str:
    """SHA-256 of an API key (keys are 256-bit random tokens, so a fast hash is the right tool)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh API key: ``msk_`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid client name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-', starting with a "
            "letter or digit"
        )
    return name


class Store(ABC):
    """Clients, keys and the ledger. Use :func:`open_store`; every method is thread-safe."""

    url: str
    _placeholder = "?"

    # -- back-end hooks ---------------------------------------------------------------------------------
    @abstractmethod
    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Any]:
        """Yield a cursor inside a transaction, committed on normal exit (SQLite: ``BEGIN IMMEDIATE``)."""

    @abstractmethod
    def _insert_returning_id(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        """Run an INSERT and return the new row's id."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection."""

    _for_update = ""

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    def _exec(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self._sql(sql), tuple(params))
        return cur

    @staticmethod
    def _client(row: Sequence[Any] | None) -> ClientInfo | None:
        if row is None:
            return None
        return ClientInfo(
            id=int(row[0]), name=str(row[1]), key_prefix=str(row[2]),
            budget=None if row[3] is None else int(row[3]),
            rate_limit=None if row[4] is None else float(row[4]),
            queries=int(row[5]), requests=int(row[6]), tokens=float(row[7]), tokens_at=float(row[8]),
            created_at=float(row[9]), revoked_at=None if row[10] is None else float(row[10]),
        )

    # -- key management ---------------------------------------------------------------------------------
    def create_key(
        self, *, name: str, budget: int | None = None, rate_limit: float | None = None
    ) -> tuple[ClientInfo, str]:
        """Create a client ``name`` with a new key; returns ``(client, key)``. The key is stored hashed only.

        ``budget`` caps the client's queries (input rows) for good; ``rate_limit`` is in queries per second
        (a token bucket holding one second's worth). A name may be reused once its old key is revoked.
        """
        _check_name(name)
        if budget is not None and int(budget) < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        if rate_limit is not None and not float(rate_limit) > 0:
            raise ValueError(f"rate limit must be > 0 queries per second, got {rate_limit}")
        key = new_key()
        now = time.time()
        with self._transaction(write=True) as cur:
            taken = self._exec(cur, "SELECT id FROM clients WHERE name = ? AND revoked_at IS NULL", (name,)).fetchone()
            if taken is not None:
                raise ValueError(
                    f"client {name!r} already has an active key; revoke it first (`modelsteal keys revoke`)"
                )
            tokens = _capacity(rate_limit) if rate_limit is not None else 0.0
            cid = self._insert_returning_id(
                cur,
                "INSERT INTO clients (name, key_hash, key_prefix, budget, rate_limit, queries, requests, tokens, "
                "tokens_at, created_at) VALUES (?, ?, ?, ?, ?, 0, 0, ?, ?, ?)",
                (name, hash_key(key), key[: len(KEY_PREFIX) + 6], None if budget is None else int(budget),
                 None if rate_limit is None else float(rate_limit), tokens, now, now),
            )
        client = self.client(cid)
        assert client is not None
        return client, key

    def clients(self, *, include_revoked: bool = True) -> list[ClientInfo]:
        """Every client, oldest first."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        with self._transaction(write=False) as cur:
            rows = self._exec(cur, f"SELECT {_CLIENT_COLUMNS} FROM clients{where} ORDER BY id").fetchall()
        return [c for c in map(self._client, rows) if c is not None]

    def client(self, client_id: int) -> ClientInfo | None:
        """The client with id ``client_id`` (``None`` if there is none)."""
        with self._transaction(write=False) as cur:
            row = self._exec(cur, f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE id = ?", (int(client_id),)).fetchone()
        return self._client(row)

    def revoke(self, name: str) -> ClientInfo:
        """Revoke the active key of client ``name``; its counts and ledger rows are kept."""
        with self._transaction(write=True) as cur:
            row = self._exec(cur, "SELECT id FROM clients WHERE name = ? AND revoked_at IS NULL", (name,)).fetchone()
            if row is None:
                raise ValueError(f"no active key for client {name!r}")
            self._exec(cur, "UPDATE clients SET revoked_at = ? WHERE id = ?", (time.time(), int(row[0])))
        client = self.client(int(row[0]))
        assert client is not None
        return client

    # -- the query path ---------------------------------------------------------------------------------
    def authenticate(self, key: str) -> ClientInfo:
        """The client owning ``key``; :class:`AuthenticationError` for an unknown or revoked key."""
        if not key:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'", code="missing_key")
        with self._transaction(write=False) as cur:
            row = self._exec(cur, f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE key_hash = ?",
                             (hash_key(key),)).fetchone()
        client = self._client(row)
        if client is None:
            raise AuthenticationError("invalid API key", code="invalid_key")
        if client.revoked:
            raise AuthenticationError(f"API key {client.key_prefix}… has been revoked", code="revoked_key")
        return client

    def reserve(
        self, client_id: int, n: int, *, inputs: bytes | None = None, now: float | None = None
    ) -> tuple[LedgerEntry, ClientInfo]:
        """Record ``n`` queries for ``client_id`` atomically, after checking key, budget and rate limit.

        Returns the new ledger entry and the client's updated state once the transaction has committed.
        Raises :class:`AuthenticationError` (revoked meanwhile), :class:`BudgetExhaustedError` or
        :class:`RateLimitedError` without recording anything. ``inputs`` (raw float32 bytes) are stored
        with the entry when given.
        """
        if n < 1:
            raise ValueError(f"a request must hold at least one query, got {n}")
        now = time.time() if now is None else now
        with self._transaction(write=True) as cur:
            return self._reserve_in(cur, int(client_id), int(n), inputs, float(now))

    def _reserve_in(
        self, cur: Any, client_id: int, n: int, inputs: bytes | None, now: float
    ) -> tuple[LedgerEntry, ClientInfo]:
        """The body of :meth:`reserve` inside an open transaction. Every check comes before any write, so
        a refused reservation leaves the transaction untouched."""
        row = self._exec(cur, f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE id = ?{self._for_update}",
                         (client_id,)).fetchone()
        client = self._client(row)
        if client is None:
            raise AuthenticationError("invalid API key", code="invalid_key")
        if client.revoked:
            raise AuthenticationError(f"API key {client.key_prefix}… has been revoked", code="revoked_key")
        if client.budget is not None and client.queries + n > client.budget:
            left = client.budget - client.queries
            raise BudgetExhaustedError(
                f"query budget exhausted: a batch of {n} queries needs more than the {left} left of this "
                f"key's budget of {client.budget}"
            )
        tokens = client.tokens
        if client.rate_limit is not None:
            tokens = client.available_tokens(now)
            if tokens <= 0:
                wait = -tokens / client.rate_limit
                raise RateLimitedError(
                    f"rate limit of {client.rate_limit:g} queries/s exceeded; retry in {wait:.2f} s",
                    retry_after=wait,
                )
            tokens -= n  # the bucket may go negative: a large batch is paid for by waiting afterwards
        self._exec(
            cur,
            "UPDATE clients SET queries = queries + ?, requests = requests + 1, tokens = ?, tokens_at = ? "
            "WHERE id = ?",
            (n, float(tokens), now, client_id),
        )
        entry_id = self._insert_returning_id(
            cur, "INSERT INTO ledger (client_id, n, created_at, inputs) VALUES (?, ?, ?, ?)",
            (client_id, n, now, inputs),
        )
        updated = dataclasses.replace(client, queries=client.queries + n, requests=client.requests + 1,
                                      tokens=float(tokens), tokens_at=now)
        return LedgerEntry(id=entry_id, client_id=client_id, n=n, created_at=now), updated

    def release(self, entry_id: int) -> None:
        """Undo a reservation whose request could not be answered (the server failed before answering)."""
        with self._transaction(write=True) as cur:
            row = self._exec(cur, "SELECT client_id, n FROM ledger WHERE id = ?", (int(entry_id),)).fetchone()
            if row is None:
                return
            self._exec(cur, "DELETE FROM ledger WHERE id = ?", (int(entry_id),))
            self._exec(cur, "UPDATE clients SET queries = queries - ?, requests = requests - 1 WHERE id = ?",
                       (int(row[1]), int(row[0])))

    # -- reading the ledger -----------------------------------------------------------------------------
    def ledger(self, *, client_id: int | None = None) -> list[LedgerEntry]:
        """Ledger entries, oldest first, for one client or all."""
        sql = "SELECT id, client_id, n, created_at FROM ledger"
        params: tuple[Any, ...] = ()
        if client_id is not None:
            sql, params = sql + " WHERE client_id = ?", (int(client_id),)
        with self._transaction(write=False) as cur:
            rows = self._exec(cur, sql + " ORDER BY id", params).fetchall()
        return [LedgerEntry(id=int(r[0]), client_id=int(r[1]), n=int(r[2]), created_at=float(r[3])) for r in rows]

    def recorded_inputs(self, client_id: int) -> list[bytes]:
        """The raw float32 inputs stored with a client's ledger entries (servers run with ``record_inputs``)."""
        with self._transaction(write=False) as cur:
            rows = self._exec(cur, "SELECT inputs FROM ledger WHERE client_id = ? AND inputs IS NOT NULL ORDER BY id",
                              (int(client_id),)).fetchall()
        return [bytes(r[0]) for r in rows]

    def ping(self) -> None:
        """Raise if the store cannot be reached."""
        with self._transaction(write=False) as cur:
            self._exec(cur, "SELECT 1").fetchone()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


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
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LedgerWriteError(RuntimeError):
    """The transaction recording a request failed; nothing of it was recorded (and it was not answered)."""


@dataclasses.dataclass(eq=False)
class _Pending:
    """One reservation waiting for the group commit."""

    client_id: int
    n: int
    inputs: bytes | None
    now: float
    wake: threading.Event = dataclasses.field(default_factory=threading.Event)
    lead: bool = False
    done: bool = False
    result: tuple[LedgerEntry, ClientInfo] | None = None
    error: BaseException | None = None


class SQLiteStore(Store):
    """SQLite with ``journal_mode=WAL`` and ``synchronous=FULL``: one connection per store, behind a lock.

    Reservations use *group commit*: concurrent :meth:`reserve` calls queue up, and one of them (the
    leader) records the whole queue in a single transaction — each reservation still checked on its own,
    in order — so one fsync covers many requests. Every caller returns only after its transaction has
    committed, so the durability promise is unchanged.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
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
        self._group_lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._leader = False
        try:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ValueError(f"SQLite store {self.path} could not switch to WAL mode (got {mode!r})")
            self._conn.execute("PRAGMA synchronous=FULL")
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

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Cursor]:
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
            finally:
                cur.close()

    def _insert_returning_id(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        cur.execute(sql, tuple(params))
        return int(cur.lastrowid)

    def reserve(
        self, client_id: int, n: int, *, inputs: bytes | None = None, now: float | None = None
    ) -> tuple[LedgerEntry, ClientInfo]:
        if n < 1:
            raise ValueError(f"a request must hold at least one query, got {n}")
        item = _Pending(int(client_id), int(n), inputs, time.time() if now is None else float(now))
        with self._group_lock:
            self._pending.append(item)
            if not self._leader:
                self._leader = item.lead = True
        if not item.lead:
            item.wake.wait()  # woken with a result, or promoted to leader of the next group
        if not item.done:
            self._commit_pending()
        if isinstance(item.error, LedgerWriteError):
            raise LedgerWriteError(str(item.error)) from item.error.__cause__
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    reserve.__doc__ = Store.reserve.__doc__

    def _commit_pending(self) -> None:
        """Record every queued reservation in one transaction, then wake their callers and pass the lead."""
        with self._group_lock:
            batch, self._pending = self._pending, []
        try:
            with self._transaction(write=True) as cur:
                for it in batch:
                    try:
                        it.result = self._reserve_in(cur, it.client_id, it.n, it.inputs, it.now)
                    except (AuthenticationError, BudgetExhaustedError, RateLimitedError) as e:
                        it.error = e  # refused before any write: the others go on
        except BaseException as e:  # the transaction failed: none of the group is recorded
            for it in batch:
                it.result = None
                err = LedgerWriteError(f"recording the request in the ledger failed: {type(e).__name__}: {e}")
                err.__cause__ = e
                it.error = err
        finally:
            for it in batch:
                it.done = True
            with self._group_lock:
                successor = self._pending[0] if self._pending else None
                if successor is not None:
                    successor.lead = True
                else:
                    self._leader = False
            for it in batch:
                it.wake.set()
            if successor is not None:
                successor.wake.set()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


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
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_SCHEMA_LOCK_ID = 0x6D73_7465  # pg_advisory_xact_lock id: several workers may create the schema at once


class PostgresStore(Store):
    """PostgreSQL through psycopg 3, with a small pool of autocommit connections and explicit transactions."""

    _placeholder = "%s"
    _for_update = " FOR UPDATE"

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout_s: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise ValueError(
                "a postgresql:// store needs psycopg 3: pip install 'modelsteal[serve]' "
                "(or pip install 'psycopg[binary]')"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self._connect_timeout = connect_timeout_s
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
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


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


DEFAULT_STORE = "modelsteal.db"


def open_store(url: str | Path | None = None) -> Store:
    """Open (creating if needed) the store at ``url``.

    ``url`` is a SQLite path (``ledger.db``), ``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or
    ``postgresql://user:password@host:port/dbname`` (also ``postgres://``). ``None`` means
    ``modelsteal.db`` in the working directory. Anything else is a ``ValueError`` saying what is accepted.
    """
    url = str(url) if url is not None else DEFAULT_STORE
    if url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        return PostgresStore(url.replace("postgresql+psycopg://", "postgresql://", 1))
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if path.startswith("/"):
            path = path[1:]
        if not path or path == ":memory:":
            raise ValueError("the store must be a file: an in-memory SQLite database would lose the ledger")
        return SQLiteStore(path)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
        raise ValueError(
            f"unsupported store URL {_redact(url)!r}; use a SQLite path (ledger.db), sqlite:///path or "
            "postgresql://user@host:port/dbname"
        )
    if not url.strip():
        raise ValueError("empty store URL")
    return SQLiteStore(url)
