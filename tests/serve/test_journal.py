"""The detector-state journal: replay from the newest ``full`` entry (issue 29's surviving planted bug: replay
starting one entry late, which no test caught because none wrote a ``full`` entry), and compaction into
snapshots (entries before a snapshot dropped; a reader behind the snapshot, a fresh process and a restarted
server all rebuild the exact state)."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest
import torch
from torch import Tensor

from modelsteal import PredictionAPI
from modelsteal.detectors import make_detector
from modelsteal.detectors.base import Detector
from modelsteal.serve.batcher import BatchRunner, Job
from modelsteal.serve.detector_state import DetectorJournal, stored_summary
from modelsteal.serve.store import open_store


class RowCounter(Detector):
    """Test-only stateful detector WITHOUT deltas (so its journal is all ``full`` entries): a client's state is
    the number of rows and the sum of the rows' first values it has sent; scores are that running count."""

    name = "row-counter"
    stateful = True

    def __init__(self) -> None:
        super().__init__()
        self.state: dict[str, dict[str, Any]] = {}

    def score(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        s = self.state.setdefault(client, {"rows": 0, "total": 0.0})
        s["rows"] += len(x)
        s["total"] += float(x.flatten(1)[:, 0].double().sum())
        return torch.full((len(x),), float(s["rows"]))

    def state_dict(self, client: str) -> dict[str, Any]:
        return dict(self.state.get(client, {}))

    def load_state_dict(self, client: str, state: dict[str, Any]) -> None:
        self.state[client] = dict(state)

    def reset(self, client: str) -> None:
        self.state.pop(client, None)


def _batches(n: int, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1 + i % 3, 1, 8, 8, generator=g) for i in range(n)]


def _serve(store, api, journal, client, batches) -> None:
    """Answer ``batches`` of ``client`` one request per batch, as the server does (reserve, batch, commit)."""
    runner = BatchRunner(api, store, journal=journal, lock=threading.Lock())
    for x in batches:
        job = Job(client, x)
        runner.run([job])
        assert job.error is None, job.error


def test_replay_of_full_entries_starts_at_the_newest_one(tmp_path, digits_victim):
    # Bug caught: detector_entries starting one entry after the newest full entry (seq > F instead of >= F):
    # the newest full state is skipped and the restored count is that of an older entry, or nothing.
    store = open_store(tmp_path / "ledger.db")
    client, _ = store.create_key(name="a")
    det = RowCounter()
    det.victim, det.threshold = digits_victim, 1e9
    journal = DetectorJournal(det, store, snapshot_every=None)
    batches = _batches(5)
    _serve(store, PredictionAPI(digits_victim, detector=det), journal, client, batches)
    kinds = [e.kind for e in store.detector_entries(client.id)]
    assert kinds == ["full"] and store.detector_version(client.id) == 5  # the newest full entry, no older one
    fresh = RowCounter()
    DetectorJournal(fresh, store).load(client.id, "a")
    expected = {"rows": sum(map(len, batches)), "total": sum(float(x.flatten(1)[:, 0].double().sum()) for x in batches)}
    assert fresh.state_dict("a") == expected == det.state_dict("a")
    # a reader two entries behind replays from the newest full entry too
    behind = RowCounter()
    j = DetectorJournal(behind, store)
    j._at[client.id] = 3  # what load() left after entry 3 in a worker that has not seen 4 and 5
    behind.load_state_dict("a", {"rows": 0, "total": 0.0})
    j.load(client.id, "a")
    assert behind.state_dict("a") == expected
    store.close()


@pytest.fixture
def prada_api(digits, digits_victim):
    def make() -> PredictionAPI:
        det = make_detector("prada", min_stream=10, delta=0.9).fit(digits_victim, digits)
        det.threshold = 0.1
        return PredictionAPI(digits_victim, detector=det)
    return make


def test_compaction_keeps_one_snapshot_and_the_exact_state(tmp_path, digits, prada_api):
    # Bugs caught: a snapshot that is not the whole state (a delta only), older entries not dropped (replay
    # stays unbounded), entries dropped without a snapshot (state lost), a snapshot that leaves the next delta
    # counting the snapshot's rows twice, a reader behind the snapshot applying its deltas to the wrong base.
    store = open_store(tmp_path / "ledger.db")
    client, _ = store.create_key(name="a")
    api = prada_api()
    journal = DetectorJournal(api.detector, store, snapshot_every=4)
    xs = list(torch.split(digits.x_train[:45], [1 + i % 5 for i in range(15)]))  # 15 requests
    behind = prada_api()
    behind_journal = DetectorJournal(behind.detector, store, snapshot_every=4)
    _serve(store, api, journal, client, xs[:5])
    behind_journal.load(client.id, "a")  # a second worker that saw entries 1..5, then nothing
    _serve(store, api, journal, client, xs[5:])
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        kept = db.execute("SELECT seq, kind FROM detector_state WHERE client_id = ? ORDER BY seq",
                          (client.id,)).fetchall()
    assert kept == [(12, "full"), (13, "delta"), (14, "delta"), (15, "delta")]
    ref = prada_api()
    for x in xs:
        ref.query(x, client="a")
    expected = ref.detector.state_dict("a")
    assert api.detector.state_dict("a") == expected
    fresh = prada_api()
    DetectorJournal(fresh.detector, store).load(client.id, "a")
    assert fresh.detector.state_dict("a") == expected
    behind_journal.load(client.id, "a")
    assert behind.detector.state_dict("a") == expected
    assert stored_summary(store, client.id)["entries"] == 15
    store.close()
