"""Dataset inference: MinGD minimality, Blind Walk's label-only exact query count, the Welch test, verdicts."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import ttest_ind

from modelsteal import PredictionAPI
from modelsteal.blackbox import QueryCounter
from modelsteal.models import build_model
from modelsteal.ownership import make_verifier
from modelsteal.ownership.dataset_inference import (
    blind_walk,
    default_step_sizes,
    lp_norm,
    min_gd,
    mingd_embedding,
    welch_t_test,
)
from modelsteal.training import TrainConfig, train


class CountingBox(QueryCounter):
    """A black box that counts every row it answers and records whether answers were only labels."""

    def __init__(self, api):
        super().__init__()
        self.api, self.num_classes, self.input_shape = api, api.num_classes, api.input_shape

    def query(self, x, *, client="default"):
        self.record(client, len(x))
        return self.api.query(x, client=client)


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_mingd_distance_is_the_first_hit_along_its_direction(digits_victim, digits, norm):
    x, y = digits.x_test[:12], digits.y_test[:12]
    targets = (digits_victim(x).argmax(1) + 3) % 10
    r = min_gd(digits_victim, x, targets, norm=norm, steps=200, step_size=default_step_sizes(64)[norm])
    assert r.reached.float().mean() > 0.8, r.reached
    full = lp_norm(r.delta, norm)
    scale = (r.distance / full.clamp_min(1e-12)).view(-1, 1, 1, 1)
    ok = r.reached
    with torch.no_grad():
        at = digits_victim((x + scale * r.delta).clamp(0, 1)).argmax(1)
        assert (at[ok] == targets[ok]).all()  # the reported point reaches the target
        for frac in (0.5, 0.9, 0.97):  # catches: ||delta|| reported without the line search (it overshoots)
            before = digits_victim((x + frac * scale * r.delta).clamp(0, 1)).argmax(1)
            assert (before[ok] != targets[ok]).all(), (norm, frac)
    del y


def test_mingd_embedding_is_batched_sorted_and_zero_free(digits_victim, digits):
    x, y = digits.x_test[:6], digits.y_test[:6]
    e = mingd_embedding(digits_victim, x, y, num_classes=10, steps=60)
    assert e.shape == (6, 27)  # 3 norms x 9 other classes
    blocks = e.view(6, 3, 9)
    assert (blocks[..., 1:] >= blocks[..., :-1]).all()
    with torch.no_grad():  # a distance is 0 only to the class a misclassified sample already has
        wrong = (digits_victim(x).argmax(1) != y).view(-1, 1)
    assert torch.equal((blocks == 0).sum(2), wrong.long().expand(6, 3))
    one = mingd_embedding(digits_victim, x[2:3], y[2:3], num_classes=10, steps=60)
    assert torch.allclose(one, e[2:3], atol=1e-5)  # batching does not mix samples


def test_blind_walk_reads_labels_only_and_counts_every_row(digits_victim, digits):
    x, y = digits.x_test[:20], digits.y_test[:20]
    probs = CountingBox(PredictionAPI(digits_victim))
    labels = CountingBox(PredictionAPI(digits_victim, output="label-only"))
    r = blind_walk(probs, x, y, directions=5, steps=15, step_size=0.2, generator=torch.Generator().manual_seed(0))
    r2 = blind_walk(labels, x, y, directions=5, steps=15, step_size=0.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r.distance, r2.distance)  # catches: reading confidences instead of the top-1 label
    steps_taken = torch.round(r.distance / 0.2).long()
    assert r.queries == probs.queries() == int(steps_taken.sum())  # exact: one row per live walk per step
    assert r.flipped.any() and (~r.flipped).any() or r.flipped.all()
    assert (steps_taken[~r.flipped] == 15).all()
    with torch.no_grad():  # a walk stops at its first step off the true label
        g = torch.Generator().manual_seed(0)
        from modelsteal.ownership.dataset_inference import random_directions

        u = random_directions(20 * 5, (1, 8, 8), generator=g).view(20, 5, 1, 8, 8)
        i, j = r.flipped.nonzero()[0]
        k = int(steps_taken[i, j])
        at = digits_victim((x[i] + k * 0.2 * u[i, j]).clamp(0, 1).unsqueeze(0)).argmax(1)
        assert int(at) != int(y[i])
        if k > 1:
            prev = digits_victim((x[i] + (k - 1) * 0.2 * u[i, j]).clamp(0, 1).unsqueeze(0)).argmax(1)
            assert int(prev) == int(y[i])


def test_welch_p_value_is_scipys():
    g = np.random.default_rng(0)
    a, b = g.normal(0.5, 1.0, 30), g.normal(0.0, 2.0, 30)
    t, p = welch_t_test(torch.as_tensor(a), torch.as_tensor(b))
    ref = ttest_ind(a, b, equal_var=False, alternative="greater")
    assert p == pytest.approx(ref.pvalue, rel=1e-12) and t == pytest.approx(ref.statistic, rel=1e-12)
    # catches: the pooled-variance (Student) test or a two-sided p
    assert p != pytest.approx(ttest_ind(a, b, equal_var=True, alternative="greater").pvalue, rel=1e-6)
    assert p != pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-6)


@pytest.fixture(scope="module")
def ownership_setting(digits):
    """A victim that overfits a small private set, a clone distilled from it on other data, an independent
    model trained on other samples of the same distribution."""
    def fit(seed, x, y, epochs):
        m = build_model("mlp", input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std,
                        seed=seed)
        train(m, x, y, config=TrainConfig(epochs=epochs, lr=0.05, momentum=0.9),
              generator=torch.Generator().manual_seed(seed))
        return m.eval()

    private = replace(digits, x_train=digits.x_train[:300], y_train=digits.y_train[:300])
    victim = fit(0, private.x_train, private.y_train, 150)
    xa = digits.x_train[300:700]
    with torch.no_grad():
        soft = torch.softmax(victim(xa), 1)
    clone = fit(1, xa, soft, 60)
    independent = fit(2, digits.x_train[700:1000], digits.y_train[700:1000], 150)
    return private, victim, clone, independent


def test_blind_walk_claims_the_clone_not_the_independent_model(ownership_setting):
    """Here the label-only clone gets p = 0.0008, 0.009, 0.0006, 0.006, 0.007, 0.002 at verification seeds 0-5
    and the independent model p = 0.74, 0.89, 0.6, 0.29, 0.56, 0.76: the seed-0 check is not a lucky draw."""
    private, victim, clone, independent = ownership_setting
    di = make_verifier("dataset-inference", samples=50, fit_samples=100, alpha=0.01).fit(victim, data=private)
    claim = di.verify(PredictionAPI(clone, output="label-only"), budget=30_000)
    assert claim.stolen, claim.details  # catches: scores of private and public swapped, or a regressor on noise
    assert 0 < claim.queries <= 2 * 50 * 10 * 30
    clear = di.verify(independent, budget=30_000)
    assert not clear.stolen, clear.details
    s = torch.tensor(clear.evidence)
    assert clear.p_value == pytest.approx(ttest_ind(s[:50], s[50:], equal_var=False, alternative="greater").pvalue)


def test_mingd_verdict_on_the_victim_itself(ownership_setting):
    """White-box MinGD claims the victim itself (p = 0.0017, 0.043, 0.01 at verification seeds 0-2 here) and not
    the independent model (p = 0.2, 0.95, 0.93); a weaker signal than Blind Walk's on digits."""
    private, victim, _, independent = ownership_setting
    di = make_verifier("dataset-inference", embedding="mingd", samples=40, fit_samples=100, mingd_steps=60)
    di.fit(victim, data=private)
    own = di.verify(victim, budget=1)
    assert own.stolen and own.queries == 0, own.details
    assert not di.verify(independent, budget=1).stolen


def test_bad_use_is_one_line(ownership_setting):
    private, victim, clone, _ = ownership_setting
    with pytest.raises(ValueError, match="learns from the victim's data splits"):
        make_verifier("dataset-inference").fit(victim)
    di = make_verifier("dataset-inference", samples=10, fit_samples=20, directions=4, steps=10)
    with pytest.raises(ValueError, match="before it was fitted"):
        di.verify(clone, budget=10_000)
    di.fit(victim, data=private)
    with pytest.raises(ValueError, match="at least 800 queries"):
        di.verify(clone, budget=799)  # 2 x 10 samples x 4 directions x 10 steps
    mingd = make_verifier("dataset-inference", embedding="mingd", samples=10, fit_samples=20, mingd_steps=5)
    mingd.fit(victim, data=private)
    with pytest.raises(ValueError, match="white-box access"):
        mingd.verify(PredictionAPI(clone), budget=10)
    with pytest.raises(ValueError, match="needs 1300 private"):
        make_verifier("dataset-inference", samples=100, fit_samples=1200).fit(victim, data=private)
    with pytest.raises(ValueError, match="unknown option bogus"):
        make_verifier("dataset-inference", bogus=1)
