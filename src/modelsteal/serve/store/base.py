"""The back-end-independent part of the key store: the SQL every back-end runs (records and errors:
:mod:`modelsteal.serve.store.records`; keys: :mod:`~modelsteal.serve.store.keys`; flags, watermarks, detector
state and ledger reads: :mod:`~modelsteal.serve.store.journal`).

:class:`Store` holds the logic — creating and revoking keys, authenticating, and :meth:`Store.reserve`,
the one write on the query path (key, budget and rate limit checked and the ledger row appended in a
single transaction). A back-end supplies only a transaction (``_transaction``), an INSERT that returns the
new id and ``close``; the SQL is shared, with ``?`` placeholders rewritten for drivers that want ``%s``.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from modelsteal.serve.store.journal import JournalMethods
from modelsteal.serve.store.keys import _CLIENT_COLUMNS, KeyMethods
from modelsteal.serve.store.records import (
    AuthenticationError,
    BudgetExhaustedError,
    ClientInfo,
    IdempotencyConflict,
    IdempotencyKey,
    IdempotentReplay,
    LedgerEntry,
    LedgerWriteError,
    RateLimitedError,
    RequestRecord,
)

SCHEMA_VERSION = "1"


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


class Store(KeyMethods, JournalMethods, ABC):
    """Clients, keys and the ledger. Use :func:`open_store`; every method is thread-safe. Key management is in
    :class:`~modelsteal.serve.store.keys.KeyMethods`, flags, watermarks, detector state and ledger reads in
    :class:`~modelsteal.serve.store.journal.JournalMethods`; the query path (reserve, commit, release) is here."""

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
