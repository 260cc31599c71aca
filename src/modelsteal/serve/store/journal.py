"""What the store keeps beside the ledger's reservations: detector flags and refusals, watermark records, the
per-client detector-state journal, and reads of the ledger. A mixin of :class:`~modelsteal.serve.store.base.Store`,
whose back-end hooks (``_transaction``, ``_exec``, ``_for_update``) it uses."""

from __future__ import annotations

import time
from typing import Any

from modelsteal.serve.store.records import DetectorStateConflict, LedgerEntry, StateEntry


class JournalMethods:
    """Flags, watermarks, detector state and ledger reads (a mixin of :class:`~modelsteal.serve.store.base.Store`)."""

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
