"""An attacker refused by a detector (``--response refuse``), in-process and over HTTP: one line saying so, what
it had bought reported (and ``--json`` written), exit code 3; the Python API raises ``QueryRefusedError`` with
the partial result attached (issue 29, defect 1). ``attack`` reports ``detected`` / ``queries_to_detection``
against a detector (defect 6, the client half).

The victim is a digits MLP behind PRADA (its own threshold, δ = 0.95); JBDA's synthetic queries are flagged
from its 214th query (the first two 100-row batches pass, the third is refused)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from cli_helpers import one_line_error

from modelsteal import PredictionAPI, QueryRefusedError
from modelsteal.attacks.base import PartialResult, attack_class
from modelsteal.cli.main import main
from modelsteal.detectors import make_detector
from modelsteal.models import save_checkpoint
from modelsteal.training import TrainConfig

REFUSED_EXIT = 3


def _prada(victim, digits):
    det = make_detector("prada")
    det.fit(victim, digits, generator=torch.Generator().manual_seed(0))
    return det


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, digits_victim):
    return save_checkpoint(digits_victim, tmp_path_factory.mktemp("v") / "victim.pt", dataset="digits")


def _jbda(digits):
    return attack_class("jbda")(seed_set=digits.x_train[:100], clone="mlp", train=TrainConfig(epochs=2),
                                query_batch_size=100)


def test_the_python_api_raises_with_what_was_bought(digits_victim, digits):
    api = PredictionAPI(digits_victim, detector=_prada(digits_victim, digits), response="refuse")
    with pytest.raises(QueryRefusedError) as info:
        _jbda(digits)(api, budget=1000, seed=0)
    e = info.value
    assert (e.flagged, e.rows, e.detector) == (67, 100, "prada")
    part = e.partial
    assert isinstance(part, PartialResult)
    assert part.queries == 200 == api.queries("default") == len(part.transfer_x) == len(part.transfer_y)
    assert part.budget == 1000
    # the answers are the victim's own (no defense): exactly what the API returned for those inputs
    torch.testing.assert_close(part.transfer_y, api.posteriors(part.transfer_x))
    # JBDA's first 100 queries are its seed set (in its own order)
    dist = torch.cdist(part.transfer_x[:100].flatten(1), digits.x_train[:100].flatten(1))
    assert float(dist.min(dim=1).values.max()) == 0.0 and float(dist.min(dim=0).values.max()) == 0.0


def _the_line(err: str) -> str:
    """The one line on stderr besides the progress bars (closed bars leave their last state on a line)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and "it/s]" not in ln and "%|" not in ln]
    assert len(lines) == 1, err
    assert lines[0].startswith("modelsteal attack: refused: "), err
    return lines[0]


ARGS = ["--attack", "jbda", "--budget", "1000", "--clone", "mlp", "--epochs", "2",
        "--attack-option", "query_batch_size=100", "--transfer", "dataset:digits"]


def test_cli_refused_in_process_is_one_line_with_what_was_bought(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["attack", "--target", str(ckpt), *ARGS, "--detector", "prada", "--detector-tnr", "none",
               "--response", "refuse", "--json", str(out)])
    cap = capsys.readouterr()
    assert rc == REFUSED_EXIT, cap.err
    line = _the_line(cap.err)
    assert "after 200 of --budget 1000 queries" in line
    assert re.search(r"'prada' flagged \d+ of the batch's 100 rows", line)
    assert "no clone trained" in line and "exit code 3" in line
    report = json.loads(out.read_text())
    assert report["refused"] is True and report["queries"] == 200 and report["budget"] == 1000
    # the first flag is a row of the refused third batch; the refused rows' flags are reported apart
    q = report["queries_to_detection"]
    assert report["detected"] is True and 200 < q <= 300
    third = report["refused_batch_flagged"]
    assert report["flagged_queries"] == 0 and f"flagged {third} of" in line and report["refused_batch_rows"] == 100
    assert "attacker_accuracy" not in report
    assert "queries: 200" in cap.out and "detected: yes" in cap.out and f"queries_to_detection: {q}" in cap.out
    # the same attack without refusals: detected at the same query, and the attack goes on to its budget
    rc = main(["attack", "--target", str(ckpt), *ARGS, "--detector", "prada", "--detector-tnr", "none",
               "--json", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    report = json.loads(out.read_text())
    assert report["queries"] == 1000 and report["refused"] is False
    assert report["detected"] is True and report["queries_to_detection"] == q
    assert report["flagged_queries"] >= third  # the third batch, answered this time, is flagged as before
    assert "attacker_accuracy" in report and "detected: yes" in cap.out and f"queries_to_detection: {q}" in cap.out


def test_cli_without_a_detector_claims_nothing_about_detection(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    # without a detector nothing is claimed about detection
    rc = main(["attack", "--target", str(ckpt), *ARGS, "--budget", "200", "--json", str(out)])
    assert rc == 0
    assert "detected" not in json.loads(out.read_text())


def test_cli_detector_flags_are_checked_before_any_work(ckpt, capsys):
    one_line_error(capsys, ["attack", "--target", ckpt, *ARGS, "--response", "refuse"], "--response", "--detector")
    one_line_error(capsys, ["attack", "--target", ckpt, *ARGS, "--detector", "pradda"], "unknown detector")
    one_line_error(capsys, ["attack", "--target", "http://127.0.0.1:1", "--key", "k", *ARGS, "--detector", "prada"],
                   "--detector", "checkpoint")


def test_cli_refused_over_http(ckpt, tmp_path, capsys):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    from serve_helpers import ServerProcess

    from modelsteal.serve.store import open_store

    store_url = str(tmp_path / "ledger.db")
    with open_store(store_url) as store:
        _, key = store.create_key(name="attacker", budget=5000)
    out = tmp_path / "r.json"
    args = ["--detector", "prada", "--detector-tnr", "none", "--response", "refuse"]
    with ServerProcess(model=ckpt, store=store_url, log_path=tmp_path / "server.log", args=args) as server:
        rc = main(["attack", "--target", server.url, "--key", key, *ARGS, "--json", str(out)])
    cap = capsys.readouterr()
    assert rc == REFUSED_EXIT, cap.err
    line = _the_line(cap.err)
    assert "after 200 of --budget 1000 queries" in line
    assert re.search(r"'prada' flagged \d+ of the batch's 100 rows", line)
    report = json.loads(out.read_text())
    assert report["refused"] is True and report["queries"] == 200 and report["detected"] is True
    assert report["server_queries"] == 200  # the key's ledger: the refused batch was not counted
