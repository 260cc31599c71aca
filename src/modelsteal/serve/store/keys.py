"""Key management of the store: creating, listing, revoking and authenticating clients' API keys (keys are
stored hashed only). A mixin of :class:`~modelsteal.serve.store.base.Store`, whose back-end hooks
(``_transaction``, ``_exec``, ``_insert_returning_id``) it uses."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any

from modelsteal.serve.store.records import AuthenticationError, ClientInfo, bucket_capacity

KEY_PREFIX = "msk_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

_CLIENT_COLUMNS = (
    "id, name, key_prefix, budget, rate_limit, queries, requests, tokens, tokens_at, created_at, revoked_at"
)


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


class KeyMethods:
    """Clients and their keys (a mixin of :class:`~modelsteal.serve.store.base.Store`)."""

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

    def client_named(self, name: str) -> ClientInfo | None:
        """The client called ``name``: its active key's, else the most recently revoked one's (``None``)."""
        with self._transaction(write=False) as cur:
            row = self._exec(cur, f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE name = ? "
                                  "ORDER BY (revoked_at IS NULL) DESC, id DESC LIMIT 1", (name,)).fetchone()
        return self._client(row)
