"""User mistakes around ``attack``, ``serve`` and ``keys`` are one line on stderr with exit code 2, and what a
defense costs is shown (defender accuracy and mean L1 on the test split) by ``attack`` and ``serve``.

Every mistake runs through the real command line (``modelsteal.cli.main.main``); the HTTP cases talk to a
real ``modelsteal serve`` process on loopback (see ``serve_helpers``).
"""

from __future__ import annotations

import json
import re
import socket
import time

import joblib
import numpy as np
import pytest
import torch
from cli_helpers import one_line_error
from sklearn.linear_model import LogisticRegression

from modelsteal.cli.main import main
from modelsteal.defenses import MAD
from modelsteal.defenses.reverse_sigmoid import ReverseSigmoid
from modelsteal.models import save_checkpoint

ATTACK_FAST = ["--budget", "64", "--epochs", "1"]




def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- server not there: fail at once --------------------------------------------------------------------
@pytest.mark.parametrize("url, words", [
    (None, ("cannot reach", "connection refused", "modelsteal serve")),
    ("http://no-such-host.invalid:8000", ("cannot reach", "no-such-host.invalid", "host name")),
])
def test_attack_on_a_server_that_is_not_there_fails_fast(capsys, url, words):
    url = url or f"http://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    one_line_error(capsys, ["attack", "--target", url, "--key", "k", "--dataset", "digits", *ATTACK_FAST], *words)
    assert time.monotonic() - t0 < 5.0  # the client's retries (8, backing off) would take ~29 s


# -- files that are not checkpoints ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def not_checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    x, y = np.random.default_rng(0).random((20, 3)), np.arange(20) % 2
    model = LogisticRegression().fit(x, y)
    joblib.dump(model, d / "model.joblib")
    joblib.dump(model, d / "compressed.joblib", compress=3)
    (d / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    torch.save({"layer": torch.nn.Linear(2, 2)}, d / "module.pt")  # pickles a module: not weights only
    torch.save({"w": torch.zeros(2)}, d / "weights.pt")  # a torch file without our metadata
    return d


@pytest.mark.parametrize("command", ["attack", "serve"])
@pytest.mark.parametrize("name, words", [
    ("passwd", ("cannot tell the format", "--format")),
    ("module.pt", ("torch file", "not a modelsteal checkpoint")),
    ("weights.pt", ("torch file", "not a modelsteal checkpoint", "--weights")),
])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(capsys, not_checkpoints, command, name, words):
    path = str(not_checkpoints / name)
    if command == "attack":
        argv = ["attack", "--target", path, "--dataset", "digits", *ATTACK_FAST]
    else:
        pytest.importorskip("uvicorn")
        pytest.importorskip("fastapi")
        argv = ["serve", "--model", path, "--store", str(not_checkpoints / "ledger.db"), "--port", "0"]
    line = one_line_error(capsys, argv, *words)
    assert "weights_only" not in line and "index out of range" not in line


@pytest.mark.parametrize("name", ["model.joblib", "compressed.joblib"])
def test_a_scikit_learn_model_for_another_task_is_one_line(capsys, not_checkpoints, name):
    """A scikit-learn pickle is a model file (issue 28); fitted on 3 features, it cannot answer digits."""
    one_line_error(capsys, ["attack", "--target", not_checkpoints / name, "--dataset", "digits", *ATTACK_FAST],
                   "dataset digits has inputs (1, 8, 8), the target takes (3,)")


# -- keys: only `create` makes a store -------------------------------------------------------------------
@pytest.mark.parametrize("action", [["list"], ["list", "--active"], ["revoke", "--name", "alice"],
                                    ["show", "--name", "alice"]])
@pytest.mark.parametrize("form", ["{}", "sqlite:///{}"])
def test_keys_reading_a_store_that_does_not_exist_is_an_error(capsys, tmp_path, monkeypatch, action, form):
    monkeypatch.chdir(tmp_path)
    store = form.format("typo.db")
    one_line_error(capsys, ["keys", action[0], "--store", store, *action[1:]], "typo.db", "does not exist",
                    "keys create")
    assert not (tmp_path / "typo.db").exists()


def test_keys_create_makes_the_store_and_list_reads_it(capsys, tmp_path):
    store = str(tmp_path / "new.db")
    assert main(["keys", "create", "--store", store, "--name", "alice", "--budget", "5"]) == 0
    assert main(["keys", "list", "--store", store]) == 0
    out = capsys.readouterr().out
    assert "alice" in out.splitlines()[-1] and " 5 " in out.splitlines()[-1]


# -- a live server with a setting that flips the labels ---------------------------------------------------
def _mad_cost(victim, data, **options) -> tuple[float, float]:
    """Defended top-1 accuracy and mean L1 of MAD on the test split, computed here without the CLI."""
    defense = MAD(**options)
    defense.bind(victim, input_shape=data.input_shape, num_classes=10)
    return _cost(victim, data, defense)


def _cost(victim, data, defense) -> tuple[float, float]:
    with torch.no_grad():
        clean = torch.softmax(victim(data.x_test), dim=1)
    defended = defense(data.x_test, clean)
    acc = (defended.argmax(dim=1) == data.y_test).double().mean().item()
    return acc, (defended.double() - clean.double()).abs().sum(dim=1).mean().item()


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory, digits_victim):
    return save_checkpoint(digits_victim, tmp_path_factory.mktemp("victim") / "victim.pt", dataset="digits")


@pytest.fixture(scope="module")
def mad_server(tmp_path_factory, digits_checkpoint):
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from serve_helpers import ServerProcess

    from modelsteal.serve.store import open_store

    d = tmp_path_factory.mktemp("serve")
    store_url = str(d / "ledger.db")
    with open_store(store_url) as store:
        keys = {name: store.create_key(name=name, budget=budget)[1]
                for name, budget in (("small", 50), ("shared", 300), ("revokee", None), ("flaky", None),
                                             ("spent", 3))}
        store.revoke("revokee")
    srv = ServerProcess(model=digits_checkpoint, store=store_url, log_path=d / "server.log",
                        args=["--defense", "mad", "--strength", "1.0"])
    with srv:
        srv.keys = keys
        yield srv


def test_serve_prints_the_defended_accuracy_and_warns_when_labels_flip(mad_server, digits_victim, digits):
    log = mad_server.log()
    m = re.search(r"defended top-1 accuracy ([\d.]+)% on (\d+) test examples of digits \(undefended ([\d.]+)%\), "
                  r"mean L1 distance ([\d.]+)", log)
    assert m, log
    acc, l1 = _mad_cost(digits_victim, digits, epsilon=1.0)
    clean_acc = (digits_victim(digits.x_test).argmax(dim=1) == digits.y_test).double().mean().item()
    assert float(m.group(1)) == pytest.approx(100 * acc, abs=0.051) and acc < 0.05  # MAD ε=1 flips them all
    assert int(m.group(2)) == len(digits.y_test)
    assert float(m.group(3)) == pytest.approx(100 * clean_acc, abs=0.051) and clean_acc > 0.9
    assert float(m.group(4)) == pytest.approx(l1, abs=5e-4)
    warning = [line for line in log.splitlines() if "warning" in line and "top-1 label" in line]
    assert len(warning) == 1 and "preserve_argmax=true" in warning[0], log


def test_serve_does_not_warn_when_labels_are_kept(capsys, tmp_path, digits_checkpoint, digits_victim, digits,
                                                 monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")

    class NoServer:  # the start-up report is all this test needs: do not serve
        started = True

        def __init__(self, *a, **k) -> None: ...

        def run(self, *a, **k) -> None: ...

    monkeypatch.setattr(uvicorn, "Server", NoServer)
    argv = ["serve", "--model", str(digits_checkpoint), "--store", str(tmp_path / "ledger.db"), "--port", "0",
            "--defense", "mad", "--strength", "1.0", "--defense-option", "preserve_argmax=true"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    acc, _ = _mad_cost(digits_victim, digits, epsilon=1.0, preserve_argmax=True)
    assert f"defended top-1 accuracy {100 * acc:.1f}%" in captured.out and acc > 0.9
    assert "top-1 label" not in captured.err, captured.err


@pytest.mark.parametrize("key, words", [
    ("msk_not_a_key", ("refused the API key", "invalid")),
    (None, ("refused the API key", "revoked")),
])
def test_attack_with_a_bad_key_fails_before_any_work(capsys, mad_server, key, words):
    key = key or mad_server.keys["revokee"]
    one_line_error(capsys, ["attack", "--target", mad_server.url, "--key", key, *ATTACK_FAST], *words)


def test_attack_with_a_budget_larger_than_the_key_has_left_fails_before_any_query(capsys, mad_server, monkeypatch):
    import modelsteal.cli.attack as attack_cli
    from modelsteal.serve.client import HTTPBlackBox

    def no_work(*a, **k):
        raise AssertionError("the transfer set was built before the key's budget was checked")

    monkeypatch.setattr(attack_cli, "build_transfer_set", no_work)
    argv = ["attack", "--target", mad_server.url, "--key", mad_server.keys["small"], "--budget", "200"]
    one_line_error(capsys, argv, "'small'", "50 queries left", "--budget 200", "--budget 50")
    with HTTPBlackBox(mad_server.url, mad_server.keys["small"]) as bb:
        assert bb.usage()["queries"] == 0


def test_attack_with_a_key_that_has_spent_its_budget_fails_before_any_work(capsys, mad_server, monkeypatch):
    import modelsteal.cli.attack as attack_cli
    from modelsteal.serve.client import HTTPBlackBox

    with HTTPBlackBox(mad_server.url, mad_server.keys["spent"]) as bb:
        bb.query(torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)))  # all 3 queries
        assert bb.usage()["remaining"] == 0

    def no_work(*a, **k):
        raise AssertionError("the transfer set was built before the key's budget was checked")

    monkeypatch.setattr(attack_cli, "build_transfer_set", no_work)
    line = one_line_error(capsys, ["attack", "--target", mad_server.url, "--key", mad_server.keys["spent"],
                                    *ATTACK_FAST], "key 'spent' has already spent its budget",
                           "3 of its budget of 3 queries", "a new key or a larger budget")
    assert "--budget 0" not in line  # not the "pass --budget N" advice of a key with some queries left


def test_a_budget_that_runs_out_mid_attack_is_one_clean_line(capsys, mad_server, monkeypatch):
    """Someone else spends the key between the check and the queries: /v1/usage said enough was left."""
    from modelsteal.serve.client import HTTPBlackBox

    monkeypatch.setattr(HTTPBlackBox, "usage", lambda self: {"remaining": None})
    argv = ["attack", "--target", mad_server.url, "--key", mad_server.keys["shared"], "--budget", "400",
            "--epochs", "1"]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    # The query progress bar was live when the server refused: the message must start a line of its own.
    errors = [line for line in err.split("\n") if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("modelsteal attack: error: "), repr(err)
    assert "budget ran out after 256 of --budget 400" in errors[0] and "no clone was trained" in errors[0]
    assert err.rstrip("\n").split("\n")[-1] == errors[0]


# -- attack shows what the defense costs ------------------------------------------------------------------
@pytest.mark.parametrize("name, strength, make", [
    ("mad", 1.0, lambda: MAD(epsilon=1.0)),
    ("reverse-sigmoid", 0.6, lambda: ReverseSigmoid(beta=0.6)),
])
def test_attack_reports_the_defender_accuracy_and_mean_l1(capsys, tmp_path, digits_checkpoint, digits_victim,
                                                         digits, name, strength, make):
    out = tmp_path / "result.json"
    argv = ["attack", "--target", str(digits_checkpoint), "--defense", name, "--strength", str(strength),
            *ATTACK_FAST, "--json", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads(out.read_text())
    defense = make()
    defense.bind(digits_victim, input_shape=digits.input_shape, num_classes=10)
    acc, l1 = _cost(digits_victim, digits, defense)
    assert result["defender_accuracy"] == pytest.approx(acc, abs=1e-6)  # one example is 2.8e-3
    assert result["l1_mean"] == pytest.approx(l1, rel=1e-5)
    assert result["defense"] == repr(defense)
    assert f"defender_accuracy: {100 * acc:.2f}%" in stdout and f"l1_mean: {l1:.4f}" in stdout
    assert f"defense: {repr(defense)}" in stdout and "attacker_accuracy: " in stdout


def test_a_server_that_keeps_failing_mid_attack_is_one_clean_line(capsys, mad_server, monkeypatch):
    """After its retries the client gives up with ServerError; the CLI says so in one line."""
    from modelsteal.serve.client import HTTPBlackBox, ServerError

    def failing(self, xb, **kwargs):
        raise ServerError("POST /v1/predict failed after 9 attempts; last error: 503 busy")

    monkeypatch.setattr(HTTPBlackBox, "_predict", failing)
    rc = main(["attack", "--target", mad_server.url, "--key", mad_server.keys["flaky"], *ATTACK_FAST])
    err = capsys.readouterr().err
    errors = [line for line in err.split("\n") if "error:" in line]
    assert rc == 2 and len(errors) == 1 and errors[0].startswith("modelsteal attack: error: "), repr(err)
    assert "stopped answering after 0 of --budget 64" in errors[0] and "503 busy" in errors[0]


# -- detectors in the server: mistakes before the victim is loaded ------------------------------------------
@pytest.mark.parametrize("extra, words", [
    (["--detector", "bogus"], ("unknown detector 'bogus'", "prada")),
    (["--detector", "prada", "--response", "bogus"], ("unknown response 'bogus'", "refuse")),
    (["--detector", "prada", "--detector-option", "min_stream=2"], ("min_stream", ">= 3")),
    (["--detector", "prada", "--detector-option", "window=5"], ("unknown option window", "min_stream")),
    (["--detector", "prada", "--detector-option", "index=hnsw"], ("index must be one of", "faiss")),
    (["--detector", "prada", "--detector-option", "min_stream"], ("--detector-option expects key=value",)),
    (["--response", "refuse"], ("--response refuse needs --detector",)),
    (["--detector-option", "min_stream=50"], ("--detector-option min_stream given without --detector",)),
    (["--detector", "prada", "--detector-tnr", "1.5"], ("--detector-tnr must lie in (0, 1)",)),
    (["--detector", "prada", "--detector-tnr", "most"], ("--detector-tnr expects a rate",)),
    (["--detector", "binary"], ("outlier set",)),
])
def test_serve_detector_mistakes_are_one_line_before_the_victim_is_loaded(capsys, tmp_path, extra, words):
    # Bugs caught: a detector mistake reported only after the checkpoint is loaded (the missing checkpoint below
    # would be the error instead), a traceback, or --response silently ignored without a detector.
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    argv = ["serve", "--model", tmp_path / "no-such-victim.pt", "--store", tmp_path / "ledger.db", "--port", "0",
            *extra]
    one_line_error(capsys, argv, *words)
