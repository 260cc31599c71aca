"""Sweeps run by executors: a stacked sweep agrees with one clone at a time, serial = pool = Ray records,
`modelsteal results merge` of shards equal to one run, and a pool sweep that survives a worker's ``kill -9``."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelsteal.cli.main import main
from modelsteal.experiment import run_sweep
from modelsteal.experiment import sweep as sweep_mod
from modelsteal.experiment.config import parse_config
from modelsteal.experiment.executors import PoolExecutor, make_executor

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
