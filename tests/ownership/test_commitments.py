"""Commitments bind a claim to evidence fixed at training time (Liu et al., USENIX Security 2024): a trigger set,
DAWN key or private set chosen later is refused; and the false-claim attack they stop does what it should."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from modelsteal import PredictionAPI
from modelsteal.defenses.dawn import DAWN
from modelsteal.defenses.dawn import key_fingerprint as dawn_fingerprint
from modelsteal.models import build_model
from modelsteal.ownership import make_verifier
from modelsteal.ownership.commitments import (
    CommitmentError,
    check_published,
    commitment_digest,
    private_data_commitment,
    trigger_commitment,
)
from modelsteal.ownership.dawn import DAWNVerifier
from modelsteal.ownership.false_claims import craft_false_triggers
from modelsteal.ownership.watermark import EWEVerifier
from modelsteal.training import TrainConfig, train, watermark_rate


@pytest.fixture(scope="module")
def record(digits):
    triggers = digits.x_train[digits.y_train == 1][:40].clone()
    triggers[:, :, :3, :3] = 1.0
    return {"triggers": triggers, "target_class": 7, "null_rate_estimate": 0.0}


def test_commitment_hashes_change_with_any_part_of_the_evidence(digits, record):
    # catches: a hash of the shape only, the target class left out, an order-dependent digest
    t = record["triggers"]
    base = trigger_commitment(t, 7)
    moved = t.clone()
    moved[0, 0, 5, 5] += 1 / 255
    assert trigger_commitment(t.clone(), 7) == base
    assert base != trigger_commitment(moved, 7) and base != trigger_commitment(t, 3)
    x, y = digits.x_train[:100], digits.y_train[:100]
    relabelled = y.clone()
    relabelled[0] = (relabelled[0] + 1) % 10
    assert private_data_commitment(x, y) != private_data_commitment(x, relabelled)
    c = {"private_data": "a" * 64, "ewe_triggers": "b" * 64}
    assert commitment_digest(c) == commitment_digest(dict(reversed(list(c.items()))))
    check_published(c, commitment_digest(c).upper())
    with pytest.raises(CommitmentError, match="not the published"):
        check_published(c, commitment_digest({**c, "dawn_key": "x"}))


def test_each_verifier_refuses_evidence_that_does_not_match_its_commitment(digits, digits_victim, record):
    commits = {"ewe_triggers": trigger_commitment(record["triggers"], 7), "dawn_key": dawn_fingerprint("real key"),
               "private_data": private_data_commitment(digits.x_train, digits.y_train)}
    ok = EWEVerifier(watermark=record).commit(commits).fit(digits_victim)
    assert ok.commitment_checked and ok.verify(digits_victim, budget=40).details["commitment"] == "checked"
    forged = {**record, "triggers": record["triggers"].flip(-1)}
    with pytest.raises(CommitmentError, match="EWE trigger set does not match") as err:
        EWEVerifier(watermark=forged).commit(commits).fit(digits_victim)
    assert "\n" not in str(err.value)
    unbound = EWEVerifier(watermark=forged).fit(digits_victim)  # no commitment: accepted, and says so
    assert unbound.verify(digits_victim, budget=40).details["commitment"].startswith("none")

    rogue = DAWN(rate=0.5, key="another key")
    PredictionAPI(digits_victim, defense=rogue).query(digits.x_test[:100])
    with pytest.raises(CommitmentError, match="DAWN records' key"):
        DAWNVerifier.from_defense(rogue).commit(commits).fit(digits_victim)

    di = make_verifier("dataset-inference", samples=10, fit_samples=20, directions=2, steps=5).commit(commits)
    other = replace(digits, x_train=digits.x_train[1:], y_train=digits.y_train[1:])  # one sample short
    with pytest.raises(CommitmentError, match="private data"):
        di.fit(digits_victim, data=other)
    assert not di.fitted
    di.fit(digits_victim, data=digits)
    assert di.commitment_checked


def test_crafted_triggers_transfer_to_an_independent_model(digits, record):
    # the attack the commitments stop: targeted PGD on surrogates, within the L-inf ball, toward the target
    def fit(seed, idx):
        m = build_model("mlp", input_shape=digits.input_shape, num_classes=10, mean=digits.mean, std=digits.std,
                        seed=seed)
        train(m, digits.x_train[idx], digits.y_train[idx], config=TrainConfig(epochs=30, lr=0.05, momentum=0.9),
              generator=torch.Generator().manual_seed(seed))
        return m.eval()

    idx = torch.arange(len(digits.x_train))
    surrogates = [fit(1, idx[0::3]), fit(2, idx[1::3])]
    suspect = fit(3, idx[2::3])
    x = digits.x_test[digits.y_test == 1][:30]
    forged = craft_false_triggers(surrogates, x, target=7, eps=0.3, steps=30)
    assert float((forged - x).abs().max()) <= 0.3 + 1e-6 and float(forged.min()) >= 0 and float(forged.max()) <= 1
    assert min(watermark_rate(m, forged, 7) for m in surrogates) >= 0.8  # catches: a step up the target's loss
    assert watermark_rate(suspect, x, 7) == 0.0
    assert watermark_rate(suspect, forged, 7) >= 0.3  # it transfers to a model the accuser never touched
