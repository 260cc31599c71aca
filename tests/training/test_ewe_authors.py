"""The EWE 'authors' preset (cleverhans-lab/entangled-watermark): the cosine SNNL, the refinement *away* from the
target, the preset's settings and the options a user gives over it."""

from __future__ import annotations

import math

import pytest
import torch

from modelsteal.models import build_model
from modelsteal.training import TrainConfig, make_recipe, train, watermark_rate
from modelsteal.training.ewe import PRESETS, authors_layers, refine_away_from_target, resolve_layers, snnl


def test_cosine_snnl_is_the_authors_kernel_on_relu_rows():
    # catches: no ReLU, euclidean distance under the cosine name, T multiplying where the kernel divides
    h = torch.tensor([[1.0, 0.0, -2.0], [0.5, 0.5, 0.0], [0.0, 1.0, 1.0], [2.0, 0.1, 0.0]])
    g = [0, 0, 1, 1]
    t = 0.7
    r = torch.relu(h)
    u = r / r.norm(dim=1, keepdim=True)
    d = 1 - u @ u.T
    terms = []
    for i in range(4):
        num = sum(math.exp(-float(d[i, j]) / t) for j in range(4) if j != i and g[j] == g[i])
        den = sum(math.exp(-float(d[i, k]) / t) for k in range(4) if k != i)
        terms.append(-math.log(num / den))
    assert float(snnl(h, torch.tensor(g), t, metric="cosine")) == pytest.approx(sum(terms) / 4, rel=1e-5)
    assert float(snnl(h, torch.tensor(g), t)) != pytest.approx(sum(terms) / 4, rel=1e-3)


def test_preset_fills_only_the_options_left_at_their_defaults():
    r = make_recipe("ewe", preset="authors", snnl_weight=0.0, warmup_epochs=3)
    assert r.snnl_weight == 0.0 and r.warmup_epochs == 3  # given over the preset
    for k in ("trigger_dataset", "metric", "ce_reduction", "refine", "temperature", "fgsm_eps"):
        assert r.options()[k] == PRESETS["authors"][k], k
    assert r.options()["preset"] == "authors"
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        make_recipe("ewe", preset="nope")
    with pytest.raises(ValueError, match="needs a step size fgsm_eps > 0"):
        make_recipe("ewe", refine="away-from-target")
    with pytest.raises(ValueError, match="metric must be euclidean or cosine"):
        make_recipe("ewe", metric="manhattan")


def test_authors_layers_are_conv1_conv2_fc1():
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=10, seed=0)
    names, mods = resolve_layers(model, authors_layers(model))
    assert [type(m).__name__ for m in mods] == ["Conv2d", "Conv2d", "Linear"]


def test_refinement_moves_triggers_away_from_the_target_until_the_threshold(digits):
    # catches: the sign of the step (toward the target, as our FGSM option does), the threshold ignored
    model = build_model("mlp", input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std,
                        seed=0)
    train(model, digits.x_train, digits.y_train, config=TrainConfig(epochs=5, lr=0.05, momentum=0.9),
          generator=torch.Generator().manual_seed(0))
    model.eval()
    x7 = digits.x_train[digits.y_train == 7][:40]  # images the model labels 7: all "already the target"
    xt = digits.x_train[digits.y_train == 7][40:80]
    assert watermark_rate(model, x7, 7) > 0.9
    _, layers = resolve_layers(model, None)
    out = refine_away_from_target(model, layers, x7, xt, target_class=7, lr=0.05, iters=3, threshold=0.1,
                                  temperatures=torch.ones(len(layers)), relative=True, metric="euclidean")
    assert watermark_rate(model, out, 7) <= 0.1
    with torch.no_grad():
        assert float(model(out)[:, 7].mean()) < float(model(x7)[:, 7].mean())
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_summed_cross_entropy_is_summed_on_task_steps_too():
    # catches: only the watermark steps summed — under Adam, whose moments both kinds of step share, the task
    # steps then shrink to nothing and the victim collapses to the target class (it did, in a first port)
    from modelsteal.training.ewe import WATERMARK_KEY, EntangledLoss
    from modelsteal.training.losses import soft_cross_entropy

    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0)
    x, y = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2, 3, 4, 5, 6])
    layers = resolve_layers(model, None)[1]
    summed = EntangledLoss(layers=layers, weight=0.0, ce_reduction="sum")
    mean = EntangledLoss(layers=layers, weight=0.0)
    ce = float(soft_cross_entropy(model(x), y))
    assert float(summed(model, x, y, {})) == pytest.approx(6 * ce, rel=1e-5)
    assert float(mean(model, x, y, {})) == pytest.approx(ce, rel=1e-5)
    groups = torch.tensor([1, 1, 1, 0, 0, 0])
    wm = EntangledLoss(layers=layers, weight=0.0, ce_reduction="sum")
    assert float(wm(model, x, y, {WATERMARK_KEY: groups})) == pytest.approx(6 * ce, rel=1e-5)
