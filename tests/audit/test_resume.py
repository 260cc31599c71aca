"""An audit killed (kill -9) or interrupted (Ctrl-C) resumes from its cache: finished clones are not retrained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

ATTACKS = ["knockoff-random", "knockoff-argmax", "jbda"]


def _start(victim_path, out):
    argv = [sys.executable, "-m", "modelsteal", "audit", "--target", str(victim_path), "--pool", "sample-patches",
            "--test", "digits", "--budget", "316", "--attacks", *ATTACKS, "--defenses", "--quiet",
            "--backend", "serial", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_points(proc, out, at_least, *, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = len(list((out / "points").glob("*.json"))) if (out / "points").exists() else 0
        if n >= at_least:
            return n
        if proc.poll() is not None:
            pytest.fail(f"the audit ended before it was stopped: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no point finished in time")


def test_kill_and_interrupt_then_resume(victim_path, tmp_path):
    from modelsteal import audit

    out = tmp_path / "audit"
    proc = _start(victim_path, out)
    _wait_for_points(proc, out, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    after_kill = len(list((out / "points").glob("*.json")))
    assert after_kill >= 1 and not list((out / "points").glob("*.tmp"))  # atomic: no half-written point

    proc = _start(victim_path, out)  # Ctrl-C in the middle of the resumed run
    _wait_for_points(proc, out, after_kill + 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
    after_int = len(list((out / "points").glob("*.json")))
    assert after_int > after_kill

    report = audit(victim_path, pool=["sample-patches"], test="digits", budget=316, attacks=ATTACKS, defenses=[],
                   out=out, progress=False, backend="serial")
    total = len(ATTACKS) * 2  # rungs 100 and 316
    assert report["points"] == {"total": total, "cached": after_int, "computed": total - after_int}
    assert len(report["records"]) == total
