"""What the sweep plots draw: the data behind every line (means over seeds, operating points ordered by
strength from the undefended point, percentages), read back from the figures before they are closed."""

from __future__ import annotations

import pytest

import modelsteal.experiment.plots as plots

# accuracy per (defense, strength) -> {budget: (seed 0, seed 1)}, and the per-point utility figures
ACC = {
    ("none", None): {100: (0.50, 0.54), 1000: (0.80, 0.84)},
    ("mad", 0.5): {100: (0.30, 0.34), 1000: (0.60, 0.62)},  # listed before 0.1: the plot must sort
    ("mad", 0.1): {100: (0.45, 0.47), 1000: (0.70, 0.72)},
    ("reverse-sigmoid", 0.3): {100: (0.40, 0.40), 1000: (0.65, 0.67)},
}
L1 = {("none", None): 0.0, ("mad", 0.5): 0.9, ("mad", 0.1): 0.2, ("reverse-sigmoid", 0.3): 0.5}
DEFENDER = {("none", None): 0.97, ("mad", 0.5): 0.90, ("mad", 0.1): 0.96, ("reverse-sigmoid", 0.3): 0.95}


def _records() -> list[dict]:
    out = []
    for (defense, strength), by_budget in ACC.items():
        for budget, accs in by_budget.items():
            for seed, acc in enumerate(accs):
                out.append({"dataset": "digits", "attack": "knockoff", "budget": budget, "seed": seed,
                            "defense": defense, "strength": strength, "attacker_accuracy": acc,
                            "defender_accuracy": DEFENDER[(defense, strength)], "l1_mean": L1[(defense, strength)],
                            "victim_accuracy": 0.98 if seed == 0 else 0.96})
    return out


@pytest.fixture
def drawn(monkeypatch):
    """``{file name: [[(label, xs, ys) per line] per axes]}`` of every figure the plots save."""
    figures: dict[str, list[list[tuple[str, list[float], list[float]]]]] = {}
    real = plots.save_figure

    def capture(fig, path):
        figures[path.name] = [[(ln.get_label(), [float(v) for v in ln.get_xdata()], [float(v) for v in ln.get_ydata()])
                               for ln in ax.get_lines()] for ax in fig.axes]
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", capture)
    return figures


def _mean(pair: tuple[float, float]) -> float:
    return 100 * sum(pair) / len(pair)


def test_tradeoff_lines_start_undefended_and_follow_strength(tmp_path, drawn):
    paths = plots.plot_sweep(_records(), tmp_path)
    assert sorted(p.name for p in paths) == ["budget-curves.png", "fig4-knockoff-b100.png", "fig4-knockoff-b1000.png"]
    for budget in (100, 1000):
        left, right = drawn[f"fig4-knockoff-b{budget}.png"]
        acc = {k: _mean(v[budget]) for k, v in ACC.items()}
        u = ("none", None)
        order = {"mad": [u, ("mad", 0.1), ("mad", 0.5)], "reverse-sigmoid": [u, ("reverse-sigmoid", 0.3)]}
        for ax, util, scale in ((left, L1, 1), (right, DEFENDER, 100)):
            lines = {label: (xs, ys) for label, xs, ys in ax}
            for defense, pts in order.items():
                xs, ys = lines[defense]
                assert xs == pytest.approx([acc[p] for p in pts]), (budget, defense)
                assert ys == pytest.approx([scale * util[p] for p in pts]), (budget, defense)
            assert lines["undefended"] == (pytest.approx([acc[u]]), pytest.approx([scale * util[u]]))


def test_budget_curves_are_seed_means_over_sorted_budgets(tmp_path, drawn):
    plots.plot_budget_curves(_records(), tmp_path)
    (ax,) = drawn["budget-curves.png"]
    lines = {label: (xs, ys) for label, xs, ys in ax}
    expected = {"knockoff" if d == "none" else f"knockoff vs {d} {s:g}": v for (d, s), v in ACC.items()}
    assert set(expected) | {"victim"} == set(lines)
    for label, by_budget in expected.items():
        xs, ys = lines[label]
        assert xs == [100.0, 1000.0]
        assert ys == pytest.approx([_mean(by_budget[100]), _mean(by_budget[1000])]), label
    assert lines["victim"][1] == pytest.approx([97.0, 97.0])  # mean victim accuracy, in percent
