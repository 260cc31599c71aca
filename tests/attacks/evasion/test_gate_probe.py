"""Gate probing (against Adaptive Misinformation's gate): children of accepted inputs get through more often than
fresh images, only accepted answers train the clone, the budget is spent exactly, and one round is the
confidence filter."""

from __future__ import annotations

import pytest
import torch

from modelsteal.attacks import TrainConfig
from modelsteal.attacks.evasion import ConfidenceFilterKnockoff, GateProbe
from modelsteal.blackbox import QueryCounter

SHAPE = (1, 4, 4)


class Gate(QueryCounter):
    """Answers confidently (one-hot on class 1) iff the first value exceeds 0.5, else uniformly: a stand-in for
    AM's gate, whose f serves confident in-distribution inputs and whose f̂ the rest."""

    num_classes, input_shape = 3, SHAPE

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[torch.Tensor] = []

    def query(self, x, *, client="default"):
        self.record(client, len(x))
        self.sent.append(x.clone())
        through = x.flatten(1)[:, 0] > 0.5
        out = torch.full((len(x), 3), 1 / 3)
        out[through] = torch.tensor([0.0, 1.0, 0.0])
        return out


def _pool(n: int = 400) -> torch.Tensor:
    return torch.rand((n, *SHAPE), generator=torch.Generator().manual_seed(0)) * 0.55  # ≈ 9% have x0 > 0.5


TRAIN = TrainConfig(epochs=1, batch_size=32)


def test_children_of_accepted_inputs_get_through_more_often_and_only_they_train_the_clone():
    box = Gate()
    attack = GateProbe(transfer_set=_pool(), min_confidence=0.9, rounds=6, explore=0.25, noise=0.03, clone="mlp",
                       train=TRAIN)
    result = attack(box, budget=300, seed=1)
    info = result.info
    assert result.queries == box.queries() == 300 == info["fresh"] + info["children"]
    sent = torch.cat(box.sent)
    through = sent.flatten(1)[:, 0] > 0.5
    assert info["kept"] == int(through.sum()) == info["fresh_kept"] + info["children_kept"]
    assert (result.transfer_x.flatten(1)[:, 0] > 0.5).all() and len(result.transfer_x) == info["kept"]
    fresh_rate = info["fresh_kept"] / info["fresh"]
    child_rate = info["children_kept"] / info["children"]
    assert fresh_rate < 0.2 and child_rate > 0.3, (fresh_rate, child_rate)  # children sit near accepted inputs
    assert sent.min() >= _pool().min() and sent.max() <= _pool().max()  # children clipped to the pool's range


def test_one_round_is_the_confidence_filter_on_the_same_draw():
    box_a, box_b = Gate(), Gate()
    probe = GateProbe(transfer_set=_pool(), min_confidence=0.9, rounds=1, clone="mlp", train=TRAIN)
    filt = ConfidenceFilterKnockoff(transfer_set=_pool(), min_confidence=0.9, clone="mlp", train=TRAIN)
    a, b = probe(box_a, budget=120, seed=4), filt(box_b, budget=120, seed=4)
    assert torch.equal(torch.cat(box_a.sent), torch.cat(box_b.sent))
    assert torch.equal(a.transfer_x, b.transfer_x) and a.info["kept"] == b.info["kept"] and a.info["children"] == 0


@pytest.mark.parametrize(("option", "value", "words"), [
    ("min_confidence", 1.0, "min_confidence must be a number in [0, 1)"),
    ("rounds", 0, "rounds must be an integer >= 1"),
    ("explore", 1.5, "explore must be a number in [0, 1]"),
    ("noise", 0.0, "noise must be a number > 0"),
])
def test_bad_options_are_one_line_errors(option, value, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        GateProbe(transfer_set=_pool(), **{option: value})
