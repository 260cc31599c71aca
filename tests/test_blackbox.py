import numpy as np
import pytest
import torch
from torch import Tensor

from modelsteal import BudgetExceededError, PredictionAPI, QueryBudget
from modelsteal.defenses import Defense
from modelsteal.outputs import make_output


def test_counts_per_client_and_budget(digits_victim, digits):
    api = PredictionAPI(digits_victim, budget=50)
    y = api.query(digits.x_test[:30], client="alice")
    assert y.shape == (30, 10)
    assert torch.allclose(y.sum(1), torch.ones(30), atol=1e-5)
    api.query(digits.x_test[:20], client="bob")
    assert api.queries("alice") == 30 and api.queries("bob") == 20 and api.total_queries == 50
    with pytest.raises(BudgetExceededError, match="alice"):
        api.query(digits.x_test[:21], client="alice")
    assert api.queries("alice") == 30  # a refused batch is not counted
    api.query(digits.x_test[:20], client="alice")
    assert api.queries_left("alice") == 0


def test_query_budget_wrapper_never_exceeds(digits_victim, digits):
    qb = QueryBudget(PredictionAPI(digits_victim), budget=10)
    qb.query(digits.x_test[:7])
    with pytest.raises(BudgetExceededError):
        qb.query(digits.x_test[:4])
    assert qb.used == 7 and qb.remaining == 3


def test_output_formats(digits_victim, digits):
    x = digits.x_test[:40]
    probs = PredictionAPI(digits_victim).query(x)
    top2 = PredictionAPI(digits_victim, output="top-2").query(x)
    assert ((top2 > 0).sum(1) <= 2).all() and torch.equal(top2.argmax(1), probs.argmax(1))
    assert torch.allclose(top2.sum(1), torch.ones(40), atol=1e-5)
    label = PredictionAPI(digits_victim, output="label").query(x)
    assert torch.equal(label.argmax(1), probs.argmax(1)) and torch.equal(label.sum(1), torch.ones(40))
    rounded = PredictionAPI(digits_victim, output="rounded-1").query(x)
    assert torch.allclose(rounded * 10, (rounded * 10).round(), atol=1e-5)
    with pytest.raises(ValueError, match="unknown output format"):
        make_output("banana")


def test_bad_shapes_are_named(digits_victim):
    api = PredictionAPI(digits_victim)
    with pytest.raises(ValueError, match=r"expected \(N, 1, 8, 8\)"):
        api.query(torch.zeros(3, 64))
    assert api.query(torch.zeros(1, 8, 8)).shape == (1, 10)  # a single unbatched input is accepted


def test_nan_queries_are_an_input_error_and_are_not_counted():
    from modelsteal.models import build_model

    api = PredictionAPI(build_model("mlp", input_shape=(1, 4, 4), num_classes=3, seed=0), budget=10)
    x = torch.rand(4, 1, 4, 4)
    x[2, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf in 1 row.*row 2"):
        api.query(x)
    assert api.queries() == 0 and api.queries_left() == 10
    api.query(x[:2])
    assert (api.queries(), api.queries_left(), api.total_queries) == (2, 8, 2)


def test_the_tree_oracle_shares_the_accounting_and_keeps_nan_as_missing():
    from sklearn.tree import DecisionTreeClassifier

    from modelsteal.tabular import TreeOracle

    rng = np.random.default_rng(0)
    xs = rng.random((60, 3))
    oracle = TreeOracle(DecisionTreeClassifier(max_depth=3, random_state=0).fit(xs, xs[:, 0] > 0.5), budget=5)
    root = oracle.query(torch.full((3,), float("nan"), dtype=torch.float64))  # one example, every feature missing
    assert root.shape == (1, 3) and root[0, 0] == 0  # the walk stops at the root (node 0)
    with pytest.raises(BudgetExceededError, match="asked for 5 queries with 4 of its budget of 5 left"):
        oracle.query(torch.rand(5, 3, dtype=torch.float64))
    assert (oracle.queries(), oracle.queries_left()) == (1, 4)


class _FailsOnCall(Defense):
    """Passes posteriors through, except that call number ``fail_at`` (0-based) raises."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.calls = fail_at, 0

    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        self.calls += 1
        if self.calls - 1 == self.fail_at:
            raise RuntimeError("defense failed")
        return probs


@pytest.mark.parametrize("fail_at", [0, 2])  # the first sub-batch, or a later one after two were answered
def test_a_batch_whose_defense_raises_is_not_counted(digits_victim, digits, fail_at):
    defense = _FailsOnCall(fail_at)
    api = PredictionAPI(digits_victim, defense=defense, budget=100, batch_size=4)  # 10 rows: sub-batches 4, 4, 2
    budgeted = QueryBudget(api, budget=50, client="alice")
    x = digits.x_test[:10]
    with pytest.raises(RuntimeError, match="defense failed"):
        budgeted.query(x)
    assert defense.calls == fail_at + 1
    assert api.queries("alice") == 0 and api.total_queries == 0
    assert budgeted.used == 0 and budgeted.remaining == 50
    defense.fail_at = -1
    out = budgeted.query(x)  # the same batch answered in full afterwards counts once
    assert out.shape == (10, 10)
    assert api.queries("alice") == 10 and budgeted.used == 10
    assert torch.allclose(out, api.posteriors(x))
