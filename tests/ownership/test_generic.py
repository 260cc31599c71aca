"""The Verifier contract: Verdict, level and budget checks, suspect shape checks, and the registry (generic over
every registered verifier)."""

import json
import math

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.models import build_model
from modelsteal.ownership import (
    NotFittedError,
    Verdict,
    Verifier,
    available_verifiers,
    binomial_min_queries,
    make_verifier,
    verifier_class,
)


class AgreeWithVictim(Verifier):
    """A toy verifier: agreement with the victim's top-1 label on random inputs, binomial null 1/K."""

    def min_queries(self):
        return binomial_min_queries(1 / self.num_classes, alpha=self.alpha)

    def verify(self, suspect, *, budget, seed=0):
        from scipy.stats import binom

        box = self.budgeted(self.check_suspect(suspect), budget=self.check_budget(budget))
        x = torch.rand(budget, *self.input_shape, generator=torch.Generator().manual_seed(seed))
        agree = (box.query(x).argmax(1) == self.victim(x).argmax(1)).float()
        p = float(binom.sf(int(agree.sum()) - 1, len(agree), 1 / self.num_classes))
        return self.verdict(p_value=p, queries=box.used, evidence=agree, agreements=int(agree.sum()))


def test_every_verifier_is_registered_buildable_and_refuses_use_before_fit(digits_victim):
    names = available_verifiers()
    assert {"dawn", "dataset-inference"} <= set(names)
    for name in names:
        cls = verifier_class(name)
        v = make_verifier(name, **cls.example_options)
        assert v.name == name and not v.fitted
        with pytest.raises(NotFittedError):  # catches: a verifier that answers without its watermark/regressor
            v.verify(digits_victim, budget=100_000)
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            make_verifier(name, **{**cls.example_options, "alpha": 1.5})
    with pytest.raises(ValueError, match="known verifiers: .*dawn"):
        make_verifier("nope")
    with pytest.raises(ValueError, match="unknown option banana for verifier 'dawn'"):
        make_verifier("dawn", banana=1)


def test_verdict_is_frozen_json_safe_and_decides_by_alpha():
    v = Verdict(method="t", p_value=0.01, alpha=0.05, queries=3, evidence=torch.tensor([1.0, 0.0]),
                details={"nan": float("nan"), "arr": torch.arange(2), "nested": {"x": (1, 2)}})
    assert v.stolen and v.evidence == (1.0, 0.0)
    d = json.loads(json.dumps(v.to_dict(), allow_nan=False))  # catches: NaN or tensors left in the report
    assert d["stolen"] is True and d["details"] == {"nan": None, "arr": [0, 1], "nested": {"x": [1, 2]}}
    assert not Verdict(method="t", p_value=0.05, alpha=0.05, queries=0).stolen  # strict: p < alpha
    with pytest.raises(AttributeError):
        v.p_value = 0.5
    with pytest.raises(ValueError, match="p_value must be in"):
        Verdict(method="t", p_value=1.5, alpha=0.05, queries=0)


def test_binomial_min_queries_is_the_first_n_that_can_reach_alpha():
    for p0, alpha in [(1 / 9, 0.05), (1 / 9, 0.01), (0.5, 0.05), (0.5, 0.0625), (0.1, 0.001)]:
        n = binomial_min_queries(p0, alpha=alpha)
        assert p0**n < alpha and (n == 1 or p0 ** (n - 1) >= alpha), (p0, alpha, n)
    assert binomial_min_queries(0.5, alpha=0.0625) == 5  # 0.5**4 == alpha exactly: not below it


def test_base_checks_suspect_budget_and_counts_queries(digits_victim):
    v = AgreeWithVictim(alpha=0.01)
    with pytest.raises(NotFittedError, match="before it was fitted"):
        v.verify(digits_victim, budget=10)
    v.fit(digits_victim)
    clone_like = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=3)
    with pytest.raises(ValueError, match=r"suspect answers 3 classes for inputs \(1, 8, 8\), but the victim has 10"):
        v.verify(build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0), budget=10)
    with pytest.raises(ValueError, match=r"for inputs \(1, 4, 4\)"):
        v.verify(build_model("mlp", input_shape=(1, 4, 4), num_classes=10, seed=0), budget=10)
    with pytest.raises(ValueError, match="needs a budget of at least 3 queries for its test to reach alpha=0.01"):
        v.verify(clone_like, budget=2)  # 0.1**2 = 0.01 is not below 0.01
    api = PredictionAPI(digits_victim)
    verdict = v.verify(api, budget=50)
    assert verdict.queries == 50 == api.total_queries  # catches: queries not counted, or counted twice
    assert verdict.stolen and verdict.p_value == pytest.approx(0.1**50, rel=1e-6)
    assert not math.isnan(v.verify(clone_like, budget=50).p_value)
    with pytest.raises(ValueError, match="budget must be a positive integer"):
        v.verify(api, budget=0)


def test_bind_allows_checks_before_an_expensive_fit(digits_victim):
    v = make_verifier("dataset-inference", samples=5, fit_samples=5, directions=2, steps=3)
    v.bind(digits_victim)
    assert not v.fitted
    v.check_suspect(digits_victim, fitted=False)
    assert v.check_budget(60) == 60
    with pytest.raises(ValueError, match="at least 60 queries"):
        v.check_budget(59)
    with pytest.raises(NotFittedError):
        v.check_suspect(digits_victim)
