"""Adaptive Misinformation (Kariyappa & Qureshi, CVPR 2020): Eq. 7's misinformation model, Eq. 9–11's gate,
the ablations, and the sweep's fit-once integration."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modelsteal import PredictionAPI
from modelsteal.defenses import AdaptiveMisinformation, make_defense
from modelsteal.experiment.config import ConfigError, parse_config
from modelsteal.experiment.sweep import run_sweep
from modelsteal.experiment.validate import validate_sweep


class Fixed(nn.Module):
    """A stand-in misinformation model answering the same logits for every input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def _rows(tops: list[float], k: int = 4, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Posterior rows whose maximum is exactly each of ``tops`` (class 0), the rest spread evenly."""
    t = torch.tensor(tops, dtype=dtype)[:, None]
    return torch.cat([t, ((1 - t) / (k - 1)).expand(-1, k - 1)], dim=1)


@pytest.fixture(scope="module")
def misinformation_net(digits_victim, digits):
    """f̂ fitted with Eq. 7 on the digits victim's training split (AM's own fit)."""
    am = AdaptiveMisinformation(tau=0.9, train={"epochs": 10})
    am.fit(digits_victim, digits)
    return am.misinformation


def test_answers_f_for_confident_rows_and_fhat_for_unconfident_ones(digits_victim, digits, misinformation_net):
    """α at its limits (ν = 1000). Bugs caught: α and 1 − α swapped, the sign of ν flipped (confident rows
    misinformed), the gate read from f̂ instead of the victim's MSP."""
    api = PredictionAPI(digits_victim, defense=AdaptiveMisinformation(tau=0.9, misinformation=misinformation_net))
    x = digits.x_test
    clean, out = api.posteriors(x), api.query(x)
    with torch.no_grad():
        fhat = torch.softmax(misinformation_net(x), dim=1)
    top = clean.max(dim=1).values
    confident, unsure = top > 0.95, top < 0.85
    assert confident.sum() > 100 and unsure.sum() > 5
    torch.testing.assert_close(out[confident], clean[confident], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[unsure], fhat[unsure], rtol=0, atol=1e-6)
    assert not torch.allclose(fhat[unsure], clean[unsure], atol=0.1)  # f̂ really differs from f there


def test_the_exact_mixture_for_a_hand_set_alpha():
    """Eq. 9–11 in between the limits: ν = 10, τ = 0.5 and MSPs 0.6 and 0.45 give α = 1/(1 + e^{±0.5·…}).
    Bugs caught: ν ignored, τ subtracted the wrong way, the mixture weighting f with α."""
    probs = _rows([0.6, 0.45])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    am = AdaptiveMisinformation(tau=0.5, nu=10.0, misinformation=Fixed(q.log()))
    out = am(torch.zeros(2, 3), probs)
    for i, top in enumerate((0.6, 0.45)):
        alpha = 1 / (1 + math.exp(10.0 * (top - 0.5)))
        torch.testing.assert_close(out[i], (1 - alpha) * probs[i] + alpha * q, rtol=0, atol=1e-12)


def test_the_hard_gate_switches_exactly_at_tau():
    """Eq. 5: MSP ≤ τ is OOD (misinformed), MSP > τ is served by f. Bugs caught: ``<`` for ``≤`` (the row at τ
    served by f), the sigmoid used regardless of ``gate`` (α = 1/2 just above τ)."""
    tau, eps = 0.5, 1e-9
    probs = _rows([tau + eps, tau, tau - eps])
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    hard = AdaptiveMisinformation(tau=tau, gate="hard", misinformation=Fixed(q.log()))
    out = hard(torch.zeros(3, 3), probs)
    assert torch.equal(out[0], probs[0])
    torch.testing.assert_close(out[1:], q.expand(2, -1), rtol=0, atol=1e-15)
    soft = AdaptiveMisinformation(tau=tau, misinformation=Fixed(q.log()))(torch.zeros(3, 3), probs)
    torch.testing.assert_close(soft[1], (probs[1] + q) / 2, rtol=0, atol=1e-12)  # the sigmoid's midpoint


def test_fit_trains_a_copy_that_puts_low_mass_on_the_true_class(digits_victim, digits, misinformation_net):
    """Eq. 7. Bugs caught: f̂ trained with ordinary cross-entropy (high mass on y), f̂ being the victim itself
    trained in place (the victim's own answers would change), f̂ of another architecture."""
    x, y = digits.x_train, digits.y_train
    with torch.no_grad():
        fhat_y = torch.softmax(misinformation_net(x), dim=1).gather(1, y[:, None]).mean()
        victim_y = torch.softmax(digits_victim(x), dim=1).gather(1, y[:, None]).mean()
    assert float(fhat_y) < 0.05 and float(victim_y) > 0.8, (float(fhat_y), float(victim_y))
    assert misinformation_net is not digits_victim
    assert type(misinformation_net) is type(digits_victim)
    assert [p.shape for p in misinformation_net.parameters()] == [p.shape for p in digits_victim.parameters()]
    assert not misinformation_net.training


@pytest.mark.parametrize(("kind", "gate"), [("trained", "sigmoid"), ("trained", "hard"), ("untrained", "sigmoid"),
                                            ("uniform", "sigmoid")])
def test_rows_stay_on_the_simplex(kind, gate, digits_victim, digits, misinformation_net, probs_batch):
    """Every kind and gate, on edge rows (one-hot, uniform) and in half precision. Bug caught: mixing in f̂'s
    logits instead of its softmax."""
    net = misinformation_net if kind == "trained" else None
    am = AdaptiveMisinformation(tau=0.9, gate=gate, misinformation_kind=kind, misinformation=net)
    am.bind(digits_victim, input_shape=digits.input_shape, num_classes=10)
    x = digits.x_test[: len(probs_batch)]
    for p in (probs_batch, probs_batch.half(), probs_batch.double()):
        out = am(x, p)
        assert out.dtype == p.dtype and (out >= 0).all()
        torch.testing.assert_close(out.double().sum(1), torch.ones(len(p), dtype=torch.float64),
                                   rtol=0, atol=2e-3 if p.dtype == torch.float16 else 1e-6)


def test_uniform_kind_answers_one_over_k_for_unconfident_rows():
    """Ablation ``misinformation_kind='uniform'``. Bugs caught: the uniform answer built as f (nothing
    misinformed) or as zeros; it needs no fit and declares that it ignores x."""
    am = make_defense("am", strength=0.5, misinformation_kind="uniform")
    assert not am.needs_fit and not am.uses_input
    probs = _rows([0.9, 0.3], k=5)
    out = am(torch.zeros(2, 3), probs)
    torch.testing.assert_close(out[0], probs[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1], torch.full((5,), 0.2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_untrained_kind_is_a_fixed_random_copy_of_the_victim(digits_victim, digits):
    """Ablation ``misinformation_kind='untrained'``: built in bind (no fit), same architecture, new weights."""
    am = make_defense("am", strength=0.9, misinformation_kind="untrained")
    assert not am.needs_fit
    api = PredictionAPI(digits_victim, defense=am)
    net = am.misinformation
    assert type(net) is type(digits_victim) and net is not digits_victim
    x = digits.x_test[:64]
    with torch.no_grad():
        assert not torch.allclose(net(x), digits_victim(x))
        fhat = torch.softmax(net(x), dim=1)
    unsure = api.posteriors(x).max(1).values < 0.85
    torch.testing.assert_close(api.query(x)[unsure], fhat[unsure], rtol=0, atol=1e-6)


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5, float("nan")])
def test_bad_tau_is_a_one_line_error(tau):
    """Bug caught: τ outside (0, 1] accepted (τ = 0 would be the undefended victim, τ > 1 misinforms all)."""
    with pytest.raises(ValueError, match=r"^am needs tau \(the MSP threshold\) in \(0, 1\], got ") as e:
        make_defense("am", strength=tau)
    assert "\n" not in str(e.value)


def test_use_before_fit_is_a_one_line_error_naming_the_fix(digits_victim, digits):
    """Bug caught: an unfitted AM answering anyway (e.g. falling back to f or to a uniform answer)."""
    api = PredictionAPI(digits_victim, defense=make_defense("am", strength=0.9))
    with pytest.raises(ValueError, match=r"^am has no misinformation model: call fit\(victim, data\) first, or "
                                         r"pass misinformation=<nn.Module>$"):
        api.query(digits.x_test[:4])
    assert api.queries() == 0  # a refused batch is not counted


AM_SWEEP = {
    "name": "am-tiny",
    "victim": {"dataset": "digits", "arch": "mlp", "epochs": 4, "lr": 0.05, "momentum": 0.9},
    "transfer": {"source": "dataset", "classes": [5, 6, 7, 8, 9]},
    "defenses": [{"name": "am", "strengths": [0.5, 0.999], "options": {"train": {"epochs": 5}}}],
    "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 2, "lr": 0.05, "momentum": 0.9}}],
    "budgets": [100],
    "seeds": [0],
}


def test_sweep_fits_am_once_and_defender_accuracy_falls_as_tau_rises(tmp_path, monkeypatch):
    """f̂ does not depend on τ: one fit serves both strengths (and both the utility and the attack of each).
    In AM a *lower* τ misinforms fewer queries (Sec. 4.3), so defender accuracy at τ = 0.5 exceeds that at
    τ = 0.999. Bugs caught: a fit per point (or per API), an unfitted AM reaching the API, τ's direction
    reversed."""
    fits = []
    original = AdaptiveMisinformation.fit

    def counting(self, victim, data, **kw):
        fits.append(self.tau)
        return original(self, victim, data, **kw)

    monkeypatch.setattr(AdaptiveMisinformation, "fit", counting)
    records = run_sweep(parse_config(AM_SWEEP), out_dir=tmp_path, progress=False, plots=False)
    assert len(fits) == 1, fits
    acc = {r["strength"]: r["defender_accuracy"] for r in records}
    assert set(acc) == {0.5, 0.999}
    assert acc[0.5] > acc[0.999] + 0.05, acc
    assert all(r["queries"] == 100 for r in records)


@pytest.mark.parametrize(("options", "strength", "message"), [
    ({}, 1.5, r"defenses\[0\] \(am, strength 1.5\): am needs tau \(the MSP threshold\) in \(0, 1\], got 1.5"),
    ({"gate": "soft"}, 0.9, r"am: gate must be 'sigmoid' or 'hard', got 'soft'"),
    ({"misinformation_kind": "random"}, 0.9, r"misinformation_kind must be 'trained', 'untrained' or 'uniform'"),
    ({"train": {"epoch": 3}}, 0.9, r"unknown key epoch for am's train settings; valid: epochs, "),
    ({"train": {"epochs": -1}}, 0.9, r"training option epochs=-1 is invalid"),
    ({"nu": 0}, 0.9, r"am needs a finite nu > 0"),
    ({"misinformation": "f.pt"}, 0.9, r"option misinformation of defense 'am' takes a Python object"),
])
def test_validate_sweep_refuses_bad_am_options_before_any_training(options, strength, message):
    """A bad AM entry is a one-line ``ConfigError`` from :func:`validate_sweep`, which loads and trains nothing.
    Bug caught: an option checked only when the defense is fitted (after the victim's training)."""
    raw = {**AM_SWEEP, "defenses": [{"name": "am", "strengths": [strength], "options": options}]}
    with pytest.raises(ConfigError, match=message) as e:
        validate_sweep(parse_config(raw))
    assert "\n" not in str(e.value)
    validate_sweep(parse_config(AM_SWEEP))  # the good config passes


def test_attack_and_serve_fit_am_on_the_victims_own_dataset_before_the_first_query(tmp_path, capsys):
    # the checkpoint names its dataset; without the fit the first query would fail with "call fit(...) first"
    from modelsteal.cli.main import main
    from modelsteal.models import build_model, save_checkpoint
    from modelsteal.serve.config import ServeConfig, build_api

    ckpt = tmp_path / "v.pt"
    save_checkpoint(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0), ckpt, dataset="digits")
    assert main(["--threads", "1", "attack", "--target", str(ckpt), "--attack", "knockoff", "--budget", "40",
                 "--defense", "am", "--strength", "0.9", "--clone", "mlp", "--epochs", "1"]) == 0
    # the untrained victim is never confident, so every answer is f̂'s, trained to be wrong: 0% (untrained f̂: ~10%)
    assert "defender_accuracy: 0.00%" in capsys.readouterr().out
    api, _ = build_api(ServeConfig(checkpoint=str(ckpt), defense="am", strength=0.9))
    am = api.defense
    assert isinstance(am.misinformation, nn.Module) and am.history is not None  # f̂ trained (Eq. 7) at start-up


def test_a_convolutional_misinformation_model_runs_channels_last_on_the_cpu_with_the_same_answers(digits):
    # AM's cost is one extra forward pass of f̂; in channels-last it costs what MAD's surrogate pass costs
    import copy

    from modelsteal.models import build_model
    from modelsteal.models.builders import is_channels_last

    victim = build_model("lenet", input_shape=digits.input_shape, num_classes=digits.num_classes, seed=0)
    am = AdaptiveMisinformation(tau=0.9, train={"epochs": 1})
    am.fit(victim, digits)
    assert is_channels_last(am.misinformation)
    plain = copy.deepcopy(am.misinformation).to(memory_format=torch.contiguous_format)
    x = digits.x_test[:64]
    probs = torch.softmax(victim(x), dim=1).detach()
    assert torch.allclose(am.misinformation_probs(x, probs), torch.softmax(plain(x), dim=1), atol=1e-5)
