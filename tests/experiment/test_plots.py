"""Sweep plots: the Fig. 4 trade-off PNGs per (attack, budget) and the Fig. A3 budget curves."""

from modelsteal.experiment.plots import plot_budget_curves, plot_sweep


def _records(budgets: list[int], seeds: list[int]) -> list[dict]:
    out = []
    for b in budgets:
        for seed in seeds:
            for defense, strength, drop in (("none", None, 0.0), ("mad", 0.5, 0.2)):
                out.append({"attack": "knockoff", "budget": b, "seed": seed, "defense": defense, "strength": strength,
                            "attacker_accuracy": min(0.9, b / 1000) - drop + 0.01 * seed,
                            "defender_accuracy": 0.97, "l1_mean": 0.0 if strength is None else strength,
                            "victim_accuracy": 0.98})
    return out


def test_budget_curves_need_two_budgets(tmp_path):
    assert plot_budget_curves(_records([500], [0, 1]), tmp_path) == []
    assert not (tmp_path / "budget-curves.png").exists()
    paths = plot_budget_curves(_records([100, 500, 1000], [0, 1]), tmp_path)
    assert paths == [tmp_path / "budget-curves.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_sweep_writes_one_tradeoff_per_budget_and_the_budget_curves(tmp_path):
    paths = plot_sweep(_records([100, 1000], [0]), tmp_path)
    assert sorted(p.name for p in paths) == ["budget-curves.png", "fig4-knockoff-b100.png", "fig4-knockoff-b1000.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_plot_angles_writes_the_histogram_and_the_loss_curve(tmp_path):
    import torch

    from modelsteal.experiment.angles import AngleTrace, plot_angles

    traces = [AngleTrace(epsilon=e, angles=torch.rand(50) * 90 * (1 + e), loss_steps=[0, 10, 20],
                         test_loss=[2.3, 2.2 + e, 2.1 + 2 * e]) for e in (0.0, 1.0)]
    paths = plot_angles(traces, tmp_path, title="digits")
    assert [p.name for p in paths] == ["fig6-angles.png", "fig7-test-loss.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
