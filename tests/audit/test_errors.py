"""Bad input to `modelsteal audit`: one line on stderr, exit 2, before any clone is trained (no points cached)."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import one_line_error
from serve_helpers import ServerProcess

from modelsteal.serve.store import open_store


def _audit(out, target, *extra):
    return ["audit", "--target", target, "--pool", "sample-patches", "--out", out, "--quiet", *extra]


def _image_folder(root, *, classes: int, mode: str, size: int = 8):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(3):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / f"class{c:02d}" / f"{i}.png")
    return root


def test_budget_below_the_first_rung(capsys, tmp_path, victim_path):
    one_line_error(capsys, _audit(tmp_path / "o", victim_path, "--budget", "99"), "below the ladder's first rung",
                   "--budget 100")
    assert not (tmp_path / "o").exists()


def test_pool_with_the_wrong_input_shape(capsys, tmp_path, victim_path):
    rgb = _image_folder(tmp_path / "rgb", classes=2, mode="RGB")
    argv = ["audit", "--target", victim_path, "--pool", f"image-folder:{rgb}", "--out", tmp_path / "o", "--quiet"]
    one_line_error(capsys, argv, "--pool image-folder", "(3, 8, 8)", "(1, 8, 8)")
    assert not (tmp_path / "o" / "points").exists()


def test_test_labels_outside_the_targets_classes(capsys, tmp_path, victim_path):
    gray = _image_folder(tmp_path / "gray", classes=12, mode="L")
    one_line_error(capsys, _audit(tmp_path / "o", victim_path, "--test", f"image-folder:{gray}"),
                   "labels 0..11", "10 classes")
    assert not (tmp_path / "o" / "points").exists()


def test_a_test_set_of_another_input_size_is_refused_not_resized(capsys, tmp_path, victim_path):
    """A 16x16 test set would be shrunk to the digits victim's 8x8 and measure it on data it never saw."""
    gray16 = _image_folder(tmp_path / "gray16", classes=10, mode="L", size=16)
    one_line_error(capsys, _audit(tmp_path / "o", victim_path, "--test", f"image-folder:{gray16}"),
                   "1x16x16 inputs", "the target takes 1x8x8", "never resized")
    assert not (tmp_path / "o" / "points").exists()
    gray8 = _image_folder(tmp_path / "gray8", classes=12, mode="L", size=8)  # same size: on to the label check
    one_line_error(capsys, _audit(tmp_path / "o", victim_path, "--test", f"image-folder:{gray8}"), "labels 0..11")


def test_unknown_pool_and_attacker(capsys, tmp_path, victim_path):
    argv = ["audit", "--target", victim_path, "--pool", "nonsense", "--out", tmp_path / "o"]
    one_line_error(capsys, argv, "unknown source 'nonsense'", "sample-patches")
    one_line_error(capsys, _audit(tmp_path / "o", victim_path, "--attacks", "knockof"), "unknown attacker(s) knockof")


def test_unreachable_url(capsys, tmp_path):
    one_line_error(capsys, _audit(tmp_path / "o", "http://127.0.0.1:9", "--key", "k"), "127.0.0.1:9")


@pytest.fixture(scope="module")
def server(victim_path, tmp_path_factory):
    """A real `modelsteal serve` of the victim on loopback, with keys of 500 and of 1,200 queries."""
    tmp = tmp_path_factory.mktemp("server")
    store_url = str(tmp / "ledger.db")
    with open_store(store_url) as store:
        _, small = store.create_key(name="small", budget=500)
        _, large = store.create_key(name="large", budget=1200)
        _, spent = store.create_key(name="spent-midway", budget=500)
    with ServerProcess(model=victim_path, store=store_url, log_path=tmp / "server.log") as srv:
        yield srv, small, large, spent


def test_key_without_enough_budget_for_the_ladder(capsys, tmp_path, server):
    srv, key, _, _ = server
    line = one_line_error(capsys, _audit(tmp_path / "o", srv.url, "--key", key, "--budget", "316", "--test", "digits",
                                         "--attacks", "knockoff-random", "knockoff-argmax"),
                          "the key has 500 queries left")
    # 2 attackers x (100 + 316) + the 259 evaluation inputs
    assert "needs 1091" in line
    from modelsteal.serve.client import HTTPBlackBox

    with HTTPBlackBox(srv.url, key) as bb:
        assert bb.usage()["queries"] == 0  # refused before a single query


def test_url_audit_within_the_keys_budget(tmp_path, server):
    """The same server, an audit that fits: the key pays for the queries it reports, no defense comparison."""
    from modelsteal import audit

    srv, _, key, _ = server
    report = audit(srv.url, key=key, pool=["sample-patches"], budget=100, attacks=["knockoff-random"], out=tmp_path,
                   progress=False, backend="serial")
    from modelsteal.serve.client import HTTPBlackBox

    with HTTPBlackBox(srv.url, key) as bb:
        used = bb.usage()["queries"]
    held_out = 1000  # no --test: agreement on 1,000 held-out pool inputs, asked once
    assert used == 100 + held_out
    assert report["defenses"] == [] and report["labelled"] is False and report["victim_accuracy"] == 1.0
    (a,) = report["attacks"]
    assert a["curve"][0]["clone_accuracy"] is None and 0 < a["curve"][0]["fidelity"] <= 1


def test_a_refusal_midway_reports_what_was_measured(capsys, tmp_path, server, monkeypatch):
    """The key's budget runs out mid-audit (as when someone else spends it after the check): the clones measured
    so far are reported and cached, and the audit ends with one line naming the refusal."""
    import json

    import modelsteal.audit.core as core

    srv, _, _, key = server
    monkeypatch.setattr(core, "check_key_budget", lambda target, *, needed: None)  # the spender came after it
    # 259 evaluation queries, then 100 for the first rung: 141 left, fewer than the second rung's 316
    line = one_line_error(capsys, _audit(tmp_path / "o", srv.url, "--key", key, "--budget", "316", "--test",
                                         "digits", "--attacks", "knockoff-random", "--backend", "serial"),
                          "refused a query", "after 1 of 2 clones", "report.html")
    assert "KeyBudgetExhaustedError" in line
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [(r["attack"], r["budget"]) for r in report["records"]] == [("knockoff-random", 100)]
    assert (tmp_path / "o" / "report.html").exists() and len(list((tmp_path / "o" / "points").glob("*.json"))) == 1
