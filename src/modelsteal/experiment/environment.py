"""What a result was made with: the victim file's SHA-256, the git commit, library versions, threads, CPU and ISA.

A sweep writes these facts to ``DIR/provenance.json`` beside ``results.csv`` (written by
:func:`modelsteal.experiment.results.write_provenance`; the fields are listed in ``docs/reproduction.md``,
"What each results directory records"). Nothing here raises: a fact that cannot be read (no git checkout,
no ``/proc/cpuinfo``, no oneDNN) is ``None``.

The instruction set oneDNN dispatches to is read from oneDNN itself: a child Python process runs one small
convolution with ``ONEDNN_VERBOSE=1`` and this process's environment (so ``ONEDNN_MAX_CPU_ISA`` and thread
settings apply to it as they apply here), and the ``…,info,cpu,isa:…`` line oneDNN prints before its first
primitive is kept (e.g. ``Intel AVX2``, ``Intel AVX-512 with …``). It costs one torch import (a few seconds
on a slow machine) and is done once per process. ``torch.backends.cpu.get_cpu_capability()`` (ATen's own
vectorised kernels: ``DEFAULT``, ``AVX2``, ``AVX512``; capped by ``ATEN_CPU_CAPABILITY``) is recorded beside it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

#: environment variables that set thread counts or cap the instruction set of the CPU kernels
THREAD_AND_ISA_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
)

#: the child process behind :func:`onednn_isa`: convolutions large enough that torch hands them to oneDNN
_ONEDNN_PROBE = (
    "import torch\n"
    "x = torch.ones(16, 3, 32, 32)\n"
    "w = torch.ones(8, 3, 5, 5)\n"
    "torch.nn.functional.conv2d(x, w, dilation=2, stride=2)\n"
    "torch.nn.functional.conv2d(x, w)\n"
)


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def git_state(cwd: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": HEAD or None, "dirty": bool or None}`` of the git checkout holding ``cwd`` (default: the
    current directory); both ``None`` outside a checkout or without git. ``dirty`` counts tracked changes only."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Versions of Python, torch, NumPy and scikit-learn (``None`` for one not installed)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "scikit-learn": _version("scikit-learn"),
    }


def thread_settings() -> dict[str, Any]:
    """torch's intra- and inter-op thread counts, whether deterministic algorithms are on, and the thread /
    ISA environment variables (``None`` when unset)."""
    return {
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "env": {name: os.environ.get(name) for name in THREAD_AND_ISA_VARS},
    }


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str | None:
    """The CPU's ``model name`` from ``/proc/cpuinfo``; else :func:`platform.processor` or the machine type."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def parse_onednn_isa(verbose: str) -> str | None:
    """The ISA in oneDNN's verbose header (``onednn_verbose,…,info,cpu,isa:Intel AVX2`` → ``Intel AVX2``)."""
    for line in verbose.splitlines():
        if "verbose" in line and ",info,cpu,isa:" in line:
            return line.split(",info,cpu,isa:", 1)[1].strip() or None
    return None


@functools.lru_cache(maxsize=1)
def onednn_isa() -> str | None:
    """The instruction set oneDNN uses in a child process with this environment (see the module docstring);
    ``None`` when torch has no oneDNN or the probe fails. Cached for the process."""
    if not torch.backends.mkldnn.is_available():
        return None
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], env=env, capture_output=True, text=True,
                              timeout=120, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_onednn_isa(done.stdout + "\n" + done.stderr)


def _accelerator(device: torch.device | str | None) -> str | None:
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return None


def environment(*, device: torch.device | str | None = None, cwd: str | Path | None = None) -> dict[str, Any]:
    """Every fact above in one JSON-serialisable mapping: ``git`` (of ``cwd``, default: the checkout holding
    this package's source), ``versions``, ``threads``, ``cpu`` (model, ATen capability, oneDNN ISA, platform)
    and the ``device`` the run used (with the accelerator's name on CUDA)."""
    return {
        "git": git_state(cwd if cwd is not None else Path(__file__).resolve().parent),
        "versions": library_versions(),
        "threads": thread_settings(),
        "cpu": {
            "model": cpu_model(),
            "aten_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_isa": onednn_isa(),
            "platform": platform.platform(),
        },
        "device": None if device is None else str(device),
        "accelerator": _accelerator(device),
    }
