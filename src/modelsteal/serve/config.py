"""What ``modelsteal serve`` needs to build the app: :class:`ServeConfig` and the API it describes.

The config is JSON-serialisable so that each uvicorn worker (``--workers N``) rebuilds the same API from
the ``MODELSTEAL_SERVE_CONFIG`` environment variable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from modelsteal.blackbox import PredictionAPI

CONFIG_ENV = "MODELSTEAL_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``modelsteal serve`` needs to build the app (JSON-serialisable, for uvicorn workers).

    ``max_body_bytes=None`` sizes the body limit from ``max_batch`` and the input shape (room for JSON
    numbers of about 24 characters each).
    """

    checkpoint: str
    defense: str = "none"
    defense_options: dict[str, Any] = field(default_factory=dict)
    strength: float | None = None
    output: str = "probs"
    output_options: dict[str, Any] = field(default_factory=dict)
    store: str | None = None
    max_batch: int = 1024
    max_body_bytes: int | None = None
    input_range: tuple[float, float] = (0.0, 1.0)
    range_tolerance: float = 1e-6
    record_inputs: bool = False
    device: str = "cpu"
    torch_threads: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        d = json.loads(text)
        d["input_range"] = tuple(d.get("input_range", (0.0, 1.0)))
        return cls(**d)


def build_api(config: ServeConfig) -> tuple[PredictionAPI, dict[str, Any]]:
    """Load the checkpoint and wrap it with the configured defense and output format (no budget: the
    ledger enforces budgets). Returns the API and a description for ``/v1/info``."""
    from modelsteal.defenses.base import fit_defense, make_defense
    from modelsteal.models.checkpoint import load_checkpoint
    from modelsteal.outputs import make_output

    if config.torch_threads:
        torch.set_num_threads(int(config.torch_threads))
    model, meta = load_checkpoint(config.checkpoint, device=config.device)
    defense = make_defense(config.defense, strength=config.strength, **dict(config.defense_options))
    fit_defense(defense, model, dataset=meta.get("dataset"))
    out_opts = dict(config.output_options)
    unknown = sorted(set(out_opts) - {"k", "decimals"})
    if unknown:
        raise ValueError(f"unknown output option(s) {', '.join(unknown)}; known: k (top-k), decimals (rounded)")
    output = make_output(config.output, **out_opts)
    api = PredictionAPI(model, defense=defense, output=output, budget=None,
                        input_shape=meta["input_shape"], num_classes=meta["num_classes"], device=config.device)
    info = {
        "defense": {
            "name": "none" if defense is None else (defense.name or type(defense).__name__),
            "description": "none" if defense is None else repr(defense),
            "options": {k: v for k, v in config.defense_options.items()},
            "strength": None if defense is None else defense.strength,
        },
        "dataset": meta.get("dataset"),
        "arch": meta.get("arch"),
    }
    return api, info


def default_max_body_bytes(*, max_batch: int, input_shape: Sequence[int]) -> int:
    """A body limit that fits ``max_batch`` rows as JSON numbers of up to ~24 characters, plus 64 KiB."""
    return int(max_batch * math.prod(int(s) for s in input_shape) * 24 + 65536)

