"""Seldon MLServer on loopback, serving a scikit-learn model of the digits, for the v2 client and gateway tests.

MLServer pins an older FastAPI than ours, so it lives in a virtual environment of its own that ``make
mlserver`` creates (``.venv-mlserver`` at the repository root, or ``$MODELSTEAL_MLSERVER_VENV``). The model is
trained and saved with joblib *by that environment's Python* (as an owner would), on the digits split this
package embeds, flattened to 64 features; MLServer is then started as a separate process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("MODELSTEAL_MLSERVER_VENV", ROOT / ".venv-mlserver"))
MLSERVER = VENV / "bin" / "mlserver"
PYTHON = VENV / "bin" / "python"
MODEL_NAME = "digits-lr"
SKIP_REASON = (f"MLServer's virtual environment {VENV} is absent: run `make mlserver` (CI does, in .ci/run)")

_TRAIN = """
import sys, joblib, numpy as np
from sklearn.linear_model import LogisticRegression
x, y = np.load(sys.argv[1]), np.load(sys.argv[2])
model = LogisticRegression(max_iter=2000, C=float(sys.argv[4])).fit(x, y)
joblib.dump(model, sys.argv[3])
"""


def available() -> bool:
    return MLSERVER.exists() and PYTHON.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_model(directory: Path, x: np.ndarray, y: np.ndarray, *, c: float = 1.0) -> Path:
    """A logistic regression on ``x`` (N, 64) float32 and labels ``y``, saved with joblib by MLServer's Python."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "x.npy", x.astype(np.float32))
    np.save(directory / "y.npy", y.astype(np.int64))
    path = directory / "model.joblib"
    subprocess.run([str(PYTHON), "-c", _TRAIN, str(directory / "x.npy"), str(directory / "y.npy"), str(path), str(c)],
                   check=True, capture_output=True, timeout=300)
    return path


class MLServerProcess:
    """``mlserver start`` on 127.0.0.1 with free ports, serving ``model_path`` as :data:`MODEL_NAME` (v2 REST);
    a context manager that always reaps the process."""

    def __init__(self, directory: Path, model_path: Path, *, features: int = 64, classes: int = 10) -> None:
        self.dir = directory
        self.port = free_port()
        (directory / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": self.port, "grpc_port": free_port(), "metrics_port": free_port(),
            "parallel_workers": 0, "debug": False,
        }))
        (directory / "model-settings.json").write_text(json.dumps({
            "name": MODEL_NAME, "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(model_path)},
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, features]}],
            "outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [-1, classes]}],
        }))
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoint = f"{self.url}/v2/models/{MODEL_NAME}"
        self.log_path = directory / "mlserver.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, *, timeout: float = 120.0) -> MLServerProcess:
        import httpx

        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MLSERVER_METRICS_ENABLED="false")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([str(MLSERVER), "start", str(self.dir)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlserver exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.endpoint}/ready", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlserver did not become ready within {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def __enter__(self) -> MLServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
