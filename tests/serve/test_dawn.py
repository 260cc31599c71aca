"""DAWN served: the watermark records go into the server's store with each answered request, survive a restart
(a new process with an empty DAWN), stay per client, leave with a released ledger entry, and come out as the
records file `modelsteal verify` reads (`modelsteal keys watermarks`)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from cli_helpers import one_line_error  # noqa: E402

from modelsteal import PredictionAPI  # noqa: E402
from modelsteal.cli.main import main  # noqa: E402
from modelsteal.defenses.dawn import DAWN, load_records  # noqa: E402
from modelsteal.serve.app import create_app  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402
from modelsteal.serve.watermarks import export_records  # noqa: E402
from serve.test_detector import _blackbox  # noqa: E402


def _grid(n: int, *, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g).float() / 255


def _app(store, victim):
    dawn = DAWN(rate=0.3, key="secret")
    return create_app(PredictionAPI(victim, defense=dawn), store=store), dawn


def _as_set(records) -> set[tuple[tuple[int, ...], int]]:
    q = torch.round(records.inputs.double().reshape(len(records.inputs), -1) * 255).long()
    return {(tuple(r.tolist()), int(w)) for r, w in zip(q, records.labels, strict=True)}


def _state_set(state) -> set[tuple[tuple[int, ...], int]]:
    return {(tuple(qi), int(w)) for qi, w in zip(state["inputs"], state["labels"], strict=True)}


def test_records_are_stored_per_request_and_survive_a_restart(tmp_path, digits_victim, capsys):
    # Bugs caught: records kept only in the process (the store empty, or emptied by a restart); Bob's queries in
    # Alice's records; a repeated input recorded twice; the export's header or labels not what verify accepts.
    path = tmp_path / "ledger.db"
    store = open_store(path)
    _, alice = store.create_key(name="alice")
    _, bob = store.create_key(name="bob")
    app, dawn = _app(store, digits_victim)
    xa, xb = _grid(60, seed=1), _grid(40, seed=2)
    _blackbox(app, alice).query(xa[:30])
    _blackbox(app, alice).query(torch.cat([xa[:10], xa[30:]]))  # 10 repeated inputs
    _blackbox(app, bob).query(xb)
    first_alice = dawn.state_dict("alice")
    assert 5 < len(first_alice["labels"]) < 35  # ≈ 0.3 of 60 distinct inputs
    store.close()

    store = open_store(path)  # a restart: a new process, a new DAWN with empty records
    app2, dawn2 = _app(store, digits_victim)
    xa2 = _grid(30, seed=3)
    _blackbox(app2, alice).query(torch.cat([xa2, xa[:10]]))  # the new process records xa[:10]'s marks again
    out, n = export_records(store, tmp_path / "alice.jsonl", names=["alice"])
    got = _as_set(load_records(out, key="secret"))
    assert got == _state_set(first_alice) | _state_set(dawn2.state_dict("alice"))
    assert n == len(got)  # each (client, input) once, though stored twice
    assert len(store.watermarks()) == 4
    only_bob = _as_set(load_records(export_records(store, tmp_path / "bob.jsonl", names=["bob"])[0], key="secret"))
    assert only_bob == _state_set(dawn.state_dict("bob")) and not only_bob & got

    assert main(["keys", "watermarks", "--store", str(path), "--out", str(tmp_path / "all.jsonl")]) == 0
    assert f"wrote {n + len(only_bob)} watermarked queries" in capsys.readouterr().out
    assert main(["keys", "show", "--store", str(path), "--name", "alice"]) == 0
    assert json.loads(capsys.readouterr().out)["watermarked"] == n
    store.close()


def test_a_released_entry_takes_its_records_with_it(tmp_path):
    store = open_store(tmp_path / "ledger.db")
    client, _ = store.create_key(name="alice")
    entry, _ = store.reserve(client.id, 3)
    kept, _ = store.reserve(client.id, 2)
    store.record_watermarks(entry.id, b'{"header": {}, "records": [[[1, 2], 3]]}')
    store.record_watermarks(kept.id, b'{"header": {}, "records": [[[4, 5], 6]]}')
    store.release(entry.id)
    assert [p for _, p in store.watermarks()] == [b'{"header": {}, "records": [[[4, 5], 6]]}']
    store.close()


def test_exporting_nothing_or_an_unknown_client_is_one_line(tmp_path, capsys):
    path = tmp_path / "ledger.db"
    store = open_store(path)
    store.create_key(name="alice")
    store.close()
    out = tmp_path / "wm.jsonl"
    one_line_error(capsys, ["keys", "watermarks", "--store", path, "--out", out], "holds no watermark records",
                   "--defense dawn")
    one_line_error(capsys, ["keys", "watermarks", "--store", path, "--out", out, "--name", "bob"],
                   "no client named 'bob'", "alice")
    assert not out.exists()
