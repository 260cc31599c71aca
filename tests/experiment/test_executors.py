"""Sweeps as a plan run by executors (issue 13): stable plan keys, shards that partition a plan, units that stack
only what shares its queries, stacked clone training equal to one-at-a-time training, serial = pool = Ray
records, `modelsteal results merge` of shards equal to one run, and a pool sweep that survives a worker's
``kill -9``."""

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from modelsteal.attacks import attack_class
from modelsteal.cli.main import main
from modelsteal.experiment import run_sweep
from modelsteal.experiment import sweep as sweep_mod
from modelsteal.experiment.config import parse_config
from modelsteal.experiment.executors import PoolExecutor, make_executor
from modelsteal.experiment.plan import parse_shard, plan, shard, units
from modelsteal.experiment.points import sweep_point_key
from modelsteal.models import build_model
from modelsteal.training import TrainConfig, train
from modelsteal.training.stacked import can_stack, train_stacked

TIMING = ("wall_seconds", "attack_seconds")


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


def no_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def csv_rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


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



def test_only_stackable_attacks_hand_over_their_clones_training():
    # bugs caught: a non-stackable attack (the confidence filter inherits Knockoff's collect) handing over a
    # clone job that would train on every answer instead of the kept ones; a stackable attack without collect
    from modelsteal import PredictionAPI
    from modelsteal.attacks.base import Attack

    pool = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    api = PredictionAPI(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0))
    job = attack_class("knockoff")(transfer_set=pool, clone="mlp").begin(api, budget=12, seed=0)
    assert len(job.x) == 12
    with pytest.raises(TypeError, match="'knockoff-filter' is not stackable"):
        attack_class("knockoff-filter")(transfer_set=pool, clone="mlp").begin(api, budget=12, seed=0)
    with pytest.raises(TypeError, match="Broken is stackable but defines no collect"):
        type("Broken", (Attack,), {"stackable": True, "run": lambda self, victim, *, generator: None})

# -- stacked training ----------------------------------------------------------------------------------------------
def _clones(n, arch="lenet", shape=(1, 8, 8)):
    base = build_model(arch, input_shape=shape, num_classes=10, seed=3)
    return [copy.deepcopy(base) for _ in range(n)]


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_stacked_training_equals_one_clone_at_a_time(kind):
    # bugs caught: the clones' losses averaged instead of summed (every gradient scaled by 1/C), another batch
    # order than train() draws, labels of one clone leaking into another, momentum or weight decay not applied
    torch.manual_seed(0)
    x = torch.rand(150, 1, 8, 8)
    ys = [torch.softmax(3 * torch.randn(150, 10), 1) for _ in range(3)]
    if kind == "hard":
        ys = [y.argmax(1) for y in ys]
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-3)
    alone, stacked = _clones(3), _clones(3)
    for m, y in zip(alone, ys, strict=True):
        train(m, x, y, config=cfg, generator=torch.Generator().manual_seed(5))
    histories = train_stacked(stacked, x, ys, config=cfg, generator=torch.Generator().manual_seed(5))
    for a, s in zip(alone, stacked, strict=True):
        for (name, pa), ps in zip(a.state_dict().items(), s.state_dict().values(), strict=True):
            assert torch.allclose(pa, ps, atol=1e-3), (name, (pa - ps).abs().max())
    moved = max((p - q).abs().max() for p, q in zip(stacked[0].parameters(), stacked[1].parameters(), strict=True))
    assert moved > 1e-3  # different labels gave different clones
    assert len(histories) == 3 and all(len(h.loss) == 2 for h in histories)


def test_stacked_training_keeps_each_clones_own_best_validation_epoch():
    # bug caught: one best epoch chosen for all clones (e.g. by the mean accuracy), or the last epoch kept
    torch.manual_seed(1)
    x, x_val = torch.rand(120, 1, 8, 8), torch.rand(60, 1, 8, 8)
    y_val = torch.randint(0, 10, (60,))
    ys = [torch.randint(0, 10, (120,)) for _ in range(3)]
    cfg = TrainConfig(epochs=6, batch_size=16, lr=0.2, momentum=0.9)
    alone, stacked = _clones(3, arch="mlp", shape=(1, 8, 8)), _clones(3, arch="mlp", shape=(1, 8, 8))
    want = [train(m, x, y, config=cfg, generator=torch.Generator().manual_seed(2), val=(x_val, y_val))
            for m, y in zip(alone, ys, strict=True)]
    got = train_stacked(stacked, x, ys, config=cfg, generator=torch.Generator().manual_seed(2), val=(x_val, y_val))
    assert [h.best_epoch for h in got] == [h.best_epoch for h in want]
    assert len({h.best_epoch for h in got}) > 1  # the clones' best epochs differ here, so a shared choice fails
    for g, w in zip(got, want, strict=True):
        assert g.val_accuracy == pytest.approx(w.val_accuracy, abs=1e-6)
    for a, s in zip(alone, stacked, strict=True):
        for pa, ps in zip(a.state_dict().values(), s.state_dict().values(), strict=True):
            assert torch.allclose(pa, ps, atol=2e-5)


def test_models_with_batch_norm_are_not_stacked():
    # bug caught: stacking a ResNet, whose running statistics vmap cannot update in place
    resnets = [build_model("resnet18", input_shape=(3, 8, 8), num_classes=10, seed=0) for _ in range(2)]
    assert not can_stack(resnets) and not can_stack(_clones(1)) and can_stack(_clones(2))
    with pytest.raises(ValueError, match="batch norm"):
        train_stacked(resnets, torch.rand(4, 3, 8, 8), [torch.zeros(4, dtype=torch.long)] * 2)


def test_a_stacked_sweep_agrees_with_one_clone_at_a_time(tmp_path):
    # bug caught: stacked points trained on another point's answers (every row of a unit equal), or a unit's records
    # assigned to the wrong points (rows permuted between defenses)
    cfg = tiny(seeds=[0])
    alone = run_sweep(cfg, out_dir=tmp_path / "alone", progress=False, plots=False, stack_clones=1)
    stacked = run_sweep(cfg, out_dir=tmp_path / "stacked", progress=False, plots=False, stack_clones=8)
    assert [r.get("stacked_clones") for r in stacked] == [3, 3, 3]
    assert "stacked_clones" not in alone[0]
    for a, s in zip(alone, stacked, strict=True):
        assert (a["defense"], a["strength"]) == (s["defense"], s["strength"])
        assert abs(a["attacker_accuracy"] - s["attacker_accuracy"]) <= 0.01
        assert a["query_l1_mean"] == pytest.approx(s["query_l1_mean"], abs=1e-6)
    assert len({round(r["query_l1_mean"], 6) for r in stacked}) == 3


# -- executors -----------------------------------------------------------------------------------------------------
def test_serial_and_pool_give_identical_records(tmp_path):
    # bugs caught: a worker using another thread count or seed, records matched to the wrong points when they
    # come back out of order, a worker recomputing (or missing) the fitted state the driver made
    cfg = tiny()
    serial = run_sweep(cfg, out_dir=tmp_path / "serial", progress=False, plots=False, stack_clones=1)
    pool = run_sweep(cfg, out_dir=tmp_path / "pool", progress=False, plots=False, stack_clones=1,
                     executor=PoolExecutor(workers=2))
    assert no_timing(pool) == no_timing(serial)
    assert csv_rows(tmp_path / "pool" / "results.csv") == csv_rows(tmp_path / "serial" / "results.csv")


@pytest.mark.ray
def test_ray_on_a_local_two_worker_cluster_gives_the_serial_records(tmp_path):
    ray = pytest.importorskip("ray")
    cfg = tiny(seeds=[0])
    serial = run_sweep(cfg, out_dir=tmp_path / "serial", progress=False, plots=False)
    try:
        remote = run_sweep(cfg, out_dir=tmp_path / "ray", progress=False, plots=False,
                           executor=make_executor("ray", workers=2))
    finally:
        ray.shutdown()
    assert no_timing(remote) == no_timing(serial)


def test_results_merge_of_shards_equals_one_run(tmp_path, capsys, monkeypatch):
    # bugs caught: merged rows in shard order instead of plan order, a shard's points not copied (the merged
    # directory recomputes them), rows duplicated
    cfg = tiny()
    whole = run_sweep(cfg, out_dir=tmp_path / "whole", progress=False, plots=False)
    for i in range(2):
        run_sweep(cfg, out_dir=tmp_path / f"s{i}", progress=False, plots=False, shard_of=(i, 2))
    assert main(["results", "merge", str(tmp_path / "s1"), str(tmp_path / "s0"), "--out", str(tmp_path / "m"),
                 "--no-plots"]) == 0
    assert "6 row(s) in plan order" in capsys.readouterr().out
    assert csv_rows(tmp_path / "m" / "results.csv") == csv_rows(tmp_path / "whole" / "results.csv")
    assert len(list((tmp_path / "m" / "points").glob("*.json"))) == len(whole)
    monkeypatch.setattr(sweep_mod, "run_unit", lambda *a, **k: pytest.fail("a merged point was recomputed"))
    again = run_sweep(cfg, out_dir=tmp_path / "m", progress=False, plots=False)
    assert no_timing(again) == no_timing(whole)
    assert main(["results", "export", str(tmp_path / "m"), "--format", "json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [r["attacker_accuracy"] for r in exported] == [r["attacker_accuracy"] for r in whole]


@pytest.mark.parametrize("argv, needle", [
    (["--shard", "2/2"], "--shard"),
    (["--stack-clones", "0"], "--stack-clones"),
    (["--workers", "2"], "--backend pool or ray"),
    (["--backend", "ray", "--address", "host:1"], "--address"),
    (["--address", "auto"], "--address is for --backend ray"),
    (["--backend", "pool", "--workers", "0"], "--workers"),
])
def test_scaleout_flag_mistakes_are_one_line_errors_before_any_work(tmp_path, capsys, argv, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("victim: {dataset: digits}\ndefenses: [{name: none}]\nattacks: [{name: knockoff}]\nbudgets: [10]\n")
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "o").exists()


# -- reliability ---------------------------------------------------------------------------------------------------
def _workers_of(pid):
    """PIDs of the spawned worker processes under ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmd:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds worker processes through /proc")
def test_a_pool_sweep_with_a_killed_worker_resumes_with_only_the_missing_points(tmp_path):
    # bugs caught: points written only at the end (a crash loses them all), a finished point recomputed on the
    # rerun, a rerun whose CSV differs from an uninterrupted run's
    raw = ("name: kill\nvictim: {dataset: digits, arch: mlp, epochs: 2}\ntransfer: {source: dataset}\n"
           "defenses: [{name: none}, {name: reverse-sigmoid, strengths: [0.1, 0.2, 0.3, 0.4, 0.5],"
           " options: {gamma: 0.2}}]\nattacks: [{name: knockoff, clone: mlp, train: {epochs: 15}}]\n"
           "budgets: [600]\nseeds: [0]\ndevice: cpu\n")
    cfg = tmp_path / "kill.yaml"
    cfg.write_text(raw)
    cmd = [sys.executable, "-m", "modelsteal", "--threads", "1", "sweep", str(cfg), "--no-plots", "--quiet",
           "--stack-clones", "1"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out), "--backend", "pool", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "points").glob("*.json"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    workers = _workers_of(proc.pid)
    assert workers, "no worker process found"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=240)
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "points").glob("*.json")}
    assert proc.returncode == 1, err
    assert err.strip().splitlines()[-1].startswith("modelsteal sweep: a worker process died")
    assert 2 <= len(finished) < 6
    rerun = subprocess.run([*cmd, "--out", str(out), "--backend", "pool", "--workers", "2"], capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{6 - len(finished)} point(s) computed, {len(finished)} already cached" in rerun.stdout
    assert {n: (out / "points" / n).stat().st_mtime_ns for n in finished} == finished
    whole = subprocess.run([*cmd, "--out", str(tmp_path / "whole")], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    assert csv_rows(out / "results.csv") == csv_rows(tmp_path / "whole" / "results.csv")
