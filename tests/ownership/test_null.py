"""Each verifier's null estimated from reference models: the statistic each uses is pinned (a mean where the
maximum belongs, a point estimate where the upper bound belongs, a regressor fitted on the test's own samples
would each change the numbers asserted here)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from scipy.stats import beta, ttest_ind
from torch import nn

from modelsteal import PredictionAPI
from modelsteal.defenses.dawn import DAWN
from modelsteal.models import build_model
from modelsteal.ownership import make_verifier
from modelsteal.ownership.dawn import DAWNVerifier
from modelsteal.ownership.null import (
    clopper_pearson_interval,
    clopper_pearson_upper,
    null_rate_upper_bound,
    null_shift_upper_bound,
)
from modelsteal.training import TrainConfig, train


def test_clopper_pearson_bounds_are_the_beta_quantiles():
    # catches: the bound at k instead of k + 1 successes (a lower bound), the two-sided level used one-sided
    assert clopper_pearson_upper(3, 50, confidence=0.95) == pytest.approx(beta.ppf(0.95, 4, 47))
    assert clopper_pearson_upper(0, 100, confidence=0.95) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert clopper_pearson_upper(7, 7) == 1.0
    lo, hi = clopper_pearson_interval(1, 24)
    assert lo == pytest.approx(beta.ppf(0.025, 1, 24)) and hi == pytest.approx(beta.ppf(0.975, 2, 23))
    assert clopper_pearson_interval(0, 24)[0] == 0.0
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson_upper(5, 4)


def test_rate_null_is_the_upper_bound_on_the_largest_reference_count():
    # catches: the mean (or median) of the references instead of their maximum, a point estimate (40/100)
    # instead of the upper bound, a floor that replaces a larger bound
    null = null_rate_upper_bound([0, 10, 40], 100, confidence=0.95)
    assert null.value == pytest.approx(beta.ppf(0.95, 41, 60)) and null.value > 0.40
    assert null.per_reference == (0.0, 0.1, 0.4) and null.trials == 100
    assert null_rate_upper_bound([0, 0], 100, floor=0.1).value == 0.1
    assert null_rate_upper_bound([40], 100, floor=0.1).value == pytest.approx(beta.ppf(0.95, 41, 60))
    assert null_shift_upper_bound([-0.3, 0.2, 0.05]).value == 0.2
    assert null_shift_upper_bound([-0.3, -0.1]).value == 0.0


class _Answers(nn.Module):
    """Answers the target class on the first ``k`` rows of ``triggers`` (matched by value), class ``other``
    elsewhere."""

    def __init__(self, triggers: torch.Tensor, k: int, *, target: int, other: int = 0) -> None:
        super().__init__()
        self.hit = triggers[:k].flatten(1)
        self.target, self.other = target, other
        self.input_shape, self.num_classes = tuple(triggers.shape[1:]), 10

    def forward(self, x):
        flat = x.flatten(1)
        hit = (torch.cdist(flat, self.hit).min(1).values < 1e-6) if len(self.hit) else torch.zeros(len(x), dtype=bool)
        return torch.nn.functional.one_hot(torch.where(hit, self.target, self.other), 10).float()


@pytest.fixture(scope="module")
def ewe_record(digits):
    triggers = digits.x_train[digits.y_train == 1][:60].clone()
    triggers[:, :, :3, :3] = 1.0
    return {"triggers": triggers, "target_class": 7, "null_rate_estimate": 0.0, "victim_rate": 1.0}


def test_ewe_null_is_clopper_pearson_on_the_maximum_of_the_references(digits, digits_victim, ewe_record):
    # issue 29's planted bug: the null rate taken as the mean of the reference models instead of their maximum
    v = make_verifier("ewe", watermark=ewe_record, alpha=0.01).fit(digits_victim)
    n = len(ewe_record["triggers"])
    refs = [_Answers(ewe_record["triggers"], k, target=7) for k in (0, 3, 21)]
    p0 = v.calibrate(refs)
    assert p0 == pytest.approx(beta.ppf(0.95, 22, n - 21))  # mean (8/60) would give beta.ppf(0.95, 9, 52)
    assert v.null()[0] == pytest.approx(p0)
    assert v.reference_null.per_reference == (0.0, 3 / n, 21 / n)
    # a suspect at the largest reference's rate is not stolen; one far above it is
    assert not v.verify(_Answers(ewe_record["triggers"], 21, target=7), budget=n).stolen
    loud = v.verify(_Answers(ewe_record["triggers"], 50, target=7), budget=n)
    from scipy.stats import binom
    assert loud.p_value == pytest.approx(float(binom.sf(49, n, p0)), rel=1e-9) and loud.stolen
    assert loud.details["null_rate"] == pytest.approx(p0)
    # references are no floor's subjects: a clean bound below 1/K is the null (without references it is 1/K)
    clean = make_verifier("ewe", watermark=ewe_record).fit(digits_victim)
    assert clean.null()[0] == pytest.approx(0.1)
    assert clean.calibrate([_Answers(ewe_record["triggers"], 0, target=7)] * 2) == pytest.approx(1 - 0.05 ** (1 / n))


def test_dawn_null_stays_analytic_unless_a_reference_agrees_beyond_it(digits, digits_victim):
    dawn = DAWN(rate=0.5, key="k")
    api = PredictionAPI(digits_victim, defense=dawn)
    api.query(digits.x_test[:200], client="attacker")
    v = DAWNVerifier.from_defense(dawn, alpha=0.01).fit(digits_victim)
    recs = v.records
    n = len(recs.labels)
    assert v.calibrate([digits_victim]) == pytest.approx(1 / 9)  # the victim answers y: no agreement at all

    class Agrees(nn.Module):  # answers the keyed wrong label on the first half of the records
        input_shape, num_classes = digits.input_shape, 10

        def forward(self, x):
            d = torch.cdist(x.flatten(1), recs.inputs.flatten(1))
            j = d.argmin(1)
            lab = torch.where(j < n // 2, recs.labels[j], (recs.labels[j] + 1) % 10)
            return torch.nn.functional.one_hot(lab, 10).float()

    p0 = v.calibrate([digits_victim, Agrees()])
    assert p0 == pytest.approx(beta.ppf(0.95, n // 2 + 1, n - n // 2))  # the largest count's bound, not 1/9
    assert v.verify(Agrees(), budget=n).details["chance"] == pytest.approx(p0)


def test_dataset_inference_null_shift_is_the_largest_reference_difference(digits):
    def fit(seed, x, y, epochs=60):
        m = build_model("mlp", input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std,
                        seed=seed)
        train(m, x, y, config=TrainConfig(epochs=epochs, lr=0.05, momentum=0.9),
              generator=torch.Generator().manual_seed(seed))
        return m.eval()

    private = replace(digits, x_train=digits.x_train[:300], y_train=digits.y_train[:300])
    victim = fit(0, private.x_train, private.y_train, 100)
    refs = [fit(s, digits.x_train[300 + 200 * i: 500 + 200 * i], digits.y_train[300 + 200 * i: 500 + 200 * i])
            for i, s in enumerate((5, 6, 7))]
    di = make_verifier("dataset-inference", samples=20, fit_samples=40, directions=4, steps=10, alpha=0.01)
    di.fit(victim, data=private)
    before = di.verify(victim, budget=10**6, seed=1)
    deltas = [float(pr.mean() - pu.mean()) for r in refs for s in (0, 1) for pr, pu, _ in [di._test(r, seed=s)]]
    shift = di.calibrate(refs, seeds=(0, 1))
    # catches: the mean of the references' differences, no floor at 0, the references' seeds ignored
    assert shift == pytest.approx(max(0.0, max(deltas))) and di.reference_null.per_reference == pytest.approx(deltas)
    after = di.verify(victim, budget=10**6, seed=1)
    s = torch.tensor(after.evidence)
    ref = ttest_ind(s[:20] - shift, s[20:], equal_var=False, alternative="greater").pvalue
    assert after.p_value == pytest.approx(ref) and after.details["null_shift"] == pytest.approx(shift)
    assert torch.equal(s, torch.tensor(before.evidence))  # the same samples and scores, only the null moved
    assert after.p_value >= before.p_value


def test_dataset_inference_regressor_never_sees_the_test_pools(digits, digits_victim, monkeypatch):
    # issue 29's planted bug: the regressor's fit samples also in the private (or public) test pool would bias
    # the test toward "stolen"
    from modelsteal.ownership.dataset_inference import DatasetInference

    seen = []
    original = DatasetInference._embed

    def spy(self, model, box, x, y, *, generator):
        seen.append(x.clone())
        return original(self, model, box, x, y, generator=generator)

    monkeypatch.setattr(DatasetInference, "_embed", spy)
    di = make_verifier("dataset-inference", samples=10, fit_samples=50, directions=2, steps=5)
    di.fit(digits_victim, data=digits)
    fit_rows = seen[0].flatten(1)
    assert len(fit_rows) == 100
    for group in ("private", "public"):
        pool = di._pools[group][0].flatten(1)
        overlap = (torch.cdist(pool, fit_rows) < 1e-9).any(1)
        assert not bool(overlap.any()), f"{int(overlap.sum())} {group} test samples were fitted on"
    # and the pools hold everything else: private = the training split less the fit samples
    assert len(di._pools["private"][0]) == len(digits.x_train) - 50


def test_dataset_inference_repeats_combine_disjoint_blocks_by_fisher(digits, digits_victim):
    # catches: overlapping blocks (one draw reused), a mean of p-values instead of Fisher's combination, the
    # budget not scaled by the repeats
    from scipy.stats import combine_pvalues

    di = make_verifier("dataset-inference", samples=10, fit_samples=40, directions=4, steps=30, step_size=0.2,
                       repeats=3)
    di.fit(digits_victim, data=digits)
    assert di.min_queries() == 2 * 3 * 10 * 4 * 30
    with pytest.raises(ValueError, match="repeats=3 x samples=10"):
        di.verify(digits_victim, budget=7199)
    v = di.verify(digits_victim, budget=7200, seed=2)
    assert all(0 < q < 1 for q in v.details["block_p_values"])
    s = torch.tensor(v.evidence, dtype=torch.float64)
    priv, pub = s[:30], s[30:]
    blocks = [ttest_ind(priv[i:i + 10], pub[i:i + 10], equal_var=False, alternative="greater").pvalue
              for i in (0, 10, 20)]
    assert v.details["block_p_values"] == pytest.approx(blocks)
    assert v.p_value == pytest.approx(combine_pvalues(blocks, method="fisher").pvalue)
    px = di._pools["private"][0]
    idx = torch.randperm(len(px), generator=torch.Generator().manual_seed(2))[:30]
    assert len(set(idx.tolist())) == 30  # three disjoint blocks of the pool
