"""The pool executor's workers run as the sweep asked: ``deterministic`` reaches every worker process (issue 29,
a planted bug that dropped it survived every test)."""

from __future__ import annotations

import pytest
import torch

from modelsteal.experiment.executors import make_executor


def _worker_state(unit, *, cache):
    """What a worker process reports of its torch settings (runs in the spawned worker)."""
    return {"unit": unit, "cache": cache, "deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "threads": torch.get_num_threads()}


@pytest.mark.parametrize("deterministic", [True, False])
def test_pool_workers_get_the_deterministic_switch(deterministic):
    executor = make_executor("pool", workers=1, deterministic=deterministic)
    results = dict(executor.run(_worker_state, ["a", "b"], cache={"shared": 1}))
    assert sorted(results) == [0, 1]
    for i, unit in enumerate(["a", "b"]):
        state = results[i]
        assert state["unit"] == unit and state["cache"] == {"shared": 1}
        assert state["deterministic"] is deterministic
        assert state["threads"] == 1
        if deterministic:
            assert state["cudnn_benchmark"] is False
