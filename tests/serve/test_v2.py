"""The Open Inference Protocol (v2) routes of ``modelsteal serve``: same keys, ledger, defenses as /v1, the
protocol's error form, and no 500 for any bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from modelsteal import PredictionAPI  # noqa: E402
from modelsteal.defenses import make_defense  # noqa: E402
from modelsteal.models import build_model  # noqa: E402
from modelsteal.serve.app import create_app  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402

SHAPE = (1, 8, 8)
NAME = "victim"
INFER = f"/v2/models/{NAME}/infer"


@pytest.fixture
def served(tmp_path):
    from fastapi.testclient import TestClient

    model = build_model("mlp", input_shape=SHAPE, num_classes=10, seed=0)
    api = PredictionAPI(model, defense=make_defense("reverse-sigmoid", strength=0.5), output="probs")
    store = open_store(str(tmp_path / "ledger.db"))
    keys = {name: store.create_key(name=name, budget=budget)[1] for name, budget in (("a", None), ("small", 5))}
    app = create_app(api, store=store, max_batch=16, info={"model_name": NAME})
    with TestClient(app) as client:
        yield client, api, store, keys
    store.close()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _request(x: torch.Tensor, **tensor: object) -> dict:
    t = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist(), **tensor}
    return {"inputs": [t]}


def _queries(store, name: str) -> int:
    return next(c.queries for c in store.clients() if c.name == name)


def test_health_and_metadata_describe_the_served_model(served):
    client, api, _, _ = served
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get(f"/v2/models/{NAME}").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get(f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    for path in ("/v2/models/other", "/v2/models/other/ready", "/v2/models/victim/versions/7/infer"):
        r = client.get(path)
        assert r.status_code == 404 and "error" in r.json(), path


def test_infer_answers_the_defended_api_exactly_and_counts_rows(served):
    client, api, store, keys = served
    x = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(1))
    r = client.post(INFER, headers=_auth(keys["a"]), json={"id": "r1", **_request(x)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == NAME and body["id"] == "r1"
    (out,) = body["outputs"]
    assert out["name"] == "probabilities" and out["datatype"] == "FP32" and out["shape"] == [3, 10]
    y = torch.tensor(out["data"], dtype=torch.float32).reshape(3, 10)
    expected = api.query(x, client="check")  # the reverse-sigmoid answer, not the raw posterior
    assert torch.equal(y, expected)
    assert not torch.allclose(y, api.posteriors(x), atol=1e-3)
    assert body["parameters"]["queries"] == 3 and _queries(store, "a") == 3
    # nested data (allowed by the protocol) gives the same answer and counts again
    nested = _request(x)
    nested["inputs"][0]["data"] = x.tolist()
    y2 = client.post(INFER, headers=_auth(keys["a"]), json=nested).json()["outputs"][0]["data"]
    assert torch.equal(torch.tensor(y2).reshape(3, 10), y) and _queries(store, "a") == 6
    # /v1 answers the same rows with the same numbers
    v1 = client.post("/v1/predict", headers=_auth(keys["a"]), json={"inputs": x.tolist()}).json()
    assert torch.equal(torch.tensor(v1["outputs"]), y) and v1["queries"] == 9


def test_binary_tensor_extension_round_trips(served):
    client, api, _, keys = served
    x = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(2))
    blob = x.numpy().astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": [2, 1, 8, 8], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(blob)}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    r = client.post(INFER, headers={**_auth(keys["a"]), "Inference-Header-Content-Length": str(len(head))},
                    content=head + blob)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    y = torch.from_numpy(np.frombuffer(r.content[n:], dtype="<f4").reshape(2, 10).copy())
    assert torch.equal(y, api.query(x, client="check"))


BAD = [  # (description, request, status, words in the error)
    ("wrong datatype", {"datatype": "INT32", "data": [0] * 64}, 400, "datatype 'INT32'"),
    ("bytes datatype", {"datatype": "BYTES", "data": ["a"] * 64}, 400, "datatype 'BYTES'"),
    ("fewer data than the shape", {"data": [0.5] * 63}, 400, "63 elements"),
    ("more data than the shape", {"data": [0.5] * 65}, 400, "more than 64"),
    ("wrong input name", {"name": "x"}, 400, "no input 'x'"),
    ("shape of another model", {"shape": [1, 64]}, 400, "shape (N, 1, 8, 8)"),
    ("strings in data", {"data": [0.5] * 63 + ["x"]}, 400, "numbers"),
    ("negative dimension", {"shape": [1, 1, 8, -8]}, 400, "non-negative"),
    ("out of range", {"data": [0.5] * 63 + [7.0]}, 400, "[0, 1]"),
    ("too many rows", {"shape": [17, 1, 8, 8], "data": [0.5] * 17 * 64}, 413, "17 rows"),
]


@pytest.mark.parametrize("what,fields,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_are_4xx_in_the_protocol_form_and_cost_nothing(served, what, fields, status, words):
    client, _, store, keys = served
    req = _request(torch.full((1, *SHAPE), 0.5), **fields)
    r = client.post(INFER, headers=_auth(keys["a"]), json=req)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert _queries(store, "a") == 0


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_inf_are_400(served, value):
    client, _, store, keys = served
    body = ('{"inputs":[{"name":"input","shape":[1,1,8,8],"datatype":"FP32","data":[' + value + ","
            + ",".join(["0.5"] * 63) + "]}]}")
    r = client.post(INFER, headers=_auth(keys["a"]), content=body)
    assert r.status_code == 400 and "NaN or Infinity" in r.json()["error"]
    # the binary form carries them too
    x = np.full((1, 1, 8, 8), 0.5, dtype="<f4")
    x[0, 0, 3, 3] = float(value.replace("Infinity", "inf"))
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 256}}]}).encode()
    r = client.post(INFER, headers={**_auth(keys["a"]), "Inference-Header-Content-Length": str(len(head))},
                    content=head + x.tobytes())
    assert r.status_code == 400 and "NaN or Infinity" in r.json()["error"]
    assert _queries(store, "a") == 0


@pytest.mark.parametrize("body", [b"{", b"[1]", b'{"inputs": []}', b'{"inputs": [{"name": "input"}]}',
                                  b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32"}]}',
                                  b'{"inputs": 3, "extra": 1}'])
def test_malformed_requests_are_400_never_500(served, body):
    client, _, store, keys = served
    r = client.post(INFER, headers=_auth(keys["a"]), content=body)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    assert _queries(store, "a") == 0


def test_keys_and_budgets_are_those_of_v1(served):
    client, _, store, keys = served
    x = torch.full((4, *SHAPE), 0.5)
    assert client.post(INFER, json=_request(x)).status_code == 401
    assert client.post(INFER, headers=_auth("wrong"), json=_request(x)).status_code == 401
    assert client.post("/v2/models/other/infer", headers=_auth(keys["small"]), json=_request(x)).status_code == 404
    assert client.post(INFER, headers=_auth(keys["small"]), json=_request(x)).status_code == 200
    r = client.post(INFER, headers=_auth(keys["small"]), json=_request(x))  # 4 + 4 > budget 5
    assert r.status_code == 403 and r.json()["code"] == "budget_exhausted"
    assert _queries(store, "small") == 4
    assert client.get("/v1/usage", headers=_auth(keys["small"])).json()["remaining"] == 1
    assert math.isclose(client.post(INFER, headers=_auth(keys["small"]), json=_request(x[:1])).json()[
        "parameters"]["remaining"], 0)
