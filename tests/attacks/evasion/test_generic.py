"""Every evasion attack against PRADA (sybil, interleave, prada-jbda): the budget holds with natural queries
included, the detection report counts queries to the first flag, sweep configs name the inner attack, and
bad options or inputs are one-line errors. Each attack's own promises: test_sybil.py, test_interleave.py,
test_prada_jbda.py."""

from __future__ import annotations

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.attacks import JBDA, attack_class
from modelsteal.attacks.evasion import Interleave, KeyPool, Sybil
from modelsteal.detectors import make_detector

from .helpers import TRAIN, Recorder, jbda, prada_api


# -- budgets -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sybil", "interleave", "prada-jbda"])
def test_budget_never_exceeded_natural_queries_included(name, digits_victim, digits):
    """Bug caught: interleave giving its inner attack the whole budget (or one more row than B − ⌊B·f⌋), which
    the outer budget refuses mid-run; an attack whose reported queries differ from what the API answered."""
    api = PredictionAPI(digits_victim)
    options = {"seed_set": digits.x_val[:40], "clone": "mlp", "train": TRAIN}
    if name == "interleave":
        options.update(natural=digits.x_test, fraction=0.3)
    if name == "sybil":
        options.update(max_per_key=37)
    budget = 211
    result = attack_class(name)(**options)(api, budget=budget, seed=0)
    assert result.queries == api.total_queries <= budget
    assert result.queries >= budget - 1


def test_detection_report_counts_queries_to_the_first_flag(digits_victim, digits):
    """One key carrying plain JBDA is flagged; with batches of one row the reported count is the exact position
    of the first flagged query, which a fresh PRADA replaying the recorded stream confirms. Bug caught: the
    count taken before the batch is added, or the total of all keys reported for one key."""
    api = prada_api(digits_victim, digits)
    rec = Recorder(api)
    jbda = JBDA(seed_set=digits.x_val[:100], clone="mlp", train=TRAIN, query_batch_size=1)
    result = Sybil(attack=jbda, clients=2, max_per_key=400, assign="contiguous")(rec, budget=800, seed=0)
    info = result.info
    assert info["detector"] and info["detected"] and info["flagged_keys"] >= 1
    replay = make_detector("prada").fit(digits_victim, digits)
    stream = rec.stream[:400]  # key sybil-0's rows
    first = int(replay.flag(stream, replay.posteriors(stream), client="r").nonzero()[0]) + 1
    assert info["queries_to_flag"][0] == first == info["queries_to_detection"]
    assert info["queries_per_key"] == [400, 400]


def test_sweep_configs_can_name_the_inner_attack_and_its_options(digits_victim, digits):
    """``attack: sybil`` in a sweep config, wrapping Knockoff with nquery 2. Bug caught: the wrapper not handing
    the inner attack the transfer set the sweep provides, or dropping ``attack_options``."""
    from modelsteal.experiment.config import AttackConfig
    from modelsteal.experiment.points import build_attack

    attack = build_attack(
        AttackConfig(name="sybil", clone="mlp", train={"epochs": 2},
                     options={"attack": "knockoff", "attack_options": {"queries_per_image": 2}, "max_per_key": 60}),
        victim_arch="mlp", transfer=(digits.x_train, digits.y_train), seeds=digits.x_val[:20],
        device=torch.device("cpu"))
    api = PredictionAPI(digits_victim)
    result = attack(api, budget=120, seed=0)
    assert result.info["images"] == 60 and result.info["queries_per_key"] == [60, 60]
    assert {k: result.info[k] for k in ("keys", "max_per_key")} == {"keys": 2, "max_per_key": 60}


# -- bad options --------------------------------------------------------------------------------------------
BAD = [
    ("sybil", {"clients": 0}, "clients must be an integer >= 1"),
    ("sybil", {"max_per_key": -3}, "max_per_key must be an integer >= 1"),
    ("sybil", {"assign": "zigzag"}, "assign must be one of contiguous, round-robin"),
    ("sybil", {"attack": "steal-everything"}, "known attacks"),
    ("sybil", {"attack_options": {"bogus": 1}}, "bogus"),
    ("sybil", {"attack": "equation-solving"}, "not an image attack"),
    ("sybil", {"attack": "knockoff"}, "needs transfer_set"),
    ("interleave", {"fraction": 1.0}, r"fraction must be a number in \[0, 1\)"),
    ("interleave", {"fraction": -0.1}, r"fraction must be a number in \[0, 1\)"),
    ("interleave", {"fraction": 0.9999}, "rounds to 1"),
    ("prada-jbda", {"distance_mean": 1.0}, "both distance_mean and distance_std"),
    ("prada-jbda", {"distance_mean": -1.0, "distance_std": 0.1}, "distance_mean must be a positive number"),
]


@pytest.mark.parametrize(("name", "options", "message"), BAD)
def test_bad_options_are_one_line_value_errors(name, options, message, digits):
    with pytest.raises(ValueError, match=message) as err:
        attack_class(name)(seed_set=digits.x_val[:20], **options)
    assert "\n" not in str(err.value)


def test_bad_inputs_are_refused_before_any_query(digits_victim, digits):
    api = PredictionAPI(digits_victim)
    with pytest.raises(ValueError, match="needs natural in-distribution inputs"):
        Interleave(attack=jbda(digits))
    with pytest.raises(ValueError, match="natural inputs have shape"):
        Interleave(attack=jbda(digits), natural=torch.zeros(5, 3))(api, budget=50)
    with pytest.raises(ValueError, match="give its options to it"):
        Sybil(attack=jbda(digits), attack_options={"step": 0.2})
    with pytest.raises(ValueError, match="give its options to it"):
        Interleave(attack=jbda(digits), natural=digits.x_test, clone="lenet")
    with pytest.raises(ValueError, match="one distinct name per box"):
        KeyPool([api, api], names=["a", "a"])
    with pytest.raises(ValueError, match="at least one black box"):
        KeyPool([])
    assert api.total_queries == 0
