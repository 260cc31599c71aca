"""One sweep point's record (:func:`~modelsteal.experiment.points.run_point`): its fidelity is agreement with
the *undefended* victim, not accuracy against labels nor agreement with the defended answers."""

from __future__ import annotations

import modelsteal.experiment.points as points
from modelsteal import PredictionAPI
from modelsteal.experiment.config import AttackConfig, DefenseConfig, SweepConfig, TransferConfig, VictimConfig
from modelsteal.experiment.plan import plan
from modelsteal.models import save_checkpoint
from modelsteal.training import predict_logits


def test_a_sweep_rows_fidelity_is_agreement_with_the_undefended_victim(digits_victim, digits, monkeypatch, tmp_path):
    """MAD at ε = 2 moves every answer to a vertex, so the clone learns a poisoned labelling: its agreement with
    the clean victim, its test accuracy and its agreement with the defended answers are three different
    numbers, and the row that :func:`~modelsteal.experiment.points.run_point` makes must report the first."""
    clones = []
    real_build = points.build_attack

    def keep_clone(*args, **kwargs):
        attack = real_build(*args, **kwargs)

        def run(api, *, budget, seed):
            result = attack(api, budget=budget, seed=seed)
            clones.append(result.clone)
            return result

        return run

    monkeypatch.setattr(points, "build_attack", keep_clone)
    checkpoint = tmp_path / "victim.pt"
    save_checkpoint(digits_victim, checkpoint, dataset="digits")
    cfg = SweepConfig(
        victim=VictimConfig(dataset="digits", arch="mlp", checkpoint=str(checkpoint)), transfer=TransferConfig(),
        defenses=[DefenseConfig(name="mad", strengths=[2.0])],
        attacks=[AttackConfig(name="knockoff", clone="mlp", train={"epochs": 4, "lr": 0.05, "momentum": 0.9})],
        budgets=[300], device="cpu",
    )
    (point,) = plan(cfg)
    rec = points.run_point(point, cache=points.PointCache(out_dir=tmp_path, device="cpu"))
    (clone,) = clones
    pred = predict_logits(clone, digits.x_test).argmax(1)
    clean = PredictionAPI(digits_victim).posteriors(digits.x_test).argmax(1)
    defended = PredictionAPI(digits_victim, defense=points.point_defense(cfg.defenses[0], 2.0)).query(
        digits.x_test).argmax(1)
    agree_clean = float((pred == clean).float().mean())
    accuracy = float((pred == digits.y_test).float().mean())
    agree_defended = float((pred == defended).float().mean())
    assert rec["fidelity"] == agree_clean
    assert rec["attacker_accuracy"] == accuracy
    assert len({round(agree_clean, 6), round(accuracy, 6), round(agree_defended, 6)}) == 3, (
        agree_clean, accuracy, agree_defended)
