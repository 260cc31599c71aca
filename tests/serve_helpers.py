"""Helpers for the server tests: a tiny checkpoint and a real ``modelsteal serve`` process on loopback.

Every wait here is bounded in time, and :class:`ServerProcess` always reaps its process (terminate, then
kill) so a failing test leaves nothing running.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from modelsteal.models import build_model, save_checkpoint

INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10
_LISTEN_RE = re.compile(r"listening on (http://[^\s]+)")


def make_checkpoint(path: Path, *, arch: str = "mlp", seed: int = 0) -> Path:
    """A randomly initialised (1, 8, 8) → 10 classifier saved as a modelsteal checkpoint."""
    model = build_model(arch, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES, seed=seed)
    return save_checkpoint(model, path, dataset="synthetic")


class ServerProcess:
    """``python -m modelsteal serve ...`` on 127.0.0.1 with a free port; its output goes to a log file.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (always safe to call twice).
    """

    def __init__(self, *, model: Path, store: str, log_path: Path, args: Sequence[str] = ()) -> None:
        self.argv = [
            sys.executable, "-m", "modelsteal", "serve", "--model", str(model), "--store", store,
            "--host", "127.0.0.1", "--port", "0", "--log-level", "warning", "--no-access-log", "--threads", "1",
            *args,
        ]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, *, timeout: float = 60.0) -> ServerProcess:
        import httpx

        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if not self.url:
                m = _LISTEN_RE.search(self.log())
                if m:
                    self.url = m.group(1)
            if self.url:
                try:
                    if httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy within {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill9(self) -> None:
        """SIGKILL the server (no shutdown handlers run) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
