"""The records and errors of the key store (:mod:`modelsteal.serve.store`): what a client, a ledger entry, a
detector-state entry and an idempotent request are, and what the store raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelsteal.blackbox import BudgetExceededError


def bucket_capacity(rate: float) -> float:
    """Burst capacity of a rate-limit bucket: one second's worth of queries, at least one."""
    return max(1.0, float(rate))


class AuthenticationError(PermissionError):
    """A missing, unknown or revoked API key. ``code`` is ``missing_key``, ``invalid_key`` or ``revoked_key``."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class BudgetExhaustedError(BudgetExceededError):
    """The batch would take the client past its query budget; nothing was recorded."""


class DetectorStateConflict(RuntimeError):
    """Another server process saved a newer detector state for the client meanwhile; nothing was written
    (the caller reloads the state and scores the request again)."""


class LedgerWriteError(RuntimeError):
    """The transaction recording a request failed; nothing of it was recorded (and it was not answered)."""


class IdempotentReplay(Exception):  # noqa: N818 - not an error: the request was answered before
    """The request's ``Idempotency-Key`` names a request this client made within the window and that was
    answered (``status`` 200, ``answer`` the stored answer) or refused (``status`` 403): nothing was recorded,
    the stored outcome is the answer."""

    def __init__(self, *, status: int, answer: bytes) -> None:
        super().__init__(f"replay of an earlier request (status {status})")
        self.status = status
        self.answer = answer


class IdempotencyConflict(RuntimeError):
    """The ``Idempotency-Key`` is in use by a request still in flight (``code`` ``idempotency_in_progress``,
    HTTP 409) or was used for a request with other inputs (``idempotency_key_reused``, HTTP 422)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class IdempotencyKey:
    """A client-chosen key for one request (the ``Idempotency-Key`` header), a fingerprint of its inputs, and
    how long (seconds) an answered request replays its stored answer to a retry carrying the same key."""

    key: str
    fingerprint: str
    window_s: float = 86_400.0


@dataclass
class RequestRecord:
    """What one answered (or refused) request of a batch leaves in the store, written for the whole batch in
    one transaction by :meth:`Store.commit_batch` before any of them is answered.

    ``journal``: the client's next detector-state entry ``(seq, detector spec, kind, payload)``; a ``full``
    entry with ``compact`` drops the client's older entries (a snapshot). ``refused``: the detector's
    ``refuse`` response refused it (kept as a refusal with its ``flagged`` rows; the ledger entry is taken
    back). ``answer``: stored with the request's idempotency key, for a retry to replay."""

    client_id: int
    ledger_id: int
    rows: int
    flagged: int = 0
    refused: bool = False
    journal: tuple[int, str, str, bytes] | None = None
    compact: bool = False
    watermarks: bytes | None = None
    idempotency_key: str | None = None
    answer: bytes | None = None


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
        return min(bucket_capacity(self.rate_limit), self.tokens + max(0.0, now - self.tokens_at) * self.rate_limit)

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
class StateEntry:
    """One saved step of a client's detector state: entry ``seq`` (1, 2, … per client) of ``kind`` ``full``
    (a whole ``state_dict``) or ``delta`` (what changed since entry ``seq − 1``), as JSON bytes ``payload``;
    ``detector`` is the JSON spec (name and options) of the detector that wrote it."""

    client_id: int
    seq: int
    detector: str
    kind: str
    payload: bytes
    created_at: float


@dataclass(frozen=True)
class LedgerEntry:
    """One answered request: ``n`` queries for ``client_id`` at ``created_at`` (unix seconds)."""

    id: int
    client_id: int
    n: int
    created_at: float
