"""The independent reference models a verifier's null is estimated from (:mod:`modelsteal.ownership.references`):
several architectures and seeds, trained on the data given, cached under a key that holds that data."""

from __future__ import annotations

import pytest
import torch

import modelsteal.ownership.references as references
from modelsteal.ownership.references import REFERENCE_ARCHS, reference_specs, train_references


def test_specs_cycle_through_architectures_with_consecutive_seeds():
    # catches: one architecture for every reference (the null then covers one inductive bias), a repeated seed
    assert reference_specs(4) == [("mlp", 1000), ("lenet", 1001), ("cnn", 1002), ("mlp", 1003)]
    assert reference_specs(2, archs=("cnn",), first_seed=7) == [("cnn", 7), ("cnn", 8)]
    assert len({s for _, s in reference_specs(9)}) == 9 and {a for a, _ in reference_specs(3)} == set(REFERENCE_ARCHS)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="integer >= 1"):
            reference_specs(bad)


def test_cache_is_reused_for_the_same_data_and_missed_for_other_data(digits, digits_victim, tmp_path, monkeypatch):
    # catches: a cache keyed without the training data (a reference trained on other data, e.g. the victim's
    # private data, silently reused), a cache that is never read, references that ignore their own seed
    trained = []
    original = references.train
    monkeypatch.setattr(references, "train", lambda m, x, y, **k: (trained.append(len(x)), original(m, x, y, **k))[1])
    x, y = digits.x_test[:200], digits.y_test[:200]
    first = train_references(x, y, like=digits_victim, count=2, epochs=2, archs=("mlp",), cache_dir=tmp_path)
    assert trained == [200, 200] and len(list(tmp_path.glob("reference-mlp-*.pt"))) == 2
    w0, w1 = (next(m.parameters()) for m in first)
    assert not torch.equal(w0, w1)  # two seeds, two models
    again = train_references(x, y, like=digits_victim, count=2, epochs=2, archs=("mlp",), cache_dir=tmp_path)
    assert trained == [200, 200]  # nothing retrained
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    y2 = y.clone()
    y2[0] = (y2[0] + 1) % 10  # one label changed: other data, other models
    train_references(x, y2, like=digits_victim, count=1, epochs=2, archs=("mlp",), cache_dir=tmp_path)
    assert trained == [200, 200, 200] and len(list(tmp_path.glob("reference-mlp-*.pt"))) == 3
    # the references answer like models of the task (true labels were used), not like untrained ones
    acc = (first[0](digits.x_test[200:]).argmax(1) == digits.y_test[200:]).float().mean()
    assert acc > 0.5
