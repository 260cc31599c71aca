"""A stateful detector's per-client state, kept in the server's store: loaded before a request, saved after it.

The store keeps each client's state as a journal (:meth:`~modelsteal.serve.store.Store.save_detector_state`):
entry 1, 2, … of the client, each either a ``delta`` (what the request changed, from the detector's
``state_delta``, so a save does not grow with the client's history) or, for a detector without deltas, a
``full`` ``state_dict``. :class:`DetectorJournal` remembers which entry each client's in-memory state is at:

- :meth:`DetectorJournal.load`: before a request, the newest entry's number is read; when this process is
  behind (a restart, or another worker answered the client meanwhile), the missing entries are replayed;
- :meth:`DetectorJournal.save`: after the request, the change is appended as the next entry, together with the
  request's flag count, in one transaction; if another process appended that entry first
  (:class:`~modelsteal.serve.store.DetectorStateConflict`), the in-memory state is dropped and the caller
  scores the request again on the reloaded state.

So several workers sharing one store see one state per client, and a ``kill -9`` loses nothing that was
answered: an answer is sent only after its entry has committed. A failed request drops the client's in-memory
state (it may be half updated); the next request reloads it.

A server's batcher scores many requests before one transaction commits them all: :meth:`DetectorJournal.capture`
takes request's entry right after it is scored (the in-memory state moves on), and
:meth:`Store.commit_batch <modelsteal.serve.store.Store.commit_batch>` writes the batch's entries; a client
whose entries could not be written is :meth:`~DetectorJournal.forget`-ten and its requests scored again.

*Compaction*: every ``snapshot_every``-th entry of a client is a ``full`` snapshot of its state (for an
incremental detector, :meth:`state_snapshot`: the compact whole-state delta), written with ``compact`` so
the store drops the client's older entries in the same transaction. A restart then replays at most one
snapshot and ``snapshot_every − 1`` deltas per client, however long its history.
"""

from __future__ import annotations

import json
from typing import Any

from modelsteal.detectors.base import Detector
from modelsteal.serve.store import Store


def detector_spec(detector: Detector) -> str:
    """The JSON spec (name and constructor options) stored with every entry, so ``keys show`` can rebuild it."""
    options = detector.options() if hasattr(detector, "options") else {}
    return json.dumps({"name": detector.name or type(detector).__name__, "options": options}, sort_keys=True)


class DetectorJournal:
    """Keeps ``detector``'s per-client state in step with ``store`` (clients are keyed by name in the
    detector, as the API's ``client=``, and by id in the store; a new id for a known name starts afresh)."""

    def __init__(self, detector: Detector, store: Store, *, snapshot_every: int | None = 1000) -> None:
        if snapshot_every is not None and snapshot_every < 1:
            raise ValueError(f"snapshot_every must be >= 1 (or None: never), got {snapshot_every}")
        self.detector = detector
        self.store = store
        self.spec = detector_spec(detector)
        self.incremental = hasattr(detector, "state_delta") and hasattr(detector, "apply_state_delta")
        self.snapshot_every = snapshot_every
        self._at: dict[int, int] = {}  # client id -> journal entry the in-memory state is at
        self._names: dict[int, str] = {}

    def load(self, client_id: int, name: str) -> None:
        """Bring ``name``'s in-memory state up to the store's newest entry."""
        newest = self.store.detector_version(client_id)
        at = self._at.get(client_id)
        if at == newest:
            return
        if at is None or at > newest:
            self.detector.reset(name)
            at = 0
        for entry in self.store.detector_entries(client_id, after=at):
            replay(self.detector, name, entry.kind, entry.payload)
            at = entry.seq
        if at != newest:  # entries appended between the two reads: take those too
            for entry in self.store.detector_entries(client_id, after=at):
                replay(self.detector, name, entry.kind, entry.payload)
                at = entry.seq
        self._at[client_id] = at
        self._names[client_id] = name

    def save(self, client_id: int, name: str, *, ledger_id: int | None, flagged: int) -> None:
        """Append what the last request changed (and its flag count) as the client's next entry; on a
        :class:`~modelsteal.serve.store.DetectorStateConflict` the in-memory state is forgotten and the error
        propagates (the caller reloads and scores again)."""
        seq = self._at.get(client_id, 0) + 1
        if self.incremental:
            kind, state = "delta", self.detector.state_delta(name)  # type: ignore[attr-defined]
        else:
            kind, state = "full", self.detector.state_dict(name)
        payload = json.dumps(state, separators=(",", ":"), allow_nan=False).encode("utf-8")
        try:
            self.store.save_detector_state(client_id, seq=seq, detector=self.spec, kind=kind, payload=payload,
                                           ledger_id=ledger_id, flagged=flagged)
        except BaseException:
            self.forget(client_id)
            raise
        self._at[client_id] = seq

    def capture(self, client_id: int, name: str) -> tuple[tuple[int, str, str, bytes], bool]:
        """The client's next journal entry ``(seq, spec, kind, payload)`` for what its last request changed, and
        whether it is a compacting snapshot (every ``snapshot_every``-th entry). The in-memory state counts it
        as saved; if the batch holding it cannot be written, call :meth:`forget`."""
        seq = self._at.get(client_id, 0) + 1
        snapshot = self.snapshot_every is not None and seq % self.snapshot_every == 0
        if snapshot:
            kind = "full"
            state = (self.detector.state_snapshot(name) if hasattr(self.detector, "state_snapshot")
                     else self.detector.state_dict(name))
        elif self.incremental:
            kind, state = "delta", self.detector.state_delta(name)  # type: ignore[attr-defined]
        else:
            kind, state = "full", self.detector.state_dict(name)
        payload = json.dumps(state, separators=(",", ":"), allow_nan=False).encode("utf-8")
        self._at[client_id] = seq
        self._names[client_id] = name
        return (seq, self.spec, kind, payload), snapshot

    def forget(self, client_id: int) -> None:
        """Drop the client's in-memory state: the next :meth:`load` rebuilds it from the store."""
        self._at.pop(client_id, None)
        name = self._names.pop(client_id, None)
        if name is not None:
            self.detector.reset(name)


def replay(detector: Detector, client: str, kind: str, payload: bytes) -> None:
    """Apply one stored entry to ``detector``'s state for ``client`` (a ``full`` entry replaces the state: a
    ``state_dict``, or an incremental detector's compact snapshot, a delta from the empty state)."""
    state: dict[str, Any] = json.loads(payload)
    if kind == "full" and state.get("kind") == "delta":
        detector.reset(client)
        detector.apply_state_delta(client, state)  # type: ignore[attr-defined]
    elif kind == "full":
        detector.load_state_dict(client, state)
    else:
        detector.apply_state_delta(client, state)  # type: ignore[attr-defined]


def stored_summary(store: Store, client_id: int) -> dict[str, Any] | None:
    """The client's detector state rebuilt from the store (no victim needed) and summarised: the detector's
    spec, the number of journal entries, and the detector's ``summary`` (``None`` when nothing was saved)."""
    from modelsteal.detectors.base import make_detector

    entries = store.detector_entries(client_id)
    if not entries:
        return None
    spec = json.loads(entries[-1].detector)
    detector = make_detector(spec["name"], **spec.get("options", {}))
    for entry in entries:
        replay(detector, "client", entry.kind, entry.payload)
    summary = detector.summary("client") if hasattr(detector, "summary") else {
        "state_keys": sorted(detector.state_dict("client"))}
    return {"name": spec["name"], "options": spec.get("options", {}), "entries": store.detector_version(client_id),
            "summary": summary}
