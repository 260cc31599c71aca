"""Ray sweeps: ``--gpus-per-task`` without a GPU is refused before the victim trains (the local cluster would
wait for a GPU forever), and a local cluster that the sweep started is shut down on every exit path, signals
included (issue 29, defect 3): after SIGTERM or SIGINT to the driver no process of its cluster survives."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import one_line_error

import modelsteal.experiment.victims as victims_module
from modelsteal.experiment.executors import make_executor

TINY = {
    "name": "tiny",
    "victim": {"dataset": "digits", "arch": "mlp", "epochs": 1},
    "transfer": {"source": "dataset", "dataset": "digits", "size": 50},
    "defenses": [{"name": "none"}],
    "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 1}}],
    "budgets": [20],
}


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a victim was trained before the executor was checked")

    monkeypatch.setattr(victims_module, "train_victim", fail)


def test_gpus_per_task_without_a_gpu_is_refused_before_any_work(tmp_path, capsys, no_gpu, forbid_training):
    pytest.importorskip("ray")
    with pytest.raises(ValueError, match=r"--gpus-per-task 1 .*no GPU"):
        make_executor("ray", num_gpus=1)
    with pytest.raises(ValueError, match=r"--gpus-per-task 0.5 .*no GPU"):
        make_executor("ray", num_gpus=0.5)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    one_line_error(capsys, ["sweep", cfg, "--out", tmp_path / "o", "--backend", "ray", "--gpus-per-task", "1"],
                   "--gpus-per-task 1", "no GPU")
    assert not (tmp_path / "o").exists()
    import ray

    assert not ray.is_initialized()  # refused before any cluster was started


def test_more_gpus_per_task_than_this_machine_has_is_refused(monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"--gpus-per-task 2 .*1 GPU"):
        make_executor("ray", num_gpus=2)
    assert make_executor("ray", num_gpus=1).num_gpus == 1.0


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _descendants(pid: int) -> set[int]:
    kids, out, todo = _children(), set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            state = (Path("/proc") / str(p) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


@pytest.mark.ray
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_driver_leaves_no_ray_process(sig, tmp_path):
    pytest.importorskip("ray")
    slow = {**TINY, "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 100000}}],
            "transfer": {"source": "dataset", "dataset": "digits"}, "budgets": [1000]}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(slow))
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    log = open(tmp_path / "driver.log", "wb")  # noqa: SIM115
    driver = subprocess.Popen([sys.executable, "-m", "modelsteal", "sweep", str(cfg), "--out", str(tmp_path / "o"),
                               "--backend", "ray", "--workers", "1", "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                              env=env, start_new_session=True)
    try:
        cluster: set[int] = set()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            cluster = _descendants(driver.pid)
            cmds = " ".join(_cmdline(p) for p in cluster)
            if "raylet" in cmds and "ray::" in cmds:  # the cluster is up and a worker runs the unit
                break
            time.sleep(0.5)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        assert "raylet" in " ".join(_cmdline(p) for p in cluster), "the Ray cluster did not start in time"
        time.sleep(2)
        cluster |= _descendants(driver.pid)
        driver.send_signal(sig)
        driver.wait(timeout=90)
        deadline = time.monotonic() + 60
        while _alive(cluster) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {p: _cmdline(p) for p in _alive(cluster)}
        assert not left, f"Ray processes alive after {sig.name}: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
        for p in _alive(_descendants(driver.pid) | locals().get("cluster", set())):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
