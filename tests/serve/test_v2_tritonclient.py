"""NVIDIA's ``tritonclient[http]``, unchanged, as a client of ``modelsteal serve``'s /v2 on loopback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")

from serve_helpers import INPUT_SHAPE, ServerProcess, make_checkpoint  # noqa: E402

from modelsteal import PredictionAPI  # noqa: E402
from modelsteal.defenses import make_defense  # noqa: E402
from modelsteal.models import load_checkpoint  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("triton")
    ckpt = make_checkpoint(d / "victim.pt")
    store_url = str(d / "ledger.db")
    with open_store(store_url) as store:
        key = store.create_key(name="triton", budget=100)[1]
    srv = ServerProcess(model=ckpt, store=store_url, log_path=d / "server.log",
                        args=["--defense", "top-k", "--defense-option", "k=3", "--eval-size", "0"])
    with srv:
        srv.key, srv.ckpt, srv.store_url = key, ckpt, store_url
        yield srv


def test_tritonclient_health_metadata_and_infer(server):
    url = server.url.removeprefix("http://")
    headers = {"Authorization": f"Bearer {server.key}"}
    client = httpclient.InferenceServerClient(url=url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("victim")
    meta = client.get_model_metadata("victim", headers=headers)
    assert meta["inputs"][0]["shape"] == [-1, *INPUT_SHAPE] and meta["outputs"][0]["shape"] == [-1, 10]

    x = np.random.default_rng(0).random((5, *INPUT_SHAPE), dtype=np.float32)
    model, _ = load_checkpoint(server.ckpt)
    expected = PredictionAPI(model, defense=make_defense("top-k", k=3)).query(torch.from_numpy(x))
    for binary in (True, False):  # tritonclient's default binary tensors, and plain JSON
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer("victim", [inp], outputs=[out], headers=dict(headers))  # it writes into the dict
        y = result.as_numpy("probabilities")
        assert y.shape == (5, 10) and y.dtype == np.float32
        np.testing.assert_array_equal(y, expected.numpy())  # the defended (top-3) answer, exactly
        assert ((y > 0).sum(axis=1) == 3).all()
    with open_store(server.store_url) as store:
        assert next(c.queries for c in store.clients() if c.name == "triton") == 10

    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="missing API key"):
        client.infer("victim", [inp])  # no key: refused, in the protocol's error form tritonclient reads
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [inp], headers=dict(headers))
    client.close()
