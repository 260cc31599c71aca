"""Devices: ``auto`` picks CUDA when present; a named device is checked before any work."""

from __future__ import annotations

import torch

_BACKENDS = {"cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The device ``name`` names on this machine: ``auto`` (or ``None``) picks CUDA when available, else the
    CPU; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` and ``xpu`` are checked, so an unavailable, out-of-range or
    unknown device is a one-line ``ValueError`` before any work (every CLI command goes through here)."""
    text = "auto" if name is None else str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {str(name)!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cpu":
        return dev
    if dev.type not in _BACKENDS:
        raise ValueError(f"device {str(name)!r} cannot run models here; use cpu, cuda, cuda:N or auto")
    label, backend = _BACKENDS[dev.type], getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"{label} is not available on this machine; use --device cpu or auto")
    count = int(backend.device_count()) if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"{dev} does not exist: this machine has {count} {label} device(s), "
                         f"{dev.type}:0 to {dev.type}:{count - 1}")
    return dev
