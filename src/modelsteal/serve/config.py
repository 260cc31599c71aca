"""What ``modelsteal serve`` needs to build the app: :class:`ServeConfig` and the API it describes.

The config is JSON-serialisable so that each uvicorn worker (``--workers N``) rebuilds the same API from
the ``MODELSTEAL_SERVE_CONFIG`` environment variable.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelsteal.blackbox import PredictionAPI
from modelsteal.detectors.base import Detector

CONFIG_ENV = "MODELSTEAL_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``modelsteal serve`` needs to build the app (JSON-serialisable, for uvicorn workers).

    ``max_body_bytes=None`` sizes the body limit from ``max_batch`` and the input shape (room for JSON
    numbers of about 24 characters each).
    """

    checkpoint: str = ""
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
    detector: str = "none"
    detector_options: dict[str, Any] = field(default_factory=dict)
    response: str = "none"
    detector_tnr: float | None = 0.95
    data_dir: str | None = None
    model_name: str | None = None  #: the model's name on /v2 (default: the checkpoint's file stem)
    # the gateway (serve/upstream.py): answer from this endpoint instead of a checkpoint
    upstream: str | None = None
    upstream_protocol: str = "auto"
    upstream_model: str | None = None
    upstream_key: str | None = None
    upstream_timeout: float = 10.0
    upstream_pool: int = 32
    surrogate: str | None = None  #: a gateway's local architecture for MAD's surrogate and AM's f-hat
    dataset: str | None = None  #: the data a gateway's detector and AM are fitted on
    #: how to read ``checkpoint`` when it is another model file (see :func:`~modelsteal.models.formats.load_model`)
    model_format: str | None = None
    model_weights: str | None = None
    model_spec_file: str | None = None
    model_spec: dict[str, Any] = field(default_factory=dict)
    max_batch_rows: int = 256
    max_batch_delay_ms: float = 2.0
    batch_workers: int = 1
    idempotency_window_s: float = 86_400.0
    snapshot_every: int | None = 1000
    #: serve a convolutional model on the CPU in channels-last layout (oneDNN's fast path; answers may differ
    #: from the checkpoint's in the last bit); ``False`` (``--exact-layout``) keeps the checkpoint's layout
    fast_layout: bool = True
    ledger_sync: str = "full"  #: :func:`~modelsteal.serve.store.open_store`'s ``sync``

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        d = json.loads(text)
        d["input_range"] = tuple(d.get("input_range", (0.0, 1.0)))
        return cls(**d)


def check_detector(config: ServeConfig) -> Detector | None:
    """The configured detector, built but not fitted (``None`` for ``none``), after checking the detector,
    its options, the response and the calibration rate: a one-line ``ValueError`` for a mistake, before
    anything is loaded."""
    from modelsteal.detectors.base import make_detector
    from modelsteal.detectors.responses import available_responses

    name = config.detector.strip().lower()
    if config.response not in available_responses():
        raise ValueError(f"unknown response {config.response!r}; known: {', '.join(available_responses())}")
    if name == "none":
        if config.detector_options:
            raise ValueError(f"--detector-option {', '.join(sorted(config.detector_options))} given without "
                             "--detector NAME")
        if config.response != "none":
            raise ValueError(f"--response {config.response} acts on flagged queries, but no detector flags any: "
                             "pass --detector NAME (e.g. prada)")
        return None
    detector = make_detector(config.detector, **dict(config.detector_options))
    if detector.needs_outliers:
        raise ValueError(f"detector {detector.name!r} is trained against an outlier set, which the server cannot "
                         "give it: fit it from Python and serve it with create_app(PredictionAPI(...))")
    if config.detector_tnr is not None and not 0 < float(config.detector_tnr) < 1:
        raise ValueError(f"--detector-tnr must lie in (0, 1), got {config.detector_tnr}")
    return detector


def fit_detector(detector: Detector, model: nn.Module, *, dataset: str | None, tnr: float | None,
                 data_dir: str | None = None, seed: int = 0) -> None:
    """Fit ``detector`` on the victim's own dataset (the one its checkpoint names) and calibrate it on that
    dataset's validation split for a true-negative rate ``tnr``
    (:meth:`~modelsteal.detectors.Detector.calibrate_benign`: per query for a stateless detector; for
    PRADA δ such that that fraction of 20 benign clients, each the validation split in its own random order, is
    never flagged); ``tnr=None`` keeps the threshold that ``fit`` set (PRADA: ``1 − delta``)."""
    from modelsteal.data import load_dataset

    if not dataset:
        raise ValueError(f"detector {detector.name!r} is fitted on the victim's data, but the checkpoint does not "
                         "name its dataset; fit it from Python and serve it with create_app(PredictionAPI(...))")
    data = load_dataset(dataset, data_dir=data_dir, seed=seed)
    detector.fit(model, data, generator=torch.Generator().manual_seed(seed))
    if tnr is not None:
        detector.calibrate_benign(data.x_val, tnr=float(tnr), seed=seed)
    elif detector.threshold is None:
        raise ValueError(f"detector {detector.name!r} sets no threshold of its own: calibrate it with "
                         "--detector-tnr RATE")


def _response(config: ServeConfig, *, defense: Any, model: nn.Module, dataset: str | None) -> Any:
    """The response object: ``misinform`` answers with Adaptive Misinformation's f̂ (the defense's own when it
    is ``am``, else one trained on the victim's data like ``--defense am`` does)."""
    from modelsteal.defenses.base import fit_defense
    from modelsteal.defenses.misinformation import AdaptiveMisinformation
    from modelsteal.detectors.responses import make_response

    if config.response != "misinform":
        return make_response(config.response)
    own = isinstance(defense, AdaptiveMisinformation) and isinstance(defense.misinformation, nn.Module)
    am = defense if own else AdaptiveMisinformation(tau=1.0)
    if not own:
        fit_defense(am, model, dataset=dataset)
    return make_response("misinform", model=am.misinformation)


def build_api(config: ServeConfig) -> tuple[PredictionAPI, dict[str, Any]]:
    """Load the checkpoint and wrap it with the configured defense, detector (fitted and calibrated on the
    victim's data) and output format (no budget: the ledger enforces budgets). Returns the API and a
    description for ``/v1/info``."""
    from modelsteal.defenses.base import fit_defense, make_defense
    from modelsteal.models.builders import cpu_fast_layout
    from modelsteal.models.formats import ModelSpec, load_model
    from modelsteal.outputs import make_output

    if config.upstream:
        from modelsteal.serve.upstream import build_gateway_api

        return build_gateway_api(config)
    detector = check_detector(config)  # mistakes here are reported before the checkpoint is loaded
    if config.torch_threads:
        torch.set_num_threads(int(config.torch_threads))
    loaded = load_model(config.checkpoint, spec=ModelSpec(**config.model_spec), format=config.model_format,
                        weights=config.model_weights, spec_file=config.model_spec_file, device=config.device)
    model, meta = loaded.model, loaded.meta
    defense = make_defense(config.defense, strength=config.strength, **dict(config.defense_options))
    fit_defense(defense, model, dataset=meta.get("dataset"))
    if detector is not None:
        fit_detector(detector, model, dataset=meta.get("dataset"), tnr=config.detector_tnr, data_dir=config.data_dir)
    out_opts = dict(config.output_options)
    unknown = sorted(set(out_opts) - {"k", "decimals"})
    if unknown:
        raise ValueError(f"unknown output option(s) {', '.join(unknown)}; known: k (top-k), decimals (rounded)")
    output = make_output(config.output, **out_opts)
    response = _response(config, defense=defense, model=model, dataset=meta.get("dataset")) if detector else "none"
    if config.fast_layout:
        model = cpu_fast_layout(model)  # after fitting: only the served forward changes layout
    api = PredictionAPI(model, defense=defense, detector=detector, response=response, output=output, budget=None,
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
        "model_name": config.model_name or Path(config.checkpoint).stem,
        "model_format": loaded.format,
    }
    if detector is not None:
        info["detector"] = {"name": detector.name, "description": repr(detector), "response": config.response,
                            "options": dict(config.detector_options), "tnr": config.detector_tnr,
                            "threshold": detector.threshold, "stateful": detector.stateful}
    return api, info


def default_max_body_bytes(*, max_batch: int, input_shape: Sequence[int]) -> int:
    """A body limit that fits ``max_batch`` rows as JSON numbers of up to ~24 characters, plus 64 KiB."""
    return int(max_batch * math.prod(int(s) for s in input_shape) * 24 + 65536)

