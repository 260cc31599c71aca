"""PRADA-aware JBDA: unflagged where plain JBDA is flagged; its seed stream is the per-label minimum distance
to earlier rows, and given distances are met."""

from __future__ import annotations

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import JBDA, TrainConfig
from modelsteal.attacks.evasion import PradaAwareJBDA
from modelsteal.attacks.evasion.prada_jbda import seed_stream
from modelsteal.detectors import make_detector

TRAIN = TrainConfig(epochs=2, lr=0.05, momentum=0.9)


def _prada_api(victim, digits, **api_options) -> PredictionAPI:
    det = make_detector("prada").fit(victim, digits)
    return PredictionAPI(victim, detector=det, response="none", **api_options)


# -- PRADA-aware JBDA ----------------------------------------------------------------------------------------
def test_prada_aware_jbda_is_not_flagged_where_plain_jbda_is(digits_victim, digits):
    """On the digits MLP with PRADA's defaults (δ = 0.95, 100-distance minimum stream): plain JBDA's stream is
    flagged; the spaced children's is not, and the children sit at the drawn distances from their parents.
    Bug caught: the drawn distances ignored (plain λ·sign steps, flagged)."""
    seeds = digits.x_val[:100]
    plain_api = _prada_api(digits_victim, digits)
    JBDA(seed_set=seeds, clone="mlp", train=TRAIN)(plain_api, budget=400, seed=0)
    assert plain_api.flags() > 0
    api = _prada_api(digits_victim, digits)
    result = PradaAwareJBDA(seed_set=seeds, clone="mlp", train=TRAIN)(api, budget=400, seed=0)
    assert result.queries == 400 and api.flags() == 0
    assert result.info["detected"] is False and result.info["queries_to_detection"] is None
    info = result.info
    children = info["parents"] >= 0
    steps = (result.transfer_x[children] - result.transfer_x[info["parents"][children]]).flatten(1).norm(dim=1)
    mean, std = info["distance_mean"], info["distance_std"]
    assert 0.5 < mean < 4 and 0 < std < mean
    assert abs(float(steps.mean()) - mean) < 0.5 * std  # the steps follow the drawn distances (clip permitting)


def test_seed_stream_is_per_label_minimum_distance_to_earlier_rows():
    """Class 0: (3,4) is 5 from (0,0); (6,8) is 10 from (0,0) and 5 from (3,4). Class 1 has one row: no distance.
    Bug caught: labels ignored ((0,1) would add 1), or distances to later rows taken."""
    x = torch.tensor([[0.0, 0], [3, 4], [0, 1], [6, 8]])
    assert sorted(seed_stream(x, torch.tensor([0, 0, 1, 0])).tolist()) == pytest.approx([5.0, 5.0])
    assert sorted(seed_stream(x[[3, 1, 0]], torch.tensor([0, 0, 0])).tolist()) == pytest.approx([5.0, 5.0])


def test_prada_aware_jbda_with_given_distances_meets_them(digits_victim, digits):
    """Bug caught: a bisection that stops short (steps shorter than their targets where the clip allows them)."""
    attack = PradaAwareJBDA(seed_set=digits.x_val[:30], clone="mlp", train=TRAIN, distance_mean=1.0,
                            distance_std=0.0, rounds=1)
    result = attack(PredictionAPI(digits_victim), budget=60, seed=0)
    info = result.info
    children = info["parents"] >= 0
    steps = (result.transfer_x[children] - result.transfer_x[info["parents"][children]]).flatten(1).norm(dim=1)
    assert torch.allclose(steps.double(), torch.ones(len(steps), dtype=torch.float64), atol=1e-4)
