"""Entangled watermarks (EWE): the SNNL, the alternation, the trigger placement, the recipe and its verifier."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from modelsteal.data import load_dataset
from modelsteal.experiment.victims import recipe_checkpoint_meta
from modelsteal.models import build_model, save_checkpoint
from modelsteal.ownership import NotFittedError, make_verifier
from modelsteal.ownership.watermark import EWEVerifier, binomial_tail, queries_for_confidence
from modelsteal.training import TrainConfig, make_recipe, predict_logits, train, watermark_rate
from modelsteal.training.ewe import (
    WATERMARK_KEY,
    AlternatingBatches,
    EntangledLoss,
    layer_snnls,
    snnl,
    stamp,
    trigger_position,
)
from modelsteal.training.loop import ShuffledBatches
from modelsteal.training.losses import Loss, soft_cross_entropy

CFG = TrainConfig(epochs=10, lr=0.05, momentum=0.9)


def _snnl_by_hand(h: torch.Tensor, g: list[int], t: float) -> float:
    """Frosst et al.'s Eq. 1 written as loops (rows without a same-group partner left out)."""
    terms = []
    for i in range(len(h)):
        num = sum(math.exp(-float(((h[i] - h[j]) ** 2).sum()) / t) for j in range(len(h)) if j != i and g[j] == g[i])
        den = sum(math.exp(-float(((h[i] - h[k]) ** 2).sum()) / t) for k in range(len(h)) if k != i)
        if any(j != i and g[j] == g[i] for j in range(len(h))):
            terms.append(-math.log(num / den))
    return sum(terms) / len(terms)


def test_snnl_equals_its_formula_and_entangling_raises_it():
    # catches: a missing minus sign, the diagonal (i = k) left in the denominator, T multiplying instead of
    # dividing, a wrong mean (over all rows instead of rows with a partner)
    h = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [2.0, 2.0]])
    g = [0, 0, 1, 1, 2]  # row 4 has no partner
    for t in (0.5, 2.0, 10.0):
        assert float(snnl(h, torch.tensor(g), t)) == pytest.approx(_snnl_by_hand(h, g, t), rel=1e-5)
    # two separated groups: small SNNL; moving them onto each other (entangling) raises it toward log 2
    a, b = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(8, 3)
    groups = torch.tensor([0] * 8 + [1] * 8)
    apart = snnl(torch.cat([a, b + 10]), groups, 1.0)
    mixed = snnl(torch.cat([a, b + a.flip(0) * 0.9]), groups, 1.0)
    assert float(apart) < 0.01 < float(mixed)
    # the gradient's sign: a step up the SNNL's gradient moves the groups' points closer together
    x = torch.cat([a, a + 1.5]).requires_grad_(True)
    (grad,) = torch.autograd.grad(snnl(x, groups, 4.0), x)
    y = (x + 0.1 * grad).detach()
    cross = lambda z: torch.cdist(z[:8], z[8:]).mean()  # noqa: E731
    x = x.detach()
    assert float(cross(y)) < float(cross(x)) and float(snnl(y, groups, 4.0)) > float(snnl(x, groups, 4.0))


def _mlp(seed: int = 0) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_entangled_loss_is_ce_minus_weighted_snnl_and_temperatures_descend_the_snnl():
    # catches: the model minimising the SNNL (separating instead of entangling), the SNNL added on task
    # steps, temperatures moved up the SNNL's gradient (or not at all)
    torch.manual_seed(0)
    model = _mlp()
    layers = [model[2], model[4]]
    x, y = torch.randn(12, 1, 2, 2), torch.full((12,), 2)
    groups = torch.tensor([1] * 6 + [0] * 6)
    loss = EntangledLoss(layers=layers, weight=3.0, temperature_lr=0.5, temperature=0.7)
    t0 = torch.tensor(loss.temperatures())
    logits, snnls = layer_snnls(model, layers, x, groups, t0)
    snnls = [v.detach() for v in snnls]
    expected = float(soft_cross_entropy(logits, y).detach() - 3.0 * torch.stack(snnls).sum())
    assert float(loss(model, x, y, {WATERMARK_KEY: groups}).detach()) == pytest.approx(expected, rel=1e-5)
    t1 = torch.tensor(loss.temperatures())
    assert not torch.equal(t0, t1)
    with torch.no_grad():
        after = torch.stack(layer_snnls(model, layers, x, groups, t1)[1]).sum()
    assert float(after) < float(torch.stack(snnls).sum())
    # a task step (no watermark marks) is the cross-entropy alone and leaves the temperatures alone
    with torch.no_grad():
        assert float(loss(model, x, y, {})) == pytest.approx(float(soft_cross_entropy(model(x), y)))
    assert loss.temperatures() == t1.tolist()


class _Spy(Loss):
    """Records, per step, whether the loop handed the loss a watermark batch."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def __call__(self, model, x, y, extra):
        self.kinds.append("w" if WATERMARK_KEY in extra else "t")
        return soft_cross_entropy(model(x), y)


def test_alternation_is_exactly_every_r_steps_through_the_one_loop():
    # catches: an off-by-one (step % r == 1), watermark steps replacing task batches (a task batch lost each
    # time), the step counter reset each epoch, the loop dropping the batch's own extras
    x, y = torch.rand(50, 1, 2, 2), torch.randint(0, 3, (50,))
    g = torch.Generator().manual_seed(0)
    task = ShuffledBatches(x, y, batch_size=10, generator=g)  # 5 task batches per epoch
    for r in (2, 3, 4):
        batches = AlternatingBatches(task, triggers=torch.rand(7, 1, 2, 2), target_images=torch.rand(9, 1, 2, 2),
                                     target_class=2, every=r, trigger_batch=3, generator=g)
        spy = _Spy()
        model = _mlp()
        hist = train(model, x, y, config=TrainConfig(epochs=3, batch_size=10), loss=spy, batches=batches, generator=g)
        steps = len(spy.kinds)
        assert [k == "w" for k in spy.kinds] == [(s + 1) % r == 0 for s in range(steps)]
        assert spy.kinds.count("t") == 15 and hist.steps == steps
    wx, wy, extra = batches.watermark_batch()
    assert wx.shape == (6, 1, 2, 2) and wy.tolist() == [2] * 6 and extra[WATERMARK_KEY].tolist() == [1] * 3 + [0] * 3
    with pytest.raises(ValueError, match="every"):
        AlternatingBatches(task, triggers=wx, target_images=wx, target_class=2, every=1, trigger_batch=3, generator=g)


def test_trigger_position_is_the_argmax_of_the_first_order_snnl_gain():
    # catches: the window sums indexed off by one, row/column swapped in the argmax, the gain's sign flipped
    for seed in range(5):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 3))
        layers = [model[2]]
        xw, xt = torch.rand(6, 1, 5, 6), torch.rand(6, 1, 5, 6)
        temps = torch.ones(1)
        pos = trigger_position(model, layers, xw, xt, size=2, value=1.0, temperatures=temps)
        xg = xw.clone().requires_grad_(True)
        groups = torch.tensor([1.0] * 6 + [0.0] * 6)
        snnls = layer_snnls(model, layers, torch.cat([xg, xt]), groups, temps)[1]
        (grad,) = torch.autograd.grad(torch.stack(snnls).sum(), xg)
        gain = (grad * (1.0 - xw)).sum(dim=(0, 1))
        brute = {(r, c): float(gain[r : r + 2, c : c + 2].sum()) for r in range(4) for c in range(5)}
        assert pos == max(brute, key=brute.get)
    stamped = stamp(xw, pos, size=2, value=1.0)
    r, c = pos
    assert bool((stamped[:, :, r : r + 2, c : c + 2] == 1).all())
    stamped[:, :, r : r + 2, c : c + 2] = xw[:, :, r : r + 2, c : c + 2]
    assert torch.equal(stamped, xw)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _victim(data, *, seed: int, **options):
    model = build_model("mlp", input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std, seed=seed)
    recipe = make_recipe("ewe", **options)
    model, history = recipe.fit(model, data, config=CFG, generator=torch.Generator().manual_seed(seed), device="cpu")
    return model, history, recipe


def _independent(data, seed: int, *, half: int) -> nn.Module:
    """A model trained on the true labels of one half of the training split (disjoint data across halves)."""
    idx = torch.arange(len(data.x_train))[half::2]
    model = build_model("mlp", input_shape=data.input_shape, num_classes=10, mean=data.mean, std=data.std,
                        seed=1000 + seed)
    train(model, data.x_train[idx], data.y_train[idx], config=CFG, generator=torch.Generator().manual_seed(seed))
    return model.eval()


@pytest.fixture(scope="module")
def ewe_victim(digits):
    return _victim(digits, seed=0)


def test_ewe_victim_learns_its_watermark_and_the_checkpoint_alone_builds_the_verifier(digits, ewe_victim, tmp_path):
    # catches: triggers not stamped where recorded, the watermark not learned (alternation or labels wrong),
    # the record missing from the checkpoint, a verifier that cannot tell the victim from an independent model
    model, history, recipe = ewe_victim
    wm = history.info["watermark"]
    assert model.watermark is wm and wm["method"] == "ewe" and wm["target_class"] == 7
    r, c = wm["position"]
    s = wm["trigger_size"]
    assert bool((wm["triggers"][:, :, r : r + s, c : c + s] == 1.0).all())
    assert wm["victim_rate"] >= 0.9 and wm["victim_rate"] == watermark_rate(model, wm["triggers"], 7)
    acc = float((predict_logits(model, digits.x_test).argmax(1) == digits.y_test).float().mean())
    assert acc > 0.9
    path = save_checkpoint(model, tmp_path / "v.pt", dataset="digits", extra=recipe_checkpoint_meta(history, recipe))
    v = EWEVerifier.from_checkpoint(path)
    assert torch.equal(v.triggers, wm["triggers"]) and v.target_class == 7
    verdict = v.verify(model, budget=40, seed=0)
    assert verdict.stolen and verdict.queries == 40 and verdict.details["success_rate"] >= 0.9
    assert verdict.details["queries_for_95"] <= 10
    assert not v.verify(_independent(digits, 0, half=0), budget=40, seed=0).stolen


def test_verifier_p_value_is_the_exact_binomial_tail_of_the_hits(digits, ewe_victim):
    # catches: binom.sf(k) instead of sf(k - 1) (an off-by-one that halves p-values), budget not spent on
    # distinct triggers, the null rate's floor ignored
    model, history, _ = ewe_victim
    wm = history.info["watermark"]
    v = make_verifier("ewe", watermark=wm, null_rate=0.3).fit(model)

    class Brighter(nn.Module):  # answers the target class on the triggers brighter than the median trigger
        input_shape, num_classes = digits.input_shape, 10

        def forward(self, x):
            hit = x.flatten(1).sum(1) > wm["triggers"].flatten(1).sum(1).median()
            return torch.nn.functional.one_hot(torch.where(hit, 7, 0), 10).float()

    verdict = v.verify(Brighter(), budget=30, seed=3)
    k, n = verdict.details["hits"], verdict.details["trials"]
    from scipy.stats import binom

    assert n == 30 and verdict.queries == 30 and sum(verdict.evidence) == k
    assert verdict.p_value == pytest.approx(float(binom.sf(k - 1, n, 0.3)), rel=1e-9)
    assert binomial_tail(0, 5, 0.3) == 1.0 and binomial_tail(5, 5, 0.3) == pytest.approx(0.3**5)
    floored = make_verifier("ewe", watermark={**wm, "null_rate_estimate": 0.0}).fit(model)
    assert floored.null()[0] == pytest.approx(0.1)  # chance, 1/K, not 0
    assert make_verifier("ewe", watermark=wm, min_null_rate=0.5).fit(model).null()[0] == 0.5


def test_queries_for_95_percent_confidence():
    # catches: a scan that returns the first n with p <= 0.05 on ceil(rate n) hits (too optimistic), or not the first
    from scipy.stats import binom

    assert queries_for_confidence(1.0, 0.1) == 2  # 0.1**2 = 0.01 < 0.05, 0.1 > 0.05
    assert queries_for_confidence(0.1, 0.1) is None and queries_for_confidence(0.05, 0.1) is None
    n = queries_for_confidence(0.4, 0.1)
    p = lambda m: binom.sf(math.floor(0.4 * m + 1e-9) - 1, m, 0.1) if math.floor(0.4 * m) else 1.0  # noqa: E731
    assert p(n) < 0.05 and all(p(m) >= 0.05 for m in range(1, n))


def test_verifier_p_value_on_independent_models_stays_above_alpha(digits, ewe_victim):
    # catches: a null rate taken as 0 (any hit is "stolen"), a lower-tail p-value, a test on the suspect's
    # agreement with the victim rather than on the target label
    model, history, _ = ewe_victim
    v = make_verifier("ewe", watermark=history.info["watermark"], alpha=0.05).fit(model)
    p_values = [v.verify(_independent(digits, s, half=s % 2), budget=50, seed=s).p_value for s in range(6)]
    assert min(p_values) > 0.05, p_values


def test_bad_options_are_one_line_errors(digits, ewe_victim):
    # catches: options accepted unchecked (an error deep inside training, or a silent wrong watermark)
    bad = [({"source_class": 3, "target_class": 3}, "must differ"), ({"every": 1}, "every must be an integer >= 2"),
           ({"snnl_weight": -1}, "snnl_weight"), ({"trigger_value": 2.0}, "trigger_value"),
           ({"layers": "features.2"}, "layers.*must be a list"), ({"fgsm_eps": -0.1}, "fgsm_eps"),
           ({"temperature": 0}, "temperature"), ({"relative_temperature": "yes"}, "relative_temperature")]
    for options, match in bad:
        with pytest.raises(ValueError, match=match) as err:
            make_recipe("ewe", **options)
        assert "\n" not in str(err.value) and "ewe" in str(err.value)
    with pytest.raises(ValueError, match="unknown option"):
        make_recipe("ewe", sorce_class=1)
    model = build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=0)
    for options, config, match in [({"source_class": 12}, CFG, "source_class=12 is not a class of digits"),
                                   ({"trigger_size": 9}, CFG, "trigger_size=9 does not fit"),
                                   ({"warmup_epochs": 3}, TrainConfig(epochs=3), "must exceed warmup_epochs=3"),
                                   ({"layers": ["features.9"]}, CFG, "unknown layer.*features.9.*the model has")]:
        with pytest.raises(ValueError, match=match):
            make_recipe("ewe", **options).fit(model, digits, config=config, generator=torch.Generator(), device="cpu")
    victim, history, _ = ewe_victim
    with pytest.raises(NotFittedError, match="no watermark"):
        make_verifier("ewe").fit(build_model("mlp", input_shape=digits.input_shape, num_classes=10, seed=0))
    with pytest.raises(ValueError, match="null_rate must be a number in"):
        make_verifier("ewe", null_rate=1.5)
    v = make_verifier("ewe", watermark=history.info["watermark"], null_rate=0.5).fit(victim)
    with pytest.raises(ValueError, match="needs a budget of at least 5 queries"):  # 0.5**4 > 0.05 > 0.5**5
        v.verify(victim, budget=4)
    other = build_model("mlp", input_shape=(1, 8, 8), num_classes=3, seed=0)
    with pytest.raises(ValueError, match="a suspect must solve the same task"):
        v.verify(other, budget=50)


@pytest.mark.slow
def test_ewe_watermark_transfers_to_a_distilled_clone_more_than_a_plain_watermark(digits):
    """Soft-label distillation on the victim's training inputs; the watermark's success rate on the clone,
    averaged over seeds, for EWE (snnl_weight 8) and the plain watermark (snnl_weight 0, same triggers)."""
    rates = {8.0: [], 0.0: []}
    for seed in range(6):
        for weight in rates:
            victim, history, _ = _victim(digits, seed=seed, snnl_weight=weight)
            clone = build_model("mlp", input_shape=digits.input_shape, num_classes=10, mean=digits.mean,
                                std=digits.std, seed=100 + seed)
            soft = torch.softmax(predict_logits(victim, digits.x_train), 1)
            train(clone, digits.x_train, soft, config=TrainConfig(epochs=20, lr=0.05, momentum=0.9),
                  generator=torch.Generator().manual_seed(seed))
            rates[weight].append(watermark_rate(clone, history.info["watermark"]["triggers"], 7))
    ewe, plain = (sum(r) / len(r) for r in (rates[8.0], rates[0.0]))
    assert ewe > plain, rates
