"""A sweep's plan: point keys are the cache keys and stable across processes, shards partition the plan and
keep query groups whole, and work units stack only points that share their queries."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from modelsteal.attacks import attack_class
from modelsteal.experiment.config import parse_config
from modelsteal.experiment.plan import parse_shard, plan, shard, units
from modelsteal.experiment.points import sweep_point_key


def tiny(**over):
    raw = {
        "name": "tiny-scaleout",
        "victim": {"dataset": "digits", "arch": "mlp", "epochs": 2, "lr": 0.05, "momentum": 0.9},
        "transfer": {"source": "dataset", "classes": [5, 6, 7, 8, 9]},
        "defenses": [{"name": "none"}, {"name": "reverse-sigmoid", "strengths": [0.2, 1], "options": {"gamma": 0.2}}],
        "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 2, "lr": 0.05, "momentum": 0.9}}],
        "budgets": [120],
        "seeds": [0, 1],
        "device": "cpu",
    }
    raw.update(over)
    return parse_config(raw)


# -- the plan ------------------------------------------------------------------------------------------------------
def test_plan_keys_are_the_cache_keys_and_stable_across_processes(tmp_path):
    # bugs caught: a key built with Python's salted hash() (differs per process), a key that leaves out a field
    # (two points share it), a key that differs from the cache's sweep_point_key (every cached point recomputed)
    cfg = tiny()
    points = plan(cfg)
    assert len(points) == 3 * 2 and len({p.key for p in points}) == 6
    assert [p.key for p in points] == [sweep_point_key(cfg, p.defense, p.strength, p.attack, p.budget, p.seed)
                                       for p in points]
    code = ("import json, sys; from modelsteal.experiment.config import parse_config; "
            "from modelsteal.experiment.plan import plan; "
            "print(json.dumps([p.key for p in plan(parse_config(json.load(sys.stdin)))]))")
    raw = json.dumps({"victim": {"dataset": "digits", "arch": "mlp", "epochs": 2, "lr": 0.05, "momentum": 0.9},
                      "transfer": {"source": "dataset", "classes": [5, 6, 7, 8, 9]},
                      "defenses": [{"name": "none"},
                                   {"name": "reverse-sigmoid", "strengths": [0.2, 1], "options": {"gamma": 0.2}}],
                      "attacks": [{"name": "knockoff", "clone": "mlp",
                                   "train": {"epochs": 2, "lr": 0.05, "momentum": 0.9}}],
                      "budgets": [120], "seeds": [0, 1], "device": "cpu", "name": "tiny-scaleout"})
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], input=raw, capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == [p.key for p in points]
    # a point equals its copy (hashable by key) and differs when its seed does
    assert points[0] == copy.deepcopy(points[0]) and len({*points, *points}) == 6
    assert points[0] != replace(points[0], seed=7)


def test_shards_partition_the_plan_and_keep_query_groups_whole():
    # bugs caught: a point in two shards or in none (off-by-one in the round robin), a query group split across
    # shards (its clones could no longer stack)
    points = plan(tiny(seeds=[0, 1, 2], budgets=[100, 200]))
    parts = [shard(points, i, 3) for i in range(3)]
    assert sorted(p.key for part in parts for p in part) == sorted(p.key for p in points)
    assert all(part for part in parts)
    owner = {p.query_key: i for i, part in enumerate(parts) for p in part}
    assert all(owner[p.query_key] == i for i, part in enumerate(parts) for p in part)
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_units_stack_only_points_sharing_their_queries_and_only_stackable_attacks():
    # bugs caught: stacking points of different seeds or budgets (other queries), a unit larger than --stack-clones,
    # stacking an attack whose queries depend on the answers (JBDA, the confidence filter)
    points = plan(tiny(defenses=[{"name": "none"}, {"name": "reverse-sigmoid", "strengths": [0.1, 0.2, 0.3, 0.4],
                                                      "options": {"gamma": 0.2}}], seeds=[0, 1]))
    got = units(points, stack=3, stackable=["knockoff"])
    assert sorted(len(u) for u in got) == [2, 2, 3, 3]
    assert all(len({p.query_key for p in u}) == 1 for u in got)
    assert sorted(p.key for u in got for p in u) == sorted(p.key for p in points)
    assert [len(u) for u in units(points, stack=1, stackable=["knockoff"])] == [1] * 10
    assert [len(u) for u in units(points, stack=8, stackable=["jbda"])] == [1] * 10
    assert attack_class("knockoff").stackable and not attack_class("knockoff-filter").stackable
    assert not attack_class("jbda").stackable
