"""Seldon MLServer, a real Open Inference Protocol server, on loopback: ``modelsteal attack`` steals the
scikit-learn model it serves through the v2 client, and ``modelsteal serve --upstream`` guards it."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import mlserver_helpers as mls  # noqa: E402
from serve_helpers import ServerProcess  # noqa: E402

from modelsteal.cli.main import main  # noqa: E402
from modelsteal.data import load_dataset  # noqa: E402
from modelsteal.defenses import make_defense  # noqa: E402
from modelsteal.serve.client import HTTPBlackBox  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402

pytestmark = [pytest.mark.mlserver, pytest.mark.skipif(not mls.available(), reason=mls.SKIP_REASON)]
BETA = 0.5


@pytest.fixture(scope="module")
def digits_flat():
    data = load_dataset("digits")
    return data


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory, digits_flat):
    d = tmp_path_factory.mktemp("mlserver")
    x = digits_flat.x_train.reshape(len(digits_flat.x_train), -1).numpy()
    model = mls.train_model(d, x, digits_flat.y_train.numpy())
    with mls.MLServerProcess(d, model) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, mlserver):
    d = tmp_path_factory.mktemp("gateway")
    store_url = str(d / "ledger.db")
    with open_store(store_url) as store:
        keys = {name: store.create_key(name=name, budget=budget)[1] for name, budget in (("a", None), ("b", 50))}
    srv = ServerProcess(model=d / "unused", store=store_url, log_path=d / "gateway.log",
                        args=["--upstream", mlserver.endpoint, "--dataset", "digits", "--defense", "reverse-sigmoid",
                              "--strength", str(BETA), "--eval-size", "0", "--upstream-timeout", "5"])
    i = srv.argv.index("--model")
    del srv.argv[i:i + 2]
    with srv:
        srv.keys, srv.store_url = keys, store_url
        yield srv


def _queries(store_url: str, name: str) -> int:
    with open_store(store_url) as store:
        return next(c.queries for c in store.clients() if c.name == name)


def test_attack_steals_the_mlserver_model_through_the_v2_client(mlserver, digits_flat, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["--threads", "1", "attack", "--target", mlserver.endpoint, "--dataset", "digits", "--budget", "500",
                 "--transfer", "dataset:digits", "--clone", "mlp", "--epochs", "20", "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["queries"] == 500  # exactly what MLServer answered
    # the logistic regression is ~95% on the digits test split; a clone of 500 soft labels gets most of it
    assert result["attacker_accuracy"] > 0.85, result


def test_v2_client_counts_what_mlserver_answered_and_sees_the_digits(mlserver, digits_flat):
    box = HTTPBlackBox(mlserver.endpoint, None)
    assert box.input_shape == (64,) and box.num_classes == 10 and box.info["output_name"] == "predict_proba"
    box.view_inputs_as((1, 8, 8))
    y = box.query(digits_flat.x_test[:100])
    assert box.total_queries == 100
    assert torch.allclose(y.sum(dim=1), torch.ones(100), atol=1e-5)
    assert (y.argmax(dim=1) == digits_flat.y_test[:100]).float().mean() > 0.9
    with pytest.raises(ValueError, match="no output 'nope'"):
        HTTPBlackBox(mlserver.endpoint, None, output_name="nope")
    with pytest.raises(ValueError, match=r"rejected the request \(404\)"):
        HTTPBlackBox(mlserver.url + "/v2/models/missing", None)


def test_gateway_answers_reverse_sigmoid_of_mlserver_own_answer(gateway, mlserver, digits_flat):
    x = digits_flat.x_test[:40]
    direct = HTTPBlackBox(mlserver.endpoint, None)
    direct.view_inputs_as((1, 8, 8))
    expected = make_defense("reverse-sigmoid", strength=BETA)(x, direct.query(x))
    v1 = HTTPBlackBox(gateway.url, gateway.keys["a"])
    v2 = HTTPBlackBox(gateway.url + "/v2/models/digits-lr", gateway.keys["a"])
    assert v2.input_shape == (1, 8, 8)  # the gateway presents the dataset's shape
    for box in (v1, v2):
        y = box.query(x)
        assert (y - expected).abs().max() < 1e-6
        assert (y - direct.query(x)).abs().max() > 0.05  # the defense changed the answers
    assert _queries(gateway.store_url, "a") == 80
    r = httpx.post(gateway.url + "/v1/predict", headers={"Authorization": f"Bearer {gateway.keys['b']}"},
                   json={"inputs": torch.rand(60, 1, 8, 8).tolist()})
    assert r.status_code == 403 and r.json()["code"] == "budget_exhausted"  # budgets as for a local model


def test_cli_refuses_a_gateway_mistake_in_one_line(mlserver, tmp_path, capsys):
    store = str(tmp_path / "s.db")
    cases = [
        (["--upstream", mlserver.endpoint, "--defense", "mad", "--strength", "0.5"], "--surrogate ARCH"),
        (["--upstream", mlserver.endpoint, "--detector", "odin", "--dataset", "digits"], "victim's internals"),
        (["--upstream", mlserver.endpoint, "--defense", "am", "--strength", "0.5", "--surrogate", "mlp"],
         "--dataset NAME"),
        (["--upstream", f"http://127.0.0.1:{mls.free_port()}/v2/models/x"], "cannot reach"),
        (["--upstream", mlserver.url + "/v2/models/missing"], "404"),
        ([], "--model CHECKPOINT or --upstream URL"),
    ]
    for args, words in cases:
        code = main(["serve", "--store", store, "--port", "0", *args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and words in err and len(err.splitlines()) == 1, (args, err)


def test_verify_queries_the_mlserver_model_as_a_suspect(mlserver, tmp_path, capsys):
    victim = tmp_path / "victim.pt"
    assert main(["--threads", "1", "train", "--dataset", "digits", "--arch", "mlp", "--epochs", "3",
                 "--out", str(victim)]) == 0
    report = tmp_path / "verdict.json"
    code = main(["--threads", "1", "verify", "--victim", str(victim), "--suspect", mlserver.endpoint,
                 "--method", "dataset-inference", "--budget", "18000", "--json", str(report)])
    assert code == 0, capsys.readouterr().err
    verdict = json.loads(report.read_text())
    assert 0 < verdict["queries"] <= 18000 and 0.0 <= verdict["p_value"] <= 1.0, verdict


def test_upstream_down_is_502_costs_nothing_and_the_gateway_stays_up(gateway, mlserver):  # last: stops MLServer
    before = _queries(gateway.store_url, "a")
    mlserver.stop()
    auth = {"Authorization": f"Bearer {gateway.keys['a']}"}
    x = torch.rand(3, 1, 8, 8)
    r1 = httpx.post(gateway.url + "/v1/predict", headers=auth, json={"inputs": x.tolist()}, timeout=30)
    assert r1.status_code == 502 and r1.json()["code"] == "upstream_error", r1.text
    body = {"inputs": [{"name": "input", "shape": [3, 1, 8, 8], "datatype": "FP32", "data": x.flatten().tolist()}]}
    r2 = httpx.post(gateway.url + "/v2/models/digits-lr/infer", headers=auth, json=body, timeout=30)
    assert r2.status_code == 502 and "upstream" in r2.json()["error"], r2.text
    assert _queries(gateway.store_url, "a") == before  # no unanswered row in the ledger
    assert httpx.get(gateway.url + "/healthz").status_code == 200 and gateway.proc.poll() is None
    lines = [ln for ln in gateway.log().splitlines() if re.search(r"upstream .* failed", ln)]
    assert len(lines) == 2, gateway.log()[-2000:]

