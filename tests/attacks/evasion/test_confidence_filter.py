"""Knockoff with confidence filtering (AM's Sec. 6 attacker): keeps exactly the answers at or above the
threshold, spends the whole budget, trains only on what it kept, and is plain Knockoff at threshold 0."""

from __future__ import annotations

import math

import pytest
import torch
from cli_helpers import one_line_error
from torch import Tensor

from modelsteal import PredictionAPI
from modelsteal.attacks import KnockoffNets, TrainConfig, attack_class
from modelsteal.attacks.evasion import ConfidenceFilterKnockoff
from modelsteal.models import build_model, save_checkpoint
from modelsteal.training import predict_logits

K = 10
FAST = TrainConfig(epochs=6, lr=0.05, momentum=0.9)
THRESHOLD = 0.6


class FixedPosteriors:
    """A black box that answers each image of ``pool`` with its row of ``table``; counts every row asked."""

    input_shape = (1, 4, 4)
    num_classes = K

    def __init__(self, pool: Tensor, table: Tensor) -> None:
        self.pool, self.table, self.rows = pool.flatten(1), table, 0

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        match = (x.flatten(1)[:, None, :] == self.pool[None]).all(dim=2)
        assert bool((match.sum(dim=1) == 1).all()), "queried an image outside the pool"
        self.rows += len(x)
        return self.table[match.float().argmax(dim=1)]


@pytest.fixture(scope="module")
def world() -> tuple[Tensor, Tensor, Tensor]:
    """200 images whose top-1 confidence we set: class-0 images answered with confidence ≥ THRESHOLD
    (ten of them exactly at it), images of classes 1..9 answered below it. An image of class k is noise with
    pixel k lit, so a clone can learn the classes it is shown."""
    g = torch.Generator().manual_seed(0)
    n = 200
    top = torch.cat([torch.zeros(80, dtype=torch.long), torch.randint(1, K, (120,), generator=g)])
    conf = torch.cat([
        torch.full((10,), THRESHOLD),  # exactly at the threshold: kept
        THRESHOLD + 0.35 * torch.rand(70, generator=g),
        0.15 + (THRESHOLD - 0.16) * torch.rand(120, generator=g),  # all below it
    ])
    table = ((1 - conf) / (K - 1))[:, None].repeat(1, K)
    table[torch.arange(n), top] = conf
    pool = 0.3 * torch.rand(n, 1, 4, 4, generator=g)
    pool.view(n, -1)[torch.arange(n), top] = 1.0
    return pool, table.float(), top


def _ids(rows: Tensor, pool: Tensor) -> Tensor:
    """The pool index of each row."""
    return (rows.flatten(1)[:, None, :] == pool.flatten(1)[None]).all(dim=2).float().argmax(dim=1)


def test_keeps_exactly_the_answers_at_or_above_the_threshold_and_reports_the_count(world):
    pool, table, _ = world
    bb = FixedPosteriors(pool, table)
    attack = ConfidenceFilterKnockoff(transfer_set=pool, min_confidence=THRESHOLD, clone="mlp", train=FAST)
    result = attack(bb, budget=len(pool), seed=0)
    expected = {i for i in range(len(pool)) if float(table[i].max()) >= THRESHOLD}
    assert len(expected) == 80
    ids = _ids(result.transfer_x, pool)
    assert set(ids.tolist()) == expected and len(ids) == 80
    assert torch.equal(result.transfer_y, table[ids])  # each kept image with its own answer
    assert result.info["kept"] == 80 and result.info["answers"] == 200
    assert result.info["kept_fraction"] == pytest.approx(0.4) and result.info["min_confidence"] == THRESHOLD


def test_spends_exactly_the_budget_counting_the_dropped_answers(world):
    pool, table, _ = world
    bb = FixedPosteriors(pool, table)
    result = ConfidenceFilterKnockoff(transfer_set=pool, min_confidence=THRESHOLD, clone="mlp", train=FAST)(
        bb, budget=150, seed=1)
    assert result.queries == 150 == bb.rows == result.info["answers"]
    assert 0 < result.info["kept"] < 150 and len(result.transfer_x) == result.info["kept"]


def test_the_clone_learns_only_from_the_kept_rows(world):
    pool, table, top = world
    train = TrainConfig(epochs=30, lr=0.1, momentum=0.9)
    filtered = ConfidenceFilterKnockoff(transfer_set=pool, min_confidence=THRESHOLD, clone="mlp", train=train)(
        FixedPosteriors(pool, table), budget=len(pool), seed=0)
    plain = KnockoffNets(transfer_set=pool, clone="mlp", train=train)(FixedPosteriors(pool, table),
                                                                      budget=len(pool), seed=0)

    def share_of_zero(clone: torch.nn.Module) -> float:
        return float((predict_logits(clone, pool).argmax(dim=1) == 0).float().mean())

    assert share_of_zero(filtered.clone) > 0.95  # every kept answer says class 0
    assert share_of_zero(plain.clone) < 0.7  # the same data unfiltered teaches classes 1..9 too (0.4 are 0)
    assert (top == 0).float().mean() == 0.4


def test_threshold_zero_is_plain_knockoff_bit_for_bit(digits_victim, digits):
    pool = digits.x_train[:300]
    a = ConfidenceFilterKnockoff(transfer_set=pool, min_confidence=0, clone="mlp", train=FAST)(
        PredictionAPI(digits_victim), budget=120, seed=5)
    b = KnockoffNets(transfer_set=pool, clone="mlp", train=FAST)(PredictionAPI(digits_victim), budget=120, seed=5)
    assert a.info["kept"] == 120 and a.queries == b.queries == 120
    assert torch.equal(a.transfer_x, b.transfer_x) and torch.equal(a.transfer_y, b.transfer_y)
    for p, q in zip(a.clone.state_dict().values(), b.clone.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_nothing_kept_leaves_the_seeded_clone_untrained(world):
    pool, table, _ = world
    bb = FixedPosteriors(pool, table)
    result = ConfidenceFilterKnockoff(transfer_set=pool, min_confidence=0.99, clone="mlp", train=FAST)(
        bb, budget=50, seed=0)
    assert result.queries == 50 == bb.rows and result.info["kept"] == 0 and result.info["final_loss"] is None
    fresh = ConfidenceFilterKnockoff(transfer_set=pool, min_confidence=0.99, clone="mlp")
    g = torch.Generator().manual_seed(0)
    torch.randperm(len(pool), generator=g)  # what run() drew before building the clone
    init = fresh.make_clone(bb, generator=g)
    for p, q in zip(result.clone.state_dict().values(), init.state_dict().values(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, math.nan, True, "high"])
def test_a_threshold_outside_zero_one_is_a_one_line_error(world, bad):
    with pytest.raises(ValueError, match=r"min_confidence must be a number in \[0, 1\), got ") as err:
        ConfidenceFilterKnockoff(transfer_set=world[0], min_confidence=bad)
    assert "\n" not in str(err.value)


def test_registered_and_a_bad_threshold_is_one_line_on_the_command_line(tmp_path, capsys):
    assert attack_class("knockoff-filter") is ConfidenceFilterKnockoff
    ckpt = tmp_path / "v.pt"
    save_checkpoint(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0), ckpt, dataset="digits")
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--attack", "knockoff-filter",
                            "--attack-option", "min_confidence=1.5"], "min_confidence must be a number in [0, 1)")


def test_a_sweep_reports_how_many_answers_the_filter_kept(tmp_path):
    from modelsteal.experiment import run_sweep
    from modelsteal.experiment.config import parse_config

    cfg = parse_config({
        "name": "tiny-filter",
        "victim": {"dataset": "digits", "arch": "mlp", "epochs": 3, "lr": 0.05, "momentum": 0.9},
        "transfer": {"source": "dataset"},
        "defenses": [{"name": "none"}],
        "attacks": [{"name": "knockoff-filter", "clone": "mlp", "options": {"min_confidence": 0.5},
                     "train": {"epochs": 1, "lr": 0.05, "momentum": 0.9}}],
        "budgets": [120], "seeds": [0],
    })
    (rec,) = run_sweep(cfg, out_dir=tmp_path, progress=False, plots=False)
    assert rec["queries"] == 120 and 0 < rec["kept"] < 120  # a partial selection, every query still spent
    assert rec["kept_fraction"] == pytest.approx(rec["kept"] / 120)
    assert "kept" in (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
