"""ActiveThief (Pal et al., AAAI 2020): each selection strategy picks what its paper says, budgets are exact."""

import pytest
import torch
from torch import nn

from modelsteal import PredictionAPI
from modelsteal.attacks.active_thief import (
    ActiveThief,
    _faiss_available,
    deepfool_norms,
    entropy,
    k_center_greedy,
    nearest_distance,
)
from modelsteal.training import TrainConfig


def test_k_center_pick_is_the_farthest_point():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    points = torch.tensor([[1.0, 0.0], [5.0, 4.0], [9.0, 1.0], [0.0, 3.0], [5.0, -1.0]])
    # nearest-centre distances: 1, sqrt(41)=6.40, 1.41, 3, sqrt(26)=5.10 -> farthest is row 1
    assert nearest_distance(points, centers, index="torch").tolist() == pytest.approx(
        [1.0, 41 ** 0.5, 2 ** 0.5, 3.0, 26 ** 0.5])
    picks = k_center_greedy(points, centers, 2, index="torch")
    # after taking (5, 4), row 4 (5, -1) is 5 from it and sqrt(26) from the centres; row 3 (0, 3) is 3 away
    assert picks.tolist() == [1, 4]


def test_k_center_is_greedy_not_top_k():
    """Two far points next to each other: top-k by distance takes both, the greedy takes one and then the
    point the first pick does not cover."""
    centers = torch.tensor([[0.0, 0.0]])
    points = torch.tensor([[10.0, 0.0], [10.0, 0.1], [0.0, 7.0]])
    assert k_center_greedy(points, centers, 2, index="torch").tolist() == [1, 2]  # (10, 0.1) is the farthest


def test_entropy_picks_the_most_uncertain():
    p = torch.tensor([[1.0, 0.0, 0.0], [0.4, 0.3, 0.3], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    h = entropy(p)
    assert h[0] == 0.0 and torch.isfinite(h).all()
    assert h.argsort(descending=True).tolist() == [3, 1, 2, 0]


def test_deepfool_norm_is_the_distance_to_a_linear_boundary():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))
        lin.bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[1.0, 1.0], [0.1, -0.1], [-3.0, 0.2]])
    z = lin(x).detach()
    w = torch.tensor([2.0, 2.0])  # gradient of z0 - z1
    dist = (z[:, 0] - z[:, 1]).abs() / w.norm()
    got = deepfool_norms(lin, x, overshoot=0.02)
    expect = 1.02 * ((z[:, 0] - z[:, 1]).abs() + 1e-4) / w.norm()  # one exact step for a linear model
    assert got.tolist() == pytest.approx(expect.tolist(), rel=1e-4)
    assert (got > dist).all()


@pytest.mark.parametrize("strategy", ["random", "uncertainty", "k-center", "dfal", "dfal+k-center"])
def test_budget_is_spent_exactly_in_rounds(strategy, digits_victim, digits):
    api = PredictionAPI(digits_victim)
    attack = ActiveThief(transfer_set=digits.x_train, strategy=strategy, rounds=3, seed_fraction=0.2,
                         round_epochs=1, candidates=300, clone="mlp", train=TrainConfig(epochs=2, lr=0.05),
                         device="cpu")
    result = attack(api, budget=103, seed=0)
    assert result.queries == api.total_queries == 103
    assert result.info["queries_per_round"] == [21, 27, 27, 28]
    assert len(torch.unique(result.transfer_x.flatten(1), dim=0)) == 103  # no input queried twice


def test_uncertainty_round_takes_the_substitutes_most_uncertain_inputs(digits_victim, digits):
    """The inputs picked after round 0 have higher substitute entropy than the ones left behind."""
    api = PredictionAPI(digits_victim)
    attack = ActiveThief(transfer_set=digits.x_train[:400], strategy="uncertainty", rounds=1, seed_fraction=0.25,
                         clone="mlp", train=TrainConfig(epochs=2, lr=0.05), device="cpu")
    picked = {}
    real = attack.select

    def spy(model, unl, lab, k, gen):
        idx = real(model, unl, lab, k, gen)
        with torch.no_grad():
            h = entropy(model(unl).softmax(1))
        picked["min_in"] = float(h[idx].min())
        rest = torch.ones(len(unl), dtype=torch.bool)
        rest[idx] = False
        picked["max_out"] = float(h[rest].max())
        return idx

    attack.select = spy
    attack(api, budget=100, seed=0)
    assert picked["min_in"] >= picked["max_out"]


@pytest.mark.parametrize("bad", [{"strategy": "bald"}, {"rounds": 0}, {"seed_fraction": 1.0}, {"index": "annoy"}])
def test_bad_options(bad, digits):
    with pytest.raises(ValueError):
        ActiveThief(transfer_set=digits.x_train, **bad)


def test_faiss_and_torch_nearest_distances_agree():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    pts, ctr = torch.rand(300, 10, generator=g), torch.rand(50, 10, generator=g)
    assert torch.allclose(nearest_distance(pts, ctr, index="faiss"), nearest_distance(pts, ctr, index="torch"),
                          atol=1e-4)


def test_faiss_k_center_picks_what_torch_picks_the_farthest_point_first():
    """The faiss index (CI installs it: .ci/run) and chunked torch.cdist give the same greedy picks, and the first
    is the pool point farthest from its nearest centre, checked by brute force."""
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(3)
    pool, centers = torch.rand(200, 10, generator=g), torch.rand(20, 10, generator=g)
    by_faiss = k_center_greedy(pool, centers, 15, index="faiss")
    by_torch = k_center_greedy(pool, centers, 15, index="torch")
    assert by_faiss.tolist() == by_torch.tolist()
    brute = torch.tensor([min(float((p - c).norm()) for c in centers) for p in pool])
    assert int(by_faiss[0]) == int(brute.argmax())
    assert _faiss_available()  # so "auto" takes the faiss path
    assert k_center_greedy(pool, centers, 15, index="auto").tolist() == by_torch.tolist()
