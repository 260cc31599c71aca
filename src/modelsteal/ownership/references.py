"""Independent reference models the owner trains to estimate a verifier's null (:mod:`modelsteal.ownership.null`).

A reference model is what an honest third party could have built: its own architecture and seed, trained with
true labels on data *disjoint from the victim's private data*. Several architectures and seeds matter: the null
must cover the independent model that happens to confuse the watermark's source class with its target, not the
average one. References are cached on disk (``cache_dir``), keyed by the SHA-256 of their training data and
settings, so a second ``modelsteal verify`` (or a second suspect) reuses them.

Example::

    refs = train_references(x_public, y_public, like=victim, count=6, epochs=30, cache_dir=".modelsteal-refs")
    verifier.calibrate(refs)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from modelsteal.models import build_model
from modelsteal.training import TrainConfig, train

#: the architectures references cycle through (several, so that the null covers more than one inductive bias)
REFERENCE_ARCHS = ("mlp", "lenet", "cnn")


def reference_specs(count: int, *, archs: Sequence[str] = REFERENCE_ARCHS, first_seed: int = 1000
                    ) -> list[tuple[str, int]]:
    """``count`` ``(architecture, seed)`` pairs cycling through ``archs`` with seeds ``first_seed + i``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of reference models must be an integer >= 1, got {count!r}")
    if not archs:
        raise ValueError("reference models need at least one architecture")
    return [(archs[i % len(archs)], first_seed + i) for i in range(count)]


def data_digest(*tensors: Tensor) -> str:
    """SHA-256 (hex) of the tensors' shapes, dtypes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(json.dumps([list(t.shape), str(t.dtype)]).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def train_references(x: Tensor, y: Tensor, *, like: nn.Module, count: int = 6, epochs: int = 30,
                     lr: float = 0.05, archs: Sequence[str] = REFERENCE_ARCHS, first_seed: int = 1000,
                     cache_dir: str | Path | None = None, device: torch.device | str = "cpu",
                     progress: bool = False) -> list[nn.Module]:
    """``count`` reference models (:func:`reference_specs`) trained with true labels ``y`` on ``x`` (SGD ``lr``,
    momentum 0.9, ``epochs``), for the task of ``like`` (its input shape, classes and normalisation); each cached
    under ``cache_dir`` when given. ``x`` must be disjoint from the victim's private data (the caller's duty)."""
    shape, classes = tuple(like.input_shape), int(like.num_classes)
    norm = getattr(like, "normalize", None)
    mean = None if norm is None else norm.mean.flatten().tolist()
    std = None if norm is None else norm.std.flatten().tolist()
    digest = data_digest(x, y)
    out = []
    for i, (arch, seed) in enumerate(reference_specs(count, archs=archs, first_seed=first_seed)):
        model = build_model(arch, input_shape=shape, num_classes=classes, mean=mean, std=std, seed=seed)
        key = hashlib.sha256(json.dumps([digest, arch, seed, epochs, lr, shape, classes, mean, std]).encode())
        path = None if cache_dir is None else Path(cache_dir) / f"reference-{arch}-{seed}-{key.hexdigest()[:16]}.pt"
        if path is not None and path.is_file():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            source = "cached"
        else:
            train(model, x, y, config=TrainConfig(epochs=epochs, lr=lr, momentum=0.9),
                  generator=torch.Generator().manual_seed(seed), device=device)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), path)
            source = "trained"
        if progress:
            print(f"reference {i + 1}/{count}: {arch} seed {seed} ({source})", flush=True)
        out.append(model.to(device).eval())
    return out
