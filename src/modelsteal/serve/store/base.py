"""The back-end-independent part of the key store: the SQL every back-end runs (records and errors:
:mod:`modelsteal.serve.store.records`).

:class:`Store` holds the logic — creating and revoking keys, authenticating, and :meth:`Store.reserve`,
the one write on the query path (key, budget and rate limit checked and the ledger row appended in a
single transaction). A back-end supplies only a transaction (``_transaction``), an INSERT that returns the
new id and ``close``; the SQL is shared, with ``?`` placeholders rewritten for drivers that want ``%s``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

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
    bucket_capacity,
)

KEY_PREFIX = "msk_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
SCHEMA_VERSION = "1"

_CLIENT_COLUMNS = (
    "id, name, key_prefix, budget, rate_limit, queries, requests, tokens, tokens_at, created_at, revoked_at"
)


@dataclasses.dataclass(eq=False)
class _Pending:
    """One reservation waiting for the group commit."""

    client_id: int
    n: int
    inputs: bytes | None
    now: float
    idempotency: IdempotencyKey | None = None
    wake: threading.Event = dataclasses.field(default_factory=threading.Event)
    lead: bool = False
    done: bool = False
    result: tuple[LedgerEntry, ClientInfo] | None = None
    error: BaseException | None = None


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
            tokens = bucket_capacity(rate_limit) if rate_limit is not None else 0.0
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

    # -- group commit -----------------------------------------------------------------------------------
    def _init_group_commit(self) -> None:
        """Set up the queue of :meth:`reserve` (each back-end's ``__init__`` calls it)."""
        self._group_lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._leader = False
        self.write_transactions = 0  #: committed write transactions (each one durable flush of the store)

    def reserve(
        self, client_id: int, n: int, *, inputs: bytes | None = None, now: float | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> tuple[LedgerEntry, ClientInfo]:
        """Record ``n`` queries for ``client_id`` atomically, after checking key, budget and rate limit.

        Returns the new ledger entry and the client's updated state once the transaction has committed.
        Raises :class:`AuthenticationError` (revoked meanwhile), :class:`BudgetExhaustedError` or
        :class:`RateLimitedError` without recording anything. ``inputs`` (raw float32 bytes) are stored
        with the entry when given. With ``idempotency``, a key this client used within the window raises
        :class:`IdempotentReplay` (the stored outcome; nothing recorded, no budget or rate check) or
        :class:`IdempotencyConflict`; a new key is stored with the entry (as "in progress" until
        :meth:`commit_batch` stores the answer).

        *Group commit*: concurrent calls queue up, and one of them (the leader) records the whole queue in a
        single transaction — each reservation still checked on its own, in order — so one durable flush
        covers many requests. Every caller returns only after its transaction has committed.
        """
        result = self.reserve_many([(client_id, n, inputs, idempotency)], now=now)[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def reserve_many(
        self, requests: Sequence[tuple[int, int, bytes | None, IdempotencyKey | None]], *, now: float | None = None,
    ) -> list[tuple[LedgerEntry, ClientInfo] | BaseException]:
        """:meth:`reserve` for several requests ``(client_id, n, inputs, idempotency)`` at once, in ONE
        transaction (a batch's reservations: one durable flush), each checked on its own and in order; returns
        per request the ``(entry, client)`` or the exception :meth:`reserve` would raise (a failed transaction
        is a :class:`LedgerWriteError` for every request). They join the group commit of concurrent callers."""
        for _, n, _, _ in requests:
            if n < 1:
                raise ValueError(f"a request must hold at least one query, got {n}")
        when = time.time() if now is None else float(now)
        items = [_Pending(int(c), int(n), inputs, when, idem) for c, n, inputs, idem in requests]
        if not items:
            return []
        with self._group_lock:
            self._pending.extend(items)  # contiguous: the leader that takes one of them takes them all
            if not self._leader:
                self._leader = items[0].lead = True
        for item in items:
            if not item.done and not item.lead:
                item.wake.wait()  # woken with a result, or promoted to leader of the next group
            if not item.done:
                self._commit_pending()
        out: list[tuple[LedgerEntry, ClientInfo] | BaseException] = []
        for item in items:
            if isinstance(item.error, LedgerWriteError):
                err = LedgerWriteError(str(item.error))
                err.__cause__ = item.error.__cause__
                out.append(err)
            elif item.error is not None:
                out.append(item.error)
            else:
                assert item.result is not None
                out.append(item.result)
        return out

    def _commit_pending(self) -> None:
        """Record every queued reservation in one transaction, then wake their callers and pass the lead."""
        with self._group_lock:
            batch, self._pending = self._pending, []
        try:
            with self._transaction(write=True) as cur:
                # clients' rows are locked in id order (PostgreSQL: no deadlock with another worker's group)
                for it in sorted(batch, key=lambda it: it.client_id):
                    try:
                        it.result = self._reserve_in(cur, it.client_id, it.n, it.inputs, it.now, it.idempotency)
                    except (AuthenticationError, BudgetExhaustedError, RateLimitedError, IdempotentReplay,
                            IdempotencyConflict) as e:
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

    def _reserve_in(
        self, cur: Any, client_id: int, n: int, inputs: bytes | None, now: float,
        idempotency: IdempotencyKey | None = None,
    ) -> tuple[LedgerEntry, ClientInfo]:
        """The body of :meth:`reserve` inside an open transaction. Every check comes before any write (but the
        removal of an expired idempotency key), so a refused reservation leaves the transaction untouched."""
        row = self._exec(cur, f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE id = ?{self._for_update}",
                         (client_id,)).fetchone()
        client = self._client(row)
        if client is None:
            raise AuthenticationError("invalid API key", code="invalid_key")
        if client.revoked:
            raise AuthenticationError(f"API key {client.key_prefix}… has been revoked", code="revoked_key")
        if idempotency is not None:
            self._check_idempotency(cur, client_id, idempotency, now)
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
        if idempotency is not None:
            self._exec(cur, "INSERT INTO idempotency (client_id, key, fingerprint, ledger_id, status, answer, "
                            "created_at) VALUES (?, ?, ?, ?, 0, NULL, ?)",
                       (client_id, idempotency.key, idempotency.fingerprint, entry_id, now))
        updated = dataclasses.replace(client, queries=client.queries + n, requests=client.requests + 1,
                                      tokens=float(tokens), tokens_at=now)
        return LedgerEntry(id=entry_id, client_id=client_id, n=n, created_at=now), updated

    def _check_idempotency(self, cur: Any, client_id: int, idem: IdempotencyKey, now: float) -> None:
        """Raise :class:`IdempotentReplay` / :class:`IdempotencyConflict` for a key in use within the window;
        drop an expired one."""
        row = self._exec(cur, "SELECT fingerprint, status, answer, created_at FROM idempotency WHERE client_id = ? "
                              "AND key = ?", (client_id, idem.key)).fetchone()
        if row is None:
            return
        if float(row[3]) < now - idem.window_s and int(row[1]) != 0:
            self._exec(cur, "DELETE FROM idempotency WHERE client_id = ? AND key = ?", (client_id, idem.key))
            return
        if str(row[0]) != idem.fingerprint:
            raise IdempotencyConflict(f"Idempotency-Key {idem.key!r} was used for a request with other inputs; "
                                      "use a new key for a new request", code="idempotency_key_reused")
        if int(row[1]) == 0:
            raise IdempotencyConflict(f"a request with Idempotency-Key {idem.key!r} is still being answered; "
                                      "retry later", code="idempotency_in_progress")
        raise IdempotentReplay(status=int(row[1]), answer=bytes(row[2]))

    def commit_batch(self, records: Sequence[RequestRecord], *, purge_before: float | None = None) -> set[int]:
        """Make a batch of answered (or refused) requests durable in ONE transaction (group commit): flag
        counts, detector-state journal entries, watermark records, refusals and idempotent answers. Returns the
        ids of clients whose journal entries were *not* written because another process appended to their
        journal first (their requests' records are all skipped: the caller scores them again); everything
        else is written. A batch with nothing to write costs no transaction. ``purge_before`` also drops
        answered idempotency keys older than that time."""
        writes = [r for r in records if r.flagged or r.refused or r.journal is not None or r.watermarks is not None
                  or r.idempotency_key is not None]
        if not writes and purge_before is None:
            return set()
        conflicted: set[int] = set()
        with self._transaction(write=True) as cur:
            journaled = sorted({r.client_id for r in writes if r.journal is not None})
            for cid in journaled:  # lock in id order, then check each client's journal is where we left it
                self._exec(cur, f"SELECT id FROM clients WHERE id = ?{self._for_update}", (cid,)).fetchone()
                newest = int(self._exec(cur, "SELECT COALESCE(MAX(seq), 0) FROM detector_state WHERE client_id = ?",
                                        (cid,)).fetchone()[0])
                first = min(r.journal[0] for r in writes if r.client_id == cid and r.journal is not None)
                if newest != first - 1:
                    conflicted.add(cid)
            now = time.time()
            for r in writes:
                if r.client_id in conflicted:
                    continue
                if r.journal is not None:
                    seq, spec, kind, payload = r.journal
                    if kind not in ("full", "delta"):
                        raise ValueError(f"detector state kind must be 'full' or 'delta', got {kind!r}")
                    self._exec(cur, "INSERT INTO detector_state (client_id, seq, detector, kind, payload, created_at) "
                                    "VALUES (?, ?, ?, ?, ?, ?)", (r.client_id, int(seq), spec, kind, payload, now))
                    if r.compact and kind == "full":
                        self._exec(cur, "DELETE FROM detector_state WHERE client_id = ? AND seq < ?",
                                   (r.client_id, int(seq)))
                if r.refused:
                    self._exec(cur, "INSERT INTO refusals (client_id, n, flagged, created_at) VALUES (?, ?, ?, ?)",
                               (r.client_id, int(r.rows), int(r.flagged), now))
                    if r.idempotency_key is not None:
                        self._exec(cur, "UPDATE idempotency SET status = 403, answer = ?, ledger_id = NULL "
                                        "WHERE client_id = ? AND key = ?", (r.answer, r.client_id, r.idempotency_key))
                    self._release_in(cur, r.ledger_id)
                    continue
                if r.flagged:
                    self._exec(cur, "INSERT INTO flags (ledger_id, client_id, n) VALUES (?, ?, ?)",
                               (r.ledger_id, r.client_id, int(r.flagged)))
                if r.watermarks is not None:
                    self._exec(cur, "INSERT INTO watermarks (ledger_id, client_id, payload, created_at) "
                                    "VALUES (?, ?, ?, ?)", (r.ledger_id, r.client_id, r.watermarks, now))
                if r.idempotency_key is not None:
                    self._exec(cur, "UPDATE idempotency SET status = 200, answer = ? WHERE client_id = ? AND key = ?",
                               (r.answer, r.client_id, r.idempotency_key))
            if purge_before is not None:
                self._exec(cur, "DELETE FROM idempotency WHERE status <> 0 AND created_at < ?", (float(purge_before),))
        return conflicted

    def release(self, entry_id: int) -> None:
        """Undo a reservation whose request could not be answered (the server failed before answering); its
        idempotency key goes too, so a retry is answered afresh. Releasing twice is harmless."""
        with self._transaction(write=True) as cur:
            self._release_in(cur, entry_id)

    def _release_in(self, cur: Any, entry_id: int) -> None:
        row = self._exec(cur, "SELECT client_id, n FROM ledger WHERE id = ?", (int(entry_id),)).fetchone()
        if row is None:
            return
        self._exec(cur, "DELETE FROM flags WHERE ledger_id = ?", (int(entry_id),))
        self._exec(cur, "DELETE FROM watermarks WHERE ledger_id = ?", (int(entry_id),))
        self._exec(cur, "DELETE FROM idempotency WHERE ledger_id = ?", (int(entry_id),))
        self._exec(cur, "DELETE FROM ledger WHERE id = ?", (int(entry_id),))
        self._exec(cur, "UPDATE clients SET queries = queries - ?, requests = requests - 1 WHERE id = ?",
                   (int(row[1]), int(row[0])))

    def record_flags(self, entry_id: int, n: int) -> None:
        """Record that the detector flagged ``n`` of the queries of ledger entry ``entry_id`` (written once the
        request is answered, before the answer is sent; ``n = 0`` writes nothing). A later :meth:`release`
        of the entry takes its flags back out too."""
        if n < 0:
            raise ValueError(f"a request cannot hold {n} flagged queries")
        if n == 0:
            return
        with self._transaction(write=True) as cur:
            self._exec(cur, "INSERT INTO flags (ledger_id, client_id, n) SELECT id, client_id, ? FROM ledger "
                            "WHERE id = ?", (int(n), int(entry_id)))

    def flags(self, client_id: int) -> int:
        """How many of the client's queries the server's detector flagged (kept across restarts): those of its
        answered requests and those of the requests the ``refuse`` response refused (:meth:`refusals`)."""
        with self._transaction(write=False) as cur:
            row = self._exec(cur, "SELECT COALESCE(SUM(n), 0) FROM flags WHERE client_id = ?",
                             (int(client_id),)).fetchone()
            refused = self._exec(cur, "SELECT COALESCE(SUM(flagged), 0) FROM refusals WHERE client_id = ?",
                                 (int(client_id),)).fetchone()
        return int(row[0]) + int(refused[0])

    def refusals(self, client_id: int) -> tuple[int, int]:
        """``(requests, queries)`` of the client that the detector's ``refuse`` response refused (not counted
        as queries in the ledger; their flagged rows are in :meth:`flags`)."""
        with self._transaction(write=False) as cur:
            row = self._exec(cur, "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM refusals WHERE client_id = ?",
                             (int(client_id),)).fetchone()
        return int(row[0]), int(row[1])

    # -- watermark records ------------------------------------------------------------------------------
    def record_watermarks(self, entry_id: int, payload: bytes) -> None:
        """Keep what a watermarking defense (DAWN) recorded while answering ledger entry ``entry_id`` (an opaque
        JSON payload; written before the answer is sent). A later :meth:`release` of the entry removes it."""
        with self._transaction(write=True) as cur:
            self._exec(cur, "INSERT INTO watermarks (ledger_id, client_id, payload, created_at) "
                            "SELECT id, client_id, ?, ? FROM ledger WHERE id = ?",
                       (payload, time.time(), int(entry_id)))

    def watermarks(self, client_id: int | None = None) -> list[tuple[int, bytes]]:
        """``(client id, payload)`` of every stored watermark record, oldest first, for one client or all."""
        sql = "SELECT client_id, payload FROM watermarks"
        params: tuple[Any, ...] = ()
        if client_id is not None:
            sql, params = sql + " WHERE client_id = ?", (int(client_id),)
        with self._transaction(write=False) as cur:
            rows = self._exec(cur, sql + " ORDER BY id", params).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    # -- detector state ---------------------------------------------------------------------------------
    def detector_version(self, client_id: int) -> int:
        """The ``seq`` of the client's newest detector-state entry (0 when none was saved)."""
        with self._transaction(write=False) as cur:
            row = self._exec(cur, "SELECT COALESCE(MAX(seq), 0) FROM detector_state WHERE client_id = ?",
                             (int(client_id),)).fetchone()
        return int(row[0])

    def detector_entries(self, client_id: int, *, after: int = 0) -> list[StateEntry]:
        """The client's detector-state entries newer than ``after``, oldest first, starting at the newest
        ``full`` entry among them when there is one (what a reader replays to rebuild the state)."""
        with self._transaction(write=False) as cur:
            row = self._exec(cur, "SELECT MAX(seq) FROM detector_state WHERE client_id = ? AND seq > ? AND "
                                  "kind = 'full'", (int(client_id), int(after))).fetchone()
            start = int(after) if row[0] is None else int(row[0]) - 1
            rows = self._exec(cur, "SELECT client_id, seq, detector, kind, payload, created_at FROM detector_state "
                                   "WHERE client_id = ? AND seq > ? ORDER BY seq",
                              (int(client_id), start)).fetchall()
        return [StateEntry(client_id=int(r[0]), seq=int(r[1]), detector=str(r[2]), kind=str(r[3]),
                           payload=bytes(r[4]), created_at=float(r[5])) for r in rows]

    def save_detector_state(self, client_id: int, *, seq: int, detector: str, kind: str, payload: bytes,
                            ledger_id: int | None = None, flagged: int = 0) -> None:
        """Append entry ``seq`` of the client's detector state and, for an answered request (``ledger_id``),
        its ``flagged`` count, in one transaction; :class:`DetectorStateConflict` (nothing written) when the
        newest entry is not ``seq − 1``: another process saved a state for this client since it was loaded.
        The client's row is locked first (PostgreSQL ``FOR UPDATE``; SQLite's write lock covers the database),
        so two processes cannot both append ``seq``."""
        if kind not in ("full", "delta"):
            raise ValueError(f"detector state kind must be 'full' or 'delta', got {kind!r}")
        if flagged < 0:
            raise ValueError(f"a request cannot hold {flagged} flagged queries")
        with self._transaction(write=True) as cur:
            self._exec(cur, f"SELECT id FROM clients WHERE id = ?{self._for_update}", (int(client_id),)).fetchone()
            row = self._exec(cur, "SELECT COALESCE(MAX(seq), 0) FROM detector_state WHERE client_id = ?",
                             (int(client_id),)).fetchone()
            if int(row[0]) != int(seq) - 1:
                raise DetectorStateConflict(f"detector state of client {client_id} is at entry {int(row[0])}, "
                                            f"not {int(seq) - 1}")
            self._exec(cur, "INSERT INTO detector_state (client_id, seq, detector, kind, payload, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                       (int(client_id), int(seq), detector, kind, payload, time.time()))
            if ledger_id is not None and flagged:
                self._exec(cur, "INSERT INTO flags (ledger_id, client_id, n) SELECT id, client_id, ? FROM ledger "
                                "WHERE id = ?", (int(flagged), int(ledger_id)))

    def client_named(self, name: str) -> ClientInfo | None:
        """The client called ``name``: its active key's, else the most recently revoked one's (``None``)."""
        with self._transaction(write=False) as cur:
            row = self._exec(cur, f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE name = ? "
                                  "ORDER BY (revoked_at IS NULL) DESC, id DESC LIMIT 1", (name,)).fetchone()
        return self._client(row)

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


def _redact(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
