"""The determinism switch: one call that makes torch pick only deterministic kernels for the rest of the process.

``modelsteal --deterministic COMMAND …`` and a sweep config's ``deterministic: true`` both call
:func:`enable_determinism` before any work. It

- turns on ``torch.use_deterministic_algorithms(True)`` (``warn_only=False``: an op without a deterministic
  implementation raises instead of silently varying),
- sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when CUDA is available (cuBLAS needs it for deterministic GEMMs;
  a value already set is kept),
- turns cuDNN's autotuner (``benchmark``) off and its ``deterministic`` flag on,
- fixes torch's intra-op thread count (``threads``, default 1; a float reduction split over other thread
  counts rounds differently) and, where torch still allows it, the inter-op count to 1.

Data-loader workers: the toolkit's loops draw batches in the main process (the DP-SGD loader uses
``num_workers=0`` and a generator split off the run's seed), so there are no worker processes to seed.

It does not make two *machines* agree: other CPU kernels (another instruction set, another oneDNN) round
differently even when each is deterministic (see ``docs/reproduction.md``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

#: the cuBLAS workspace setting that makes its GEMMs deterministic (one of the two values NVIDIA documents)
CUBLAS_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class DeterminismState:
    """What :func:`enable_determinism` set, for logs and recorded environments."""

    threads: int
    interop_threads: int
    cublas_workspace_config: str | None


def enable_determinism(*, threads: int | None = None) -> DeterminismState:
    """Make the rest of this process use deterministic kernels only, on ``threads`` torch threads (default 1).

    Raises ``ValueError`` for ``threads < 1``.
    """
    n = 1 if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cublas = None
    if torch.cuda.is_available():
        cublas = os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=False)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.set_num_threads(n)
    _try_single_interop_thread()
    return DeterminismState(threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
                            cublas_workspace_config=cublas)


def _try_single_interop_thread() -> None:
    """One inter-op thread where torch still allows the change (only before its first parallel work).

    Inter-op threads run independent ops side by side; each op's arithmetic is unchanged, so leaving
    them when torch refuses does not change any result."""
    if torch.get_num_interop_threads() == 1:
        return
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
