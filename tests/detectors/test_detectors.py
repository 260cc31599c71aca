"""Out-of-distribution query detectors: MSP, ODIN, Mahalanobis and Atli et al.'s binary classifier.

Each detector's score is checked against its paper's formula on a hand-built model (NumPy, float64), the binary
classifier against a synthetic in/out pair, every calibrated threshold against its TNR on held-out benign data,
and every registered detector by one generic test (fit, calibrate, flag, per-client state).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from modelsteal.data import DatasetSplits
from modelsteal.detectors import NotFittedError, available_detectors, detector_class, make_detector
from modelsteal.detectors._features import penultimate_map
from modelsteal.models import build_model

K, D = 3, 8


# ------------------------------------------------------------------------------------------------
# data and models
# ------------------------------------------------------------------------------------------------
def _blob_split(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(K, (n,), generator=g)
    centres = 4.0 * torch.eye(K, D)
    return centres[y] + torch.randn(n, D, generator=g), y


def _unseen_class(n: int, g: torch.Generator) -> torch.Tensor:
    """Out-of-distribution points: a fourth unit-variance blob, centred on an axis no class uses."""
    return 4.0 * torch.eye(D)[K] + torch.randn(n, D, generator=g)


@pytest.fixture(scope="module")
def blobs() -> DatasetSplits:
    """Three unit-variance Gaussian classes in 8-d, centres 4σ apart; 1500 validation and 1500 test points."""
    g = torch.Generator().manual_seed(0)
    (xtr, ytr), (xva, yva), (xte, yte) = (_blob_split(n, g) for n in (900, 1500, 1500))
    return DatasetSplits(name="blobs", x_train=xtr, y_train=ytr, x_val=xva, y_val=yva, x_test=xte, y_test=yte,
                         num_classes=K)


@pytest.fixture(scope="module")
def blob_outliers() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"fit": _unseen_class(600, g), "test": _unseen_class(1500, g)}


@pytest.fixture(scope="module")
def blob_victim(blobs) -> nn.Module:
    """An MLP (a modelsteal Classifier) trained on the blobs, full batch."""
    model = build_model("mlp", input_shape=(D,), num_classes=K, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(blobs.x_train), blobs.y_train).backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model.eval()


def _linear_model(seed: int = 0, d: int = 4, k: int = 3) -> nn.Module:
    """``x ↦ W x + b`` behind a Flatten: not a Classifier, so features come from the forward hook (= ``x``)."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(d, k)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(k, d, generator=g))
        layer.bias.copy_(torch.randn(k, generator=g))
    return nn.Sequential(nn.Flatten(), layer).eval()


def _splits(x: torch.Tensor, y: torch.Tensor, k: int) -> DatasetSplits:
    return DatasetSplits(name="hand", x_train=x, y_train=y, x_val=x, y_val=y, x_test=x, y_test=y, num_classes=k)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------
# formulas on hand-built models
# ------------------------------------------------------------------------------------------------
def test_msp_is_minus_max_probability(probs_batch):
    det = make_detector("msp").fit(_linear_model(d=1, k=10), _splits(torch.zeros(10, 1), torch.arange(10), 10))
    x = torch.zeros(len(probs_batch), 1)
    expected = -probs_batch.numpy().max(axis=1)
    # up to the float32 rounding of each row's sum (the score is Σ_{i≠ŷ} p_i − 1, equal to −max p on the simplex)
    np.testing.assert_allclose(det.score(x, probs_batch).numpy(), expected, rtol=0, atol=1e-6)
    assert float(det.score(x, probs_batch)[0]) == -1.0 and float(det.score(x, probs_batch)[1]) == pytest.approx(-0.1)


def test_msp_ranks_inputs_whose_float32_top_probability_is_one():
    """A confident victim's top probability rounds to 1.0 in float32; tied scores would make a TNR target
    unreachable, so the score keeps the other classes' mass."""
    probs = torch.softmax(torch.tensor([[0.0, -20.0], [0.0, -30.0], [0.0, -35.0]]), dim=1)
    assert (probs.max(dim=1).values == 1.0).all()
    det = make_detector("msp").fit(_linear_model(d=1, k=2), _splits(torch.zeros(2, 1), torch.arange(2), 2))
    scores = det.score(torch.zeros(3, 1), probs)
    assert scores[0] > scores[1] > scores[2] > -1.0


@pytest.mark.parametrize(("temperature", "epsilon"), [(1.0, 0.0), (1.0, 0.3), (10.0, 0.2), (1000.0, 0.05)])
def test_odin_score_equals_its_formula_on_a_linear_model(temperature, epsilon):
    """S(x;T) = max softmax(f(x)/T), x̃ = x − ε sign(−∇ log S_ŷ(x;T)), score = −S(x̃;T). For f(x) = Wx + b,
    ∇_x log S_ŷ = (W_ŷ − Σ_j S_j W_j) / T in closed form."""
    model = _linear_model(seed=1)
    w, b = (t.detach().double().numpy() for t in (model[1].weight, model[1].bias))
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    xn = x.double().numpy()
    s = _softmax((xn @ w.T + b) / temperature)
    top = s.argmax(axis=1)
    grad_log_s = (w[top] - s @ w) / temperature
    x_tilde = xn - epsilon * np.sign(-grad_log_s)
    expected = -_softmax((x_tilde @ w.T + b) / temperature).max(axis=1)
    det = make_detector("odin", temperature=temperature, epsilon=epsilon).fit(model, _splits(x, top, 3))
    got = det.score(x, det.posteriors(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    if epsilon > 0:  # the step raises the top score: pre-processing made every input look *less* suspicious
        assert (got <= -s.max(axis=1) + 1e-9).all()


def test_odin_without_pre_processing_at_t1_is_msp(blobs, blob_victim):
    x = blobs.x_test[:200]
    odin = make_detector("odin", temperature=1.0, epsilon=0.0).fit(blob_victim, blobs)
    msp = make_detector("msp").fit(blob_victim, blobs)
    torch.testing.assert_close(odin.score(x, odin.posteriors(x)), msp.score(x, msp.posteriors(x)), rtol=0, atol=1e-6)


def _mahalanobis_numpy(x: np.ndarray, h_train: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """Lee et al.: class means, shared (pooled) covariance, min over classes of (h − μ_c)ᵀ Σ⁻¹ (h − μ_c)."""
    means = np.stack([h_train[y == c].mean(axis=0) for c in range(k)])
    centred = h_train - means[y]
    precision = np.linalg.inv(centred.T @ centred / len(h_train))
    diff = x[:, None, :] - means[None]
    d2 = np.einsum("nkd,de,nke->nk", diff, precision, diff)
    return d2.min(axis=1), d2.argmin(axis=1), means, precision


def _unequal_class_data(n: int = 300, d: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes with different means *and* different covariances, so per-class covariances, a global
    covariance or a global mean would each give different scores."""
    g = torch.Generator().manual_seed(3)
    y = torch.arange(n) % 3
    scales = torch.tensor([[0.5, 1.0, 2.0, 1.0], [2.0, 0.3, 1.0, 1.5], [1.0, 1.0, 0.4, 3.0]])
    x = torch.tensor([[0.0, 0, 0, 0], [3, 1, 0, -1], [-1, 3, 2, 0]])[y] + torch.randn(n, d, generator=g) * scales[y]
    return x, y


def test_mahalanobis_score_equals_its_formula_on_a_linear_model():
    x, y = _unequal_class_data()
    model = _linear_model(seed=4)  # penultimate features (input of the last Linear) = x
    det = make_detector("mahalanobis").fit(model, _splits(x, y, 3))
    queries = torch.randn(50, 4, generator=torch.Generator().manual_seed(5)) * 3
    expected, _, means, precision = _mahalanobis_numpy(queries.double().numpy(), x.double().numpy(), y.numpy(), 3)
    np.testing.assert_allclose(det.means.double().numpy(), means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(det.precision.double().numpy(), precision, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(det.score(queries, det.posteriors(queries)).numpy(), expected, rtol=1e-4)


def test_mahalanobis_pre_processing_equals_its_formula():
    """x̂ = x − ε sign(∇_x (f(x) − μ_ĉ)ᵀ Σ⁻¹ (f(x) − μ_ĉ)); with f(x) = x the gradient is 2 Σ⁻¹ (x − μ_ĉ)."""
    x, y = _unequal_class_data()
    eps = 0.25
    det = make_detector("mahalanobis", epsilon=eps).fit(_linear_model(seed=4), _splits(x, y, 3))
    queries = torch.randn(50, 4, generator=torch.Generator().manual_seed(6)) * 3
    q = queries.double().numpy()
    _, closest, means, precision = _mahalanobis_numpy(q, x.double().numpy(), y.numpy(), 3)
    x_hat = q - eps * np.sign((q - means[closest]) @ precision)
    expected = _mahalanobis_numpy(x_hat, x.double().numpy(), y.numpy(), 3)[0]
    np.testing.assert_allclose(det.score(queries, det.posteriors(queries)).numpy(), expected, rtol=1e-4)


def test_mahalanobis_is_safe_with_dead_features():
    """A feature that is always zero (a dead ReLU) makes Σ singular: the pseudo-inverse ignores it."""
    x, y = _unequal_class_data()
    x = torch.cat([x, torch.zeros(len(x), 1)], dim=1)
    det = make_detector("mahalanobis").fit(_linear_model(seed=4, d=5), _splits(x, y, 3))
    queries = torch.cat([torch.randn(20, 4, generator=torch.Generator().manual_seed(7)), torch.zeros(20, 1)], 1)
    expected = _mahalanobis_numpy(queries[:, :4].double().numpy(), x[:, :4].double().numpy(), y.numpy(), 3)[0]
    np.testing.assert_allclose(det.score(queries, det.posteriors(queries)).numpy(), expected, rtol=1e-3)


def test_hooked_features_are_the_input_of_the_last_linear(digits_victim, digits):
    """On a module that is not a Classifier the forward hook must capture what the last Linear receives."""
    plain = nn.Sequential(nn.Sequential(digits_victim.normalize, digits_victim.features), digits_victim.head)
    x = digits.x_test[:20]
    with torch.no_grad():
        torch.testing.assert_close(penultimate_map(plain)(x), digits_victim.penultimate(x))
        torch.testing.assert_close(penultimate_map(digits_victim)(x), digits_victim.penultimate(x))


# ------------------------------------------------------------------------------------------------
# ODIN's choice of (T, ε)
# ------------------------------------------------------------------------------------------------
def test_odin_without_outliers_uses_the_paper_defaults(blobs, blob_victim):
    det = make_detector("odin").fit(blob_victim, blobs)
    assert (det.temperature_, det.epsilon_, det.selection) == (1000.0, 0.0014, {})
    det = make_detector("odin", epsilon=0.0).fit(blob_victim, blobs)
    assert (det.temperature_, det.epsilon_) == (1000.0, 0.0)


def test_odin_tunes_t_and_epsilon_for_the_best_tpr(blobs, blob_victim, blob_outliers):
    det = make_detector("odin", temperatures=[1, 1000], epsilons=[0, 0.05, 0.5], tune_samples=400)
    det.fit(blob_victim, blobs, outliers=blob_outliers["fit"])
    assert set(det.selection) == {(t, e) for t in (1.0, 1000.0) for e in (0.0, 0.05, 0.5)}
    best = max(det.selection.values())
    assert det.selection[(det.temperature_, det.epsilon_)] == best
    assert len(set(det.selection.values())) > 1  # the grid matters on this data, so the choice is a real one
    fixed = make_detector("odin", temperature=1.0, epsilons=[0, 0.05], tune_samples=400)
    fixed.fit(blob_victim, blobs, outliers=blob_outliers["fit"])
    assert set(fixed.selection) == {(1.0, 0.0), (1.0, 0.05)} and fixed.temperature_ == 1.0


# ------------------------------------------------------------------------------------------------
# the binary classifier
# ------------------------------------------------------------------------------------------------
def test_binary_classifier_separates_a_synthetic_in_out_pair(blobs, blob_victim, blob_outliers):
    det = make_detector("binary", Cs=5).fit(blob_victim, blobs, outliers=blob_outliers["fit"])
    s_in = det.score(blobs.x_test, det.posteriors(blobs.x_test))
    s_out = det.score(blob_outliers["test"], det.posteriors(blob_outliers["test"]))
    labels = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    assert roc_auc_score(labels, torch.cat([s_in, s_out]).numpy()) > 0.97
    assert float((s_out > 0.5).float().mean()) > 0.9 and float((s_in < 0.5).float().mean()) > 0.9
    # its own rule (P(out) > 0.5) is in place right after fit
    assert det.threshold == 0.5 and det.tnr is None
    assert float(det.flag(blob_outliers["test"], det.posteriors(blob_outliers["test"])).float().mean()) > 0.9


def test_binary_scores_are_the_fitted_logistic_regression(blobs, blob_victim, blob_outliers):
    """The torch scoring path equals scikit-learn's predict_proba on the (standardised) features."""
    det = make_detector("binary", Cs=[0.01, 1.0]).fit(blob_victim, blobs, outliers=blob_outliers["fit"])
    x = torch.cat([blobs.x_test[:100], blob_outliers["test"][:100]])
    with torch.no_grad():
        h = blob_victim.penultimate(x).double()
    z = ((h - det._mean.double()) / det._std.double()).numpy()
    expected = det.estimator.predict_proba(z)[:, 1]
    np.testing.assert_allclose(det.score(x, det.posteriors(x)).numpy(), expected, atol=1e-5)
    assert float(np.ravel(det.estimator.C_)[0]) in (0.01, 1.0)


def test_binary_accepts_a_user_feature_extractor(blobs, blob_victim, blob_outliers):
    det = make_detector("binary", features=nn.Identity(), Cs=3, folds=3)
    det.fit(blob_victim, blobs, outliers=blob_outliers["fit"])
    assert det._w.shape == (D,)  # the logistic regression sees the raw 8-d inputs, not the MLP's 128 features
    s_out = det.score(blob_outliers["test"], det.posteriors(blob_outliers["test"]))
    assert float((s_out > 0.5).float().mean()) > 0.9


# ------------------------------------------------------------------------------------------------
# calibration: every detector meets its TNR on held-out benign data and flags more OOD than benign
# ------------------------------------------------------------------------------------------------
_BLOB_OPTIONS = {"binary": {"Cs": 5}, "odin": {"tune_samples": 500}}


@pytest.mark.parametrize("name", ["msp", "odin", "mahalanobis", "binary"])
def test_calibrated_threshold_meets_its_tnr_on_held_out_data(name, blobs, blob_victim, blob_outliers):
    det = make_detector(name, **_BLOB_OPTIONS.get(name, {}))
    det.fit(blob_victim, blobs, outliers=blob_outliers["fit"], generator=torch.Generator().manual_seed(0))
    for tnr in (0.9, 0.95):
        det.calibrate(blobs.x_val, tnr=tnr)
        benign = det.flag(blobs.x_test, det.posteriors(blobs.x_test)).float().mean().item()
        ood = det.flag(blob_outliers["test"], det.posteriors(blob_outliers["test"])).float().mean().item()
        assert abs((1 - benign) - tnr) < 0.03, f"{name}: held-out TNR {1 - benign:.3f} for target {tnr}"
        assert ood > benign + 0.3, f"{name}: flags {ood:.2f} of OOD and {benign:.2f} of benign queries"
        # rates() reports the same two numbers (attack = the OOD queries), and an AUC from the raw scores
        r = det.rates(blobs.x_test, blob_outliers["test"])
        assert r["tnr"] == pytest.approx(1 - benign) and r["tpr"] == pytest.approx(ood)
        from sklearn.metrics import roc_auc_score

        x = torch.cat([blobs.x_test, blob_outliers["test"]])
        labels = [0] * len(blobs.x_test) + [1] * len(blob_outliers["test"])
        auc = roc_auc_score(labels, det.score(x, det.posteriors(x)).double().numpy())
        assert r["auc"] == pytest.approx(auc) and r["auc"] > 0.5


# ------------------------------------------------------------------------------------------------
# generic: every registered detector
# ------------------------------------------------------------------------------------------------
def test_the_four_detectors_are_registered():
    assert {"msp", "odin", "mahalanobis", "binary"} <= set(available_detectors())
    assert detector_class("binary").needs_outliers and not detector_class("msp").needs_outliers


@pytest.mark.parametrize("name", available_detectors())
def test_generic_detector_contract(name, digits, digits_victim):
    g = torch.Generator().manual_seed(0)
    outliers = torch.rand(300, *digits.input_shape, generator=g)
    det = make_detector(name)
    requires = [p.requires_grad for p in digits_victim.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in digits_victim.parameters()]
    det.fit(digits_victim, digits, outliers=outliers, generator=g)
    threshold = det.calibrate(digits.x_val, tnr=0.9)
    assert np.isfinite(threshold) and det.threshold == threshold and det.tnr == 0.9
    x = torch.cat([digits.x_test[:40], outliers[:40]])
    probs = det.posteriors(x)
    scores = det.score(x, probs, client="alice")
    assert scores.shape == (80,) and torch.isfinite(scores).all()
    flags = det.flag(x, probs, client="alice")
    assert flags.dtype == torch.bool and flags.shape == (80,)
    # per-client state round trip (stateless detectors: empty, and scores do not depend on the client)
    state = det.state_dict("alice")
    assert isinstance(state, dict)
    det.reset("alice")
    det.load_state_dict("alice", state)
    if not det.stateful:
        assert state == {}
        torch.testing.assert_close(det.score(x, probs, client="bob"), scores)
    # scoring works with gradients disabled (as inside a PredictionAPI) and leaks no gradient into the victim
    with torch.no_grad():
        again = det.score(x, probs, client="alice" if det.stateful else "carol")
    assert again.shape == (80,)
    for p, before in zip(digits_victim.parameters(), grads, strict=True):  # no gradient reached the victim
        assert (p.grad is None) if before is None else torch.equal(p.grad, before)
    assert [p.requires_grad for p in digits_victim.parameters()] == requires
    assert det.score(x[:0], probs[:0]).shape == (0,)


# ------------------------------------------------------------------------------------------------
# bad input: one-line ValueErrors naming the problem
# ------------------------------------------------------------------------------------------------
def _one_line(excinfo: pytest.ExceptionInfo, *words: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("name", ["msp", "odin", "mahalanobis", "binary"])
def test_use_before_fit_is_a_one_line_error(name, probs_batch):
    det = make_detector(name)
    x = torch.zeros(len(probs_batch), 4)
    with pytest.raises(NotFittedError) as e:
        det.score(x, probs_batch)
    _one_line(e, name, "fit")
    with pytest.raises(NotFittedError) as e:
        det.calibrate(x, tnr=0.9)
    _one_line(e, name, "fit")
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("tnr", [0.0, 1.0, 1.5, -0.1])
def test_tnr_outside_the_open_unit_interval(tnr, blobs, blob_victim):
    det = make_detector("msp").fit(blob_victim, blobs)
    with pytest.raises(ValueError) as e:
        det.calibrate(blobs.x_val, tnr=tnr)
    _one_line(e, "tnr", "(0, 1)")


def test_binary_without_outliers(blobs, blob_victim):
    with pytest.raises(ValueError) as e:
        make_detector("binary").fit(blob_victim, blobs)
    _one_line(e, "binary", "outliers")


@pytest.mark.parametrize("which", ["equal", "subset"])
def test_binary_with_the_training_data_as_outliers(which, blobs, blob_victim):
    outliers = blobs.x_train.clone() if which == "equal" else blobs.x_train[100:400]
    det = make_detector("binary")
    with pytest.raises(ValueError) as e:
        det.fit(blob_victim, blobs, outliers=outliers)
    _one_line(e, "outliers", "training data")
    with pytest.raises(NotFittedError):  # a failed fit leaves the detector unfitted
        det.score(blobs.x_val, det.posteriors(blobs.x_val) if det.fitted else torch.zeros(len(blobs.x_val), K))


@pytest.mark.parametrize(
    ("name", "options", "words"),
    [
        ("odin", {"temperature": 0.0}, ("temperature", "> 0")),
        ("odin", {"epsilons": [0.0, -0.1]}, ("epsilon", ">= 0")),
        ("mahalanobis", {"epsilon": -1.0}, ("epsilon", ">= 0")),
        ("binary", {"folds": 1}, ("folds",)),
        ("binary", {"Cs": [1.0, -1.0]}, ("Cs",)),
        ("odin", {"temprature": 10.0}, ("temprature", "valid")),
    ],
)
def test_bad_options_are_one_line_errors(name, options, words):
    with pytest.raises(ValueError) as e:
        make_detector(name, **options)
    _one_line(e, *words)
