"""The budget ladder, the "first rung reaching" rule, the recommendation rule, the defense syntax."""

from __future__ import annotations

import pytest

from modelsteal.audit import budget_ladder, first_reaching, parse_defense
from modelsteal.audit.analysis import attack_summaries, defense_rows, recommend
from modelsteal.audit.battery import MIN_STEPS, clone_epochs, select


def test_ladder_is_half_decades_ending_at_the_budget():
    assert budget_ladder(10_000) == [100, 316, 1000, 3162, 10_000]
    assert budget_ladder(5000) == [158, 500, 1581, 5000]
    assert budget_ladder(100) == [100]
    assert budget_ladder(316) == [100, 316]


def test_budget_below_the_first_rung_is_refused():
    with pytest.raises(ValueError, match="below the ladder's first rung"):
        budget_ladder(99)


def test_first_reaching_is_the_first_rung_at_or_above_the_threshold():
    budgets, values = [100, 316, 1000, 3162], [0.5, 0.9, 0.85, 0.99]
    assert first_reaching(budgets, values, 0.9) == 316  # equal counts; the later dip does not undo it
    assert first_reaching(budgets, values, 0.95) == 3162
    assert first_reaching(budgets, values, 0.999) is None
    assert first_reaching(list(reversed(budgets)), list(reversed(values)), 0.6) == 316  # order-free


def test_small_rungs_train_for_at_least_min_steps():
    assert clone_epochs(5000) == 10  # 79 batches of 64: the default 10 epochs are 790 steps
    assert clone_epochs(64) == MIN_STEPS  # one batch per epoch
    assert clone_epochs(158) * 3 >= MIN_STEPS > (clone_epochs(158) - 1) * 3  # 3 batches per epoch


def _rec(attack, budget, acc, *, defense="none", strength=None, benign=0.95, l1=0.0):
    return {"attack": attack, "budget": budget, "queries": budget, "clone_accuracy": acc, "fidelity": acc,
            "defense": defense, "strength": strength, "defender_accuracy": benign, "l1_mean": l1}


def test_not_reached_and_money():
    recs = [_rec("a", 100, 0.80), _rec("a", 316, 0.84), _rec("a", 1000, 0.91),
            _rec("b", 100, 0.70), _rec("b", 316, 0.70), _rec("b", 1000, 0.75)]
    a, b = attack_summaries(recs, attacks=["a", "b"], victim_accuracy=0.95, price_per_query=0.5)
    assert a["queries_to_90"] == 1000 and a["money_to_90"] == 500.0
    assert b["queries_to_90"] is None and b["money_to_90"] is None
    assert [c["budget"] for c in a["curve"]] == [100, 316, 1000]


def test_ninety_percent_uses_the_victims_accuracy_not_one():
    recs = [_rec("a", 100, 0.80), _rec("a", 316, 0.86), _rec("a", 1000, 0.91)]
    (a,) = attack_summaries(recs, attacks=["a"], victim_accuracy=0.95, price_per_query=None)
    assert a["queries_to_90"] == 316  # 0.86 >= 0.9 * 0.95 = 0.855 (against 1.0 it would be 1000)
    assert a["queries_to_95"] == 1000  # 0.91 >= 0.9025
    assert a["money_to_90"] is None
    (a,) = attack_summaries(recs, attacks=["a"], victim_accuracy=1.0, price_per_query=2.0)
    assert a["queries_to_90"] == 1000 and a["money_to_90"] == 2000.0 and a["queries_to_95"] is None


def test_recommendation_minimises_the_best_clone_under_the_constraint():
    recs = [_rec("k", 1000, 0.90), _rec("j", 1000, 0.80),
            _rec("k", 1000, 0.60, defense="mad", strength=0.5, benign=0.945, l1=0.5),
            _rec("j", 1000, 0.70, defense="mad", strength=0.5, benign=0.945, l1=0.5),
            _rec("k", 1000, 0.30, defense="mad", strength=1.0, benign=0.90, l1=1.0),  # loses 5 points
            _rec("j", 1000, 0.20, defense="mad", strength=1.0, benign=0.90, l1=1.0)]
    rows = defense_rows(recs, top=1000, victim_accuracy=0.95, attackers=["k", "j"])
    assert [(r["defense"], r["strength"]) for r in rows] == [("none", None), ("mad", 0.5), ("mad", 1.0)]
    mad05 = rows[1]
    assert mad05["best_attacker"] == "j" and mad05["best_clone"] == 0.70  # the best clone, not the first
    assert mad05["accuracy_lost"] == pytest.approx(0.005)
    best = recommend(rows, max_accuracy_lost=0.01)
    assert (best["defense"], best["strength"]) == ("mad", 0.5)
    best = recommend(rows, max_accuracy_lost=0.05)
    assert (best["defense"], best["strength"]) == ("mad", 1.0)
    assert recommend(rows, max_accuracy_lost=0.001)["defense"] == "none"


def test_defense_syntax_and_default_strengths():
    assert parse_defense("mad").strengths == [0.1, 0.5, 1.0]
    assert parse_defense("reverse-sigmoid:0.2,0.4").strengths == [0.2, 0.4]
    assert parse_defense("label-only").strengths == [None]
    with pytest.raises(ValueError, match="unknown defense 'nope'"):
        parse_defense("nope")
    with pytest.raises(ValueError, match="strengths must be numbers"):
        parse_defense("mad:big")


def test_battery_selection_by_label():
    labels = [e.label for e in select(None, images=True)]
    assert labels[:3] == ["knockoff-random", "knockoff-adaptive", "knockoff-argmax"]
    assert {"jbda", "jb-top-k", "jbda-label-only"} <= set(labels)
    assert not any(e.images for e in select(None, images=False))
    with pytest.raises(ValueError, match="unknown attacker"):
        select(["knockof"], images=True)
