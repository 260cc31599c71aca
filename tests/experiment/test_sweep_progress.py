"""A sweep's progress bar advances per clone inside a stacked unit (issue 26, item 3): half a point as each
point's queries are answered, the other half over its clone's training epochs, instead of one jump by the
unit's size when the whole unit is done."""

from __future__ import annotations

import pytest
import tqdm.auto

from modelsteal.experiment.config import parse_config
from modelsteal.experiment.sweep import run_sweep

CFG = {
    "name": "tiny",
    "victim": {"dataset": "digits", "arch": "mlp", "epochs": 1},
    "transfer": {"source": "dataset", "dataset": "digits", "size": 60},
    "defenses": [{"name": "none"}, {"name": "reverse-sigmoid", "strengths": [0.3]},
                 {"name": "random-noise", "strengths": [20.0]}],
    "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 4}}],
    "budgets": [40],
}


class _Recording(tqdm.auto.tqdm):
    """tqdm that remembers the sweep bar's updates."""

    updates: list[float] = []

    def update(self, n=1):
        if str(self.desc).startswith("sweep "):
            _Recording.updates.append(n)
        return super().update(n)


@pytest.fixture
def recording(monkeypatch):
    _Recording.updates = []
    monkeypatch.setattr(tqdm.auto, "tqdm", _Recording)
    return _Recording.updates


def test_the_sweep_bar_moves_inside_a_stacked_unit(tmp_path, recording):
    records = run_sweep(parse_config(CFG), out_dir=tmp_path, progress=True, plots=False, stack_clones=8)
    assert [r.get("stacked_clones") for r in records] == [3, 3, 3]  # one unit of three stacked clones
    # three collections (0.5 each), then four epochs of three clones (3 x 0.5 / 4 each)
    assert recording == pytest.approx([0.5, 0.5, 0.5, 0.375, 0.375, 0.375, 0.375])
    assert sum(recording) == pytest.approx(3.0)


def test_units_of_one_point_still_count_one_each(tmp_path, recording):
    records = run_sweep(parse_config(CFG), out_dir=tmp_path, progress=True, plots=False, stack_clones=1)
    assert len(records) == 3 and recording == []  # no fractions: the bar is set to the finished count


def _fractions(updates):
    return sorted(u for u in updates if u < 1)


def test_the_pool_bar_moves_per_clone_inside_a_stacked_unit(tmp_path, recording):
    """The same unit in a worker process: its fractions reach the parent's bar through the pool's queue (before,
    only the finished unit moved it), and they sum to the unit's points."""
    from modelsteal.experiment.executors import make_executor

    records = run_sweep(parse_config(CFG), out_dir=tmp_path, progress=True, plots=False, stack_clones=8,
                        executor=make_executor("pool", workers=1))
    assert [r.get("stacked_clones") for r in records] == [3, 3, 3]
    assert _fractions(recording) == pytest.approx(sorted([0.5, 0.5, 0.5, 0.375, 0.375, 0.375, 0.375]))
    assert sum(recording) == pytest.approx(3.0)


@pytest.mark.ray
def test_the_ray_bar_moves_per_clone_inside_a_stacked_unit(tmp_path, recording):
    pytest.importorskip("ray")
    from modelsteal.experiment.executors import make_executor

    run_sweep(parse_config(CFG), out_dir=tmp_path, progress=True, plots=False, stack_clones=8,
              executor=make_executor("ray", workers=1))
    assert _fractions(recording) == pytest.approx(sorted([0.5, 0.5, 0.5, 0.375, 0.375, 0.375, 0.375]))


def test_fractions_of_a_finished_unit_are_dropped():
    """A worker's late report for a unit the parent already counted must not push the bar past it."""
    from modelsteal.experiment.executors import _drain

    got: list[float] = []
    _drain(lambda: [(0, 0.5), (1, 0.25), (0, 0.5)], got.append, finished={0})
    assert got == [0.25]
