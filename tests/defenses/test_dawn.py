"""DAWN: keyed selection and wrong labels, records, the accuracy cost, and its binomial verifier."""

import json
import math

import pytest
import torch
from scipy.stats import binom

from modelsteal import PredictionAPI
from modelsteal.defenses import make_defense
from modelsteal.defenses.dawn import DAWN, load_records
from modelsteal.models import build_model
from modelsteal.ownership import make_verifier
from modelsteal.ownership.dawn import DAWNVerifier, binomial_p_value, critical_agreements
from modelsteal.training import TrainConfig, train


def _grid(n: int, *, seed: int, shape=(1, 8, 8)) -> torch.Tensor:
    """Random 8-bit images (values k/255), like decoded PNGs."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() / 255


def _bound(n: int, p: float, z: float = 4.5) -> float:
    return z * math.sqrt(p * (1 - p) / n)


def _api(model, **options):
    dawn = DAWN(**options)
    return PredictionAPI(model, defense=dawn), dawn


def test_selection_is_keyed_deterministic_and_at_rate(digits_victim):
    x = _grid(4000, seed=0)
    api, dawn = _api(digits_victim, rate=0.2, key="alpha")
    top = api.posteriors(x).argmax(1)
    sel, wrong = dawn.watermark(x, top)
    rate = float(sel.float().mean())
    assert abs(rate - 0.2) < _bound(4000, 0.2), rate  # catches: rate ignored, or compared to the wrong bytes
    again = DAWN(rate=0.2, key="alpha", quantum=dawn.quantum)
    again.bind(digits_victim, input_shape=(1, 8, 8), num_classes=10)
    sel2, wrong2 = again.watermark(x.flip(0), top.flip(0))  # another instance, another order: same per input
    assert torch.equal(sel2.flip(0), sel) and torch.equal(wrong2.flip(0), wrong)  # catches: a global RNG
    other = DAWN(rate=0.2, key="beta")
    other.bind(digits_victim, input_shape=(1, 8, 8), num_classes=10)
    sel3, _ = other.watermark(x, top)
    both = float((sel & sel3).float().mean())  # independent selections overlap at r**2 = 0.04, not 0.2
    assert abs(both - 0.04) < _bound(4000, 0.04), both  # catches: the key not in the hash


def test_wrong_labels_are_wrong_and_uniform_over_the_others(digits_victim):
    x = _grid(3000, seed=1)
    api, dawn = _api(digits_victim, rate=0.999999, key="k")
    clean = api.posteriors(x)
    out = api.query(x)
    top = clean.argmax(1)
    assert (out.argmax(1) != top).all()  # catches: a shift of 0 (identity) allowed
    shift = (out.argmax(1) - top) % 10
    counts = torch.bincount(shift, minlength=10)
    assert counts[0] == 0 and (counts[1:] > 3000 / 9 - _bound(3000, 1 / 9) * 3000).all(), counts
    # the answer swaps two entries: same multiset of probabilities
    assert torch.allclose(out.sort(1).values, clean.sort(1).values)


def test_unselected_answers_are_untouched_and_the_cost_is_about_r(digits_victim, digits):
    x, y = digits.x_test, digits.y_test
    api, dawn = _api(digits_victim, rate=0.3, key="cost")
    clean, out = api.posteriors(x), api.query(x)
    sel, _ = dawn.watermark(x, clean.argmax(1))
    assert torch.equal(out[~sel], clean[~sel])  # catches: noise added to every answer
    acc_clean = float((clean.argmax(1) == y).float().mean())
    acc_def = float((out.argmax(1) == y).float().mean())
    cost = acc_clean - acc_def
    assert abs(cost - 0.3 * acc_clean) < _bound(len(x), 0.3), (cost, acc_clean)  # cost = r * accuracy ~ r
    assert dawn.answered() == len(x) and len(dawn.state_dict("default")["labels"]) == int(sel.sum())


def test_selection_survives_re_encoding_below_half_a_quantum(digits_victim):
    x = _grid(2000, seed=2)
    api, dawn = _api(digits_victim, rate=0.5, key="robust")
    top = api.posteriors(x).argmax(1)
    sel, wrong = dawn.watermark(x, top)
    g = torch.Generator().manual_seed(3)
    jitter = (torch.rand(x.shape, generator=g) - 0.5) * (0.98 / 255)  # |change| < half a quantum
    sel_j, wrong_j = dawn.watermark(x + jitter, top)
    assert torch.equal(sel_j, sel) and torch.equal(wrong_j, wrong)  # catches: hashing raw float bytes
    assert torch.equal(dawn.watermark(x.half().float(), top)[0], sel)  # float16 round trip of k/255
    moved = x.clone()
    moved[:, 0, 0, 0] += 1 / 255  # one value one quantum away: a new hash, selected afresh
    agree = float((dawn.watermark(moved, top)[0] == sel).float().mean())
    assert abs(agree - 0.5) < _bound(2000, 0.5), agree


def test_records_round_trip_dedupe_and_key_check(digits_victim, tmp_path):
    path = tmp_path / "wm.jsonl"
    api, dawn = _api(digits_victim, rate=0.5, key="rec", records=str(path))
    x = _grid(200, seed=4)
    api.query(x, client="alice")
    api.query(x[:50], client="alice")  # repeated queries are recorded once
    api.query(_grid(100, seed=5), client="bob")
    st = dawn.state_dict("alice")
    assert len(st["labels"]) == len(set(map(tuple, st["inputs"])))
    restored = DAWN(rate=0.5, key="rec")
    restored.load_state_dict("alice", json.loads(json.dumps(st)))
    assert restored.state_dict("alice")["labels"] == st["labels"]
    with pytest.raises(ValueError, match="another key"):
        DAWN(key="other").load_state_dict("alice", st)
    recs = load_records(path, key="rec", clients=["alice"])
    assert len(recs.labels) == len(st["labels"])
    sel, wrong = dawn.watermark(recs.inputs, api.posteriors(recs.inputs).argmax(1))
    assert sel.all() and torch.equal(wrong, recs.labels)  # the file's rows are what the key watermarks
    assert len(load_records(path).labels) == len(st["labels"]) + len(dawn.state_dict("bob")["labels"])
    dawn.save_records(tmp_path / "all.jsonl")
    assert len(load_records(tmp_path / "all.jsonl", key="rec").labels) == len(load_records(path).labels)
    with pytest.raises(ValueError, match="another key"):
        load_records(path, key="wrong")
    lines = path.read_text().splitlines()
    forged = json.loads(lines[1])
    forged["input"] = [0] * 64  # a row the key does not select (checked: the all-zero image is not selected)
    if not dawn.watermark(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long))[0].item():
        (tmp_path / "forged.jsonl").write_text("\n".join([lines[0], json.dumps(forged)]) + "\n")
        with pytest.raises(ValueError, match="does not watermark"):
            load_records(tmp_path / "forged.jsonl", key="rec")


def test_binomial_p_value_is_scipys_tail():
    assert binomial_p_value(7, 40, chance=1 / 9) == pytest.approx(float(binom.sf(6, 40, 1 / 9)), rel=1e-12)
    assert binomial_p_value(0, 40, chance=1 / 9) == 1.0
    c = critical_agreements(40, chance=1 / 9, alpha=0.01)
    assert binomial_p_value(c, 40, chance=1 / 9) < 0.01 <= binomial_p_value(c - 1, 40, chance=1 / 9)


def test_false_positive_rate_on_independent_models_stays_under_alpha():
    """Random 3-class models (which err on most queries: the tight case of the null P(agree) = 1/(K-1)) as
    suspects, one key each: the fraction called stolen at alpha = 0.1 stays under alpha (+ sampling slack)."""
    shape, trials, alpha = (1, 4, 4), 300, 0.1
    victim = build_model("mlp", input_shape=shape, num_classes=3, seed=0).eval()
    stolen = 0
    for t in range(trials):
        dawn = DAWN(rate=0.5, key=f"key-{t}")
        PredictionAPI(victim, defense=dawn).query(_grid(120, seed=100 + t, shape=shape))
        suspect = build_model("mlp", input_shape=shape, num_classes=3, seed=1 + t).eval()
        v = DAWNVerifier.from_defense(dawn, alpha=alpha).fit(victim)
        stolen += v.verify(suspect, budget=40, seed=t).stolen
    # catches: a null of 1/K (0.33 instead of 0.5 here), or a two-sided/normal approximation that is too liberal
    assert stolen / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials), stolen


@pytest.fixture(scope="module")
def knockoff_setting(digits):
    """A victim behind DAWN (r = 0.1), a clone fitted to its answers on the attacker's half of the data, and an
    independent model trained on that half's true labels."""
    def fit(seed, x, y, epochs):
        m = build_model("mlp", input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std,
                        seed=seed)
        train(m, x, y, config=TrainConfig(epochs=epochs, lr=0.05, momentum=0.9),
              generator=torch.Generator().manual_seed(seed))
        return m.eval()

    half = len(digits.x_train) // 2
    victim = fit(0, digits.x_train[:half], digits.y_train[:half], 8)
    dawn = make_defense("dawn", strength=0.1, key="secret")
    answers = PredictionAPI(victim, defense=dawn).query(digits.x_train[half:], client="attacker")
    clone = fit(1, digits.x_train[half:], answers, 50)
    independent = fit(2, digits.x_train[half:], digits.y_train[half:], 50)
    return victim, dawn, clone, independent


def test_a_knockoff_clone_is_claimed_and_an_independent_model_is_not(knockoff_setting):
    victim, dawn, clone, independent = knockoff_setting
    v = DAWNVerifier.from_defense(dawn, clients=["attacker"], alpha=0.01).fit(victim)
    claim = v.verify(clone, budget=30)
    assert claim.stolen and claim.queries == 30 and claim.details["agreement_rate"] > 0.5, claim.details
    clear = v.verify(independent, budget=1000)
    assert not clear.stolen and clear.queries == len(v.records.labels), clear.details  # catches: agreement with y
    assert len(clear.evidence) == clear.queries


def test_bad_use_is_one_line(knockoff_setting, tmp_path):
    victim, dawn, clone, _ = knockoff_setting
    with pytest.raises(ValueError, match="needs the watermarked queries"):
        make_verifier("dawn").fit(victim)
    v = DAWNVerifier.from_defense(dawn, alpha=0.01)
    with pytest.raises(ValueError, match="before it was fitted"):
        v.verify(clone, budget=10)
    v.fit(victim)
    with pytest.raises(ValueError, match="at least 3 queries for its test to reach alpha=0.01"):
        v.verify(clone, budget=2)  # (1/9)**2 = 0.012 > 0.01
    other = build_model("mlp", input_shape=(1, 8, 8), num_classes=5, seed=0)
    with pytest.raises(ValueError, match="suspect answers 5 classes"):
        v.verify(other, budget=10)
    with pytest.raises(ValueError, match="dawn's rate must be in"):
        make_defense("dawn", strength=1.5)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        make_verifier("dawn", records=str(tmp_path / "nope.jsonl")).fit(victim)
