"""DFME and MAZE: every finite-difference probe is a query, the estimate is the forward-difference formula, and
impossible settings are refused before the first query."""

import pytest
import torch
from torch import nn

from modelsteal import PredictionAPI
from modelsteal.attacks.data_free import Generator, ZerothOrderGeneratorLoss, corrected_logits, disagreement
from modelsteal.attacks.dfme import DFME
from modelsteal.attacks.maze import MAZE
from modelsteal.blackbox import QueryBudget


class Counter:
    def __init__(self, api):
        self.api, self.batches = api, []
        self.num_classes, self.input_shape = api.num_classes, api.input_shape

    def query(self, x, *, client="default"):
        self.batches.append(len(x))
        return self.api.query(x, client=client)


@pytest.mark.parametrize("cls, m, b", [(DFME, 1, 16), (MAZE, 3, 8)])
def test_query_count_equals_the_probes_sent(cls, m, b, digits_victim):
    api = Counter(PredictionAPI(digits_victim))
    attack = cls(clone="mlp", batch_size=b, directions=m, device="cpu")
    budget = 3 * (b * (m + 1) + 5 * b) + 7  # three full iterations and a remainder
    result = attack(api, budget=budget, seed=0)
    info = result.info
    assert result.queries == sum(api.batches) == budget  # spent exactly
    assert info["probe_queries"] == info["generator_steps"] * b * (m + 1)
    assert info["generator_steps"] == 3
    assert info["probe_queries"] + info["clone_queries"] == budget
    assert b * (m + 1) in api.batches  # each generator step's probes went out as one batch of B(m+1)


def test_zeroth_order_estimate_is_the_forward_difference(digits_victim):
    """On a tiny generator output, the estimate equals d/m * sum_j [L(p + eps u_j) - L(p)] / eps u_j / n, and
    approaches the true gradient direction when the black box is differentiable (many directions)."""
    torch.manual_seed(0)
    victim = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    clone = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    class BB:
        num_classes, input_shape = 3, (1, 4, 4)

        def query(self, x, *, client="default"):
            with torch.no_grad():
                return victim(x).softmax(1)

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.randn(2, 1, 4, 4))

        def pre(self, z):
            return self.p

    g = G()
    m = 4000
    zo = ZerothOrderGeneratorLoss(victim=QueryBudget(BB(), budget=10**6), clone=clone, kind="kl", directions=m,
                                  epsilon=1e-4, generator=torch.Generator().manual_seed(0),
                                  query=lambda v, x: v.query(x))
    zo(g, torch.zeros(2, 1), torch.zeros(2), {}).backward()
    est = g.p.grad.clone()
    assert zo.queries == 2 * (m + 1)
    p = g.p.detach().clone().requires_grad_(True)
    x = Generator.activate(p)
    true = -disagreement("kl", victim(x).softmax(1), clone(x))
    grad_true = torch.autograd.grad((true.sum() / 2), p)[0]
    cos = torch.nn.functional.cosine_similarity(est.flatten(), grad_true.flatten(), dim=0)
    assert cos > 0.9, cos  # a wrong sign gives -0.9, a missing scale still passes cos but not the norm check
    assert est.norm() / grad_true.norm() == pytest.approx(1.0, rel=0.25)


def test_budget_below_one_generator_step_is_refused_before_any_query(digits_victim):
    api = PredictionAPI(digits_victim)
    with pytest.raises(ValueError, match="smaller than one generator step's 32"):
        DFME(clone="mlp", batch_size=16, directions=1, device="cpu")(api, budget=31, seed=0)
    assert api.total_queries == 0


def test_generator_that_does_not_fit_the_target_is_refused():
    class Odd:
        num_classes, input_shape = 10, (1, 30, 30)

        def query(self, x, *, client="default"):
            raise AssertionError("no query may be sent")

    with pytest.raises(ValueError, match="multiples of 4"):
        DFME(clone="mlp", device="cpu")(Odd(), budget=10_000, seed=0)


def test_corrected_logits_recover_logits_up_to_a_constant():
    z = torch.randn(5, 7)
    rec = corrected_logits(z.softmax(1))
    assert torch.allclose(rec, z - z.mean(1, keepdim=True), atol=1e-5)
