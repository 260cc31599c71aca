"""Knockoff Nets through ``HTTPBlackBox`` against ``modelsteal serve`` equals the same attack in-process."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
datasets = pytest.importorskip("sklearn.datasets")

from serve_helpers import ServerProcess  # noqa: E402

from modelsteal import PredictionAPI  # noqa: E402
from modelsteal.attacks.knockoff import KnockoffNets  # noqa: E402
from modelsteal.models import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from modelsteal.serve.client import HTTPBlackBox  # noqa: E402
from modelsteal.serve.store import open_store  # noqa: E402
from modelsteal.training import TrainConfig, accuracy, train  # noqa: E402

BUDGET, SEED = 300, 0


@pytest.fixture
def one_thread():
    """Tiny models train far faster on one intra-op thread, above all on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_knockoff_through_http_matches_in_process(tmp_path, one_thread):
    digits = datasets.load_digits()  # 8x8 digits shipped inside scikit-learn: no download
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    x_train, y_train, pool, x_test, y_test = x[:900], y[:900], x[900:1400], x[1400:], y[1400:]

    victim = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0)
    train(victim, x_train, y_train, config=TrainConfig(epochs=8, batch_size=32),
                     generator=torch.Generator().manual_seed(0))
    ckpt = save_checkpoint(victim, tmp_path / "victim.pt", dataset="digits")
    model, meta = load_checkpoint(ckpt)
    assert accuracy(model, x_test, y_test) > 0.8

    def attack() -> KnockoffNets:
        return KnockoffNets(transfer_set=pool, clone="mlp", train=TrainConfig(epochs=6, batch_size=32))

    local = attack()(PredictionAPI(model, input_shape=meta["input_shape"]), budget=BUDGET, seed=SEED)
    acc_local = accuracy(local.clone, x_test, y_test)

    store_url = str(tmp_path / "ledger.db")
    with open_store(store_url) as store:
        _, key = store.create_key(name="attacker", budget=BUDGET)
    with ServerProcess(model=ckpt, store=store_url, log_path=tmp_path / "server.log") as server:
        with HTTPBlackBox(server.url, key) as victim_api:
            remote = attack()(victim_api, budget=BUDGET, seed=SEED)
            assert victim_api.usage()["queries"] == BUDGET == remote.queries
    acc_remote = accuracy(remote.clone, x_test, y_test)
    print(f"clone accuracy: in-process {100 * acc_local:.2f}%, through HTTP {100 * acc_remote:.2f}%")

    assert torch.equal(remote.transfer_x, local.transfer_x)
    assert torch.equal(remote.transfer_y, local.transfer_y)  # the answers survive the wire bit for bit
    assert acc_local > 0.5
    assert abs(acc_local - acc_remote) <= 0.005, (acc_local, acc_remote)
