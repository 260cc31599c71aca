"""What the evasion attacks' tests share: a recording black box, the JBDA they wrap and a PRADA-watched API."""

from __future__ import annotations

import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import JBDA, TrainConfig
from modelsteal.detectors import make_detector

TRAIN = TrainConfig(epochs=2, lr=0.05, momentum=0.9)


class Recorder:
    """A black box that records every row it forwards, with the client key it came under."""

    def __init__(self, api: PredictionAPI) -> None:
        self.api = api
        self.num_classes, self.input_shape = api.num_classes, api.input_shape
        self.rows: list[torch.Tensor] = []
        self.clients: list[str] = []

    def query(self, x, *, client="default"):
        out = self.api.query(x, client=client)
        self.rows.append(x.detach().clone())
        self.clients += [client] * len(x)
        return out

    def flags(self, client):
        return self.api.flags(client)

    @property
    def stream(self) -> torch.Tensor:
        return torch.cat(self.rows)


def jbda(digits, **options) -> JBDA:
    return JBDA(seed_set=digits.x_val[:50], clone="mlp", train=TRAIN, **options)


def prada_api(victim, digits, **api_options) -> PredictionAPI:
    det = make_detector("prada").fit(victim, digits)
    return PredictionAPI(victim, detector=det, response="none", **api_options)
