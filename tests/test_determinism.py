"""The determinism switch: `modelsteal --deterministic …` and a sweep config's `deterministic: true`."""

from __future__ import annotations

import pytest
import torch
import yaml

import modelsteal.cli.datasets
import modelsteal.cli.sweep
from modelsteal.cli.main import main
from modelsteal.experiment.config import ConfigError, parse_config
from modelsteal.models import load_checkpoint

TINY = {"victim": {"dataset": "digits", "arch": "mlp", "epochs": 1}, "defenses": [{"name": "none"}],
        "attacks": [{"name": "knockoff", "clone": "mlp"}], "budgets": [50]}


@pytest.fixture(autouse=True)
def restore_torch_state():
    """The switch is process-global: put back what every other test expects."""
    threads = torch.get_num_threads()
    benchmark, cudnn_det = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    yield
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, cudnn_det
    torch.set_num_threads(threads)


def _state() -> dict:
    return {"enabled": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "threads": torch.get_num_threads(), "benchmark": torch.backends.cudnn.benchmark}


@pytest.fixture
def spy_datasets(monkeypatch):
    """`modelsteal datasets` replaced by a spy that records torch's state while the command runs."""
    seen: list[dict] = []
    monkeypatch.setattr(modelsteal.cli.datasets, "run", lambda args: seen.append(_state()) or 0)
    return seen


def test_flag_turns_on_deterministic_algorithms_for_the_command(spy_datasets):
    # bug caught: the flag is parsed but never applied (or applied after the command ran), or with warn_only
    torch.backends.cudnn.benchmark = True
    assert main(["--deterministic", "datasets"]) == 0
    assert spy_datasets == [{"enabled": True, "warn_only": False, "threads": 1, "benchmark": False}]


def test_without_the_flag_nothing_is_switched_on(spy_datasets):
    # bug caught: the switch turned on unconditionally (at import, or `store_true` defaulting to on)
    assert main(["datasets"]) == 0
    assert spy_datasets[0]["enabled"] is False


def test_flag_fixes_threads_to_one_unless_threads_is_given(spy_datasets):
    # bugs caught: the thread count left at torch's choice; `--threads N` overridden by the switch's default 1
    torch.set_num_threads(2)
    assert main(["--deterministic", "datasets"]) == 0
    assert main(["--threads", "3", "--deterministic", "datasets"]) == 0
    assert [s["threads"] for s in spy_datasets] == [1, 3]


@pytest.mark.parametrize("key", [True, False])
def test_config_key_switches_the_sweep(tmp_path, monkeypatch, key):
    # bug caught: the config key is read but the sweep command does not act on it (or acts on a false one)
    seen: list[dict] = []
    monkeypatch.setattr(modelsteal.cli.sweep, "run_sweep", lambda cfg, **kw: seen.append(_state()) or [])
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "deterministic": key}))
    torch.set_num_threads(2)
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "out"), "--quiet", "--no-plots"]) == 0
    assert seen[0]["enabled"] is key and seen[0]["threads"] == (1 if key else 2)


def test_config_key_must_be_a_boolean():
    # bug caught: `deterministic: "no"` accepted as a (truthy) string
    with pytest.raises(ConfigError, match="deterministic must be true or false"):
        parse_config({**TINY, "deterministic": "no"})


def test_two_deterministic_runs_give_bit_identical_weights(tmp_path, capsys):
    # bugs caught: an op on the training path with no deterministic kernel (raises under warn_only=False), or
    # an unseeded random draw on that path (weights differ between the runs)
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for p in paths:
        assert main(["--deterministic", "train", "--dataset", "digits", "--arch", "lenet", "--epochs", "1",
                     "--out", str(p)]) == 0
    a, b = (load_checkpoint(p)[0].state_dict() for p in paths)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
