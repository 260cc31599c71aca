"""Sweep points stay cached when a config's strength list changes; --cached-only; white-box MAD angles."""

import csv

import torch
import yaml

from modelsteal.cli.main import main
from modelsteal.experiment.angles import online_angles
from modelsteal.models import build_model

TINY = {
    "name": "tiny",
    "victim": {"dataset": "digits", "arch": "mlp", "epochs": 3, "lr": 0.05, "momentum": 0.9},
    "transfer": {"source": "dataset", "classes": [5, 6, 7, 8, 9]},
    "defenses": [{"name": "mad", "strengths": [0.5, 1.0], "options": {"norm": "l1"}}],
    "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 2, "lr": 0.05, "momentum": 0.9}}],
    "budgets": [100],
}


def test_points_survive_a_new_strength_list_and_cached_only_computes_nothing(tmp_path):
    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--out", str(out), "--quiet", "--no-plots"]) == 0
    points = {p.name: p.stat().st_mtime_ns for p in out.glob("points/*.json")}
    assert len(points) == 2
    # another list containing one of the finished strengths: only the new strength is computed
    grown = dict(TINY, defenses=[dict(TINY["defenses"][0], strengths=[1.0, 1.5])])
    cfg2 = tmp_path / "b.yaml"
    cfg2.write_text(yaml.safe_dump(grown))
    assert main(["sweep", str(cfg2), "--out", str(out), "--quiet", "--no-plots"]) == 0
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("points/*.json")}
    assert len(after) == 3 and all(after[k] == v for k, v in points.items())
    # --cached-only on a config with an unfinished point reports the finished ones and adds nothing
    partial = dict(TINY, defenses=[dict(TINY["defenses"][0], strengths=[0.5, 2.0])])
    cfg3 = tmp_path / "c.yaml"
    cfg3.write_text(yaml.safe_dump(partial))
    assert main(["sweep", str(cfg3), "--out", str(out), "--cached-only", "--no-plots"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [float(r["strength"]) for r in rows] == [0.5]
    assert len(list(out.glob("points/*.json"))) == 3


def test_white_box_mad_deviates_the_gradient_and_epsilon_zero_does_not():
    victim = build_model("mlp", input_shape=(1, 8, 8), num_classes=4, seed=1).eval()
    pool, x_test = torch.rand(40, 1, 8, 8), torch.rand(20, 1, 8, 8)
    y_test = torch.randint(0, 4, (20,))
    none = online_angles(victim, pool, epsilon=0.0, queries=10, x_test=x_test, y_test=y_test, clone="mlp")
    assert torch.allclose(none.angles, torch.zeros(10), atol=1e-3)
    mad = online_angles(victim, pool, epsilon=1.0, queries=50, x_test=x_test, y_test=y_test, clone="mlp",
                        eval_every=20)
    assert len(mad.angles) == 50 and float(mad.angles.mean()) > 20
    assert mad.loss_steps == [0, 20, 40, 50] and len(mad.test_loss) == 4
    s = mad.summary()
    assert s["queries"] == 50 and 0 <= s["frac_over_90"] <= 1
