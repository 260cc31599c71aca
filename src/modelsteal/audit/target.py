"""The audited target: a model file or a prediction API's URL, turned into a black box (and a local model).

:func:`open_target` is the one place where ``--target`` is interpreted, so a new model format or endpoint
protocol is one change here. It reads every model file :func:`~modelsteal.models.formats.load_model` reads
(modelsteal checkpoints, ONNX, TorchScript, ``.pt2``, scikit-learn, ``python:module:factory``; the spec from a
``model.yaml`` beside the file) and URLs of ``modelsteal serve`` (``/v1``) or of any Open Inference Protocol
server (``/v2/models/NAME``: Triton, KServe, MLServer, TorchServe) through
:class:`~modelsteal.serve.client.HTTPBlackBox`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelsteal.blackbox import BlackBox, PredictionAPI


@dataclass
class Target:
    """What an audit aims at: ``blackbox`` answers queries; ``model`` is the local model behind it (``None`` for
    a URL, whose owner's model is not here: no defense comparison then); ``meta`` what is known of it
    (``arch``, ``dataset``, ``input_shape``, ``num_classes``); ``spec``/``key`` reopen it in another process."""

    spec: str
    blackbox: BlackBox
    model: nn.Module | None
    meta: dict[str, Any] = field(default_factory=dict)
    key: str | None = None

    @property
    def is_url(self) -> bool:
        return is_url(self.spec)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.blackbox.input_shape)

    @property
    def num_classes(self) -> int:
        return int(self.blackbox.num_classes)

    def describe(self) -> dict[str, Any]:
        """The target's facts for the report (never the key)."""
        return {"target": self.spec, "kind": "url" if self.is_url else "model", "arch": self.meta.get("arch"),
                "dataset": self.meta.get("dataset"), "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "defense": self.meta.get("defense", "none")}


def is_url(spec: str) -> bool:
    return str(spec).startswith(("http://", "https://"))


def open_target(spec: str | Path, *, key: str | None = None, device: torch.device | str | None = None) -> Target:
    """``spec`` as a :class:`Target`: a model file (served in-process by a :class:`~modelsteal.PredictionAPI`,
    undefended) or an ``http(s)://`` URL of a prediction API (a ``/v1`` server needs ``key``; a
    ``/v2/models/NAME`` endpoint may need none).

    An unreachable URL raises :class:`~modelsteal.serve.client.ServerUnreachableError` at once, a missing or
    refused key ``ValueError``/``PermissionError``, a missing file ``FileNotFoundError``: all before any work."""
    from modelsteal.devices import resolve_device

    spec, device = str(spec), resolve_device(device)
    if is_url(spec):
        from modelsteal.serve.client import HTTPBlackBox, split_endpoint

        if not key and split_endpoint(spec)[1] == "v1":
            raise ValueError("an HTTP target needs --key (create one with `modelsteal keys create`)")
        bb = HTTPBlackBox(spec, key)  # GET /v1/info: nothing listening there fails here
        bb.usage()  # an invalid key fails here
        defense = bb.info.get("defense") or {}
        meta = {"arch": bb.info.get("arch"), "dataset": bb.info.get("dataset"),
                "input_shape": list(bb.input_shape), "num_classes": bb.num_classes,
                "defense": defense.get("description") or defense.get("name") or "unknown"}
        return Target(spec=spec, blackbox=bb, model=None, meta=meta, key=key)
    if key:
        raise ValueError("--key is for an http(s):// target; a model file is queried in-process")
    from modelsteal.models.formats import load_model

    loaded = load_model(spec, device=device)
    model, meta = loaded.model, loaded.meta
    api = PredictionAPI(model, device=device)
    return Target(spec=spec, blackbox=api, model=model.eval(), meta={**meta, "defense": "none"})
