"""A sweep's victim may be any model file (``victim: {path: …}``): an ONNX export of a checkpoint gives the
checkpoint's results, and a path victim is never trained."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from model_files import export_onnx

from modelsteal.cli.main import main
from modelsteal.models import build_model, save_checkpoint
from modelsteal.training import TrainConfig, train

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export needs it

SWEEP = {
    "name": "path-victim",
    "transfer": {"source": "dataset", "dataset": "digits", "size": 300},
    # the same random LeNet surrogate for both victims (an ONNX file has no layers for MAD's default copy)
    "defenses": [{"name": "none"}, {"name": "mad", "strengths": [0.5], "options": {"surrogate": "lenet"}}],
    "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 2, "lr": 0.05, "momentum": 0.9}}],
    "budgets": [100],
    "eval_size": 200,
}


def _rows(tmp_path, name, victim):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({**SWEEP, "victim": victim}))
    assert main(["--threads", "1", "sweep", str(cfg), "--out", str(tmp_path / name), "--quiet", "--no-plots"]) == 0
    return list(csv.DictReader(open(tmp_path / name / "results.csv")))


def test_an_onnx_victim_gives_its_checkpoints_results(tmp_path, digits, monkeypatch):
    import modelsteal.experiment.victims as victims_module

    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, mean=digits.mean, std=digits.std, seed=0)
    train(model, digits.x_train, digits.y_train, config=TrainConfig(epochs=4, lr=0.05, momentum=0.9),
          generator=torch.Generator().manual_seed(0))
    ckpt = save_checkpoint(model.eval(), tmp_path / "victim.pt", dataset="digits")
    onnx = export_onnx(model, torch.zeros(2, 1, 8, 8), tmp_path / "victim.onnx")

    def no_training(*args, **kwargs):
        raise AssertionError("a path victim was trained")

    monkeypatch.setattr(victims_module, "train_victim", no_training)
    from_file = _rows(tmp_path, "onnx", {"dataset": "digits", "path": str(onnx)})
    from_ckpt = _rows(tmp_path, "ckpt", {"dataset": "digits", "path": str(ckpt)})
    assert len(from_file) == len(from_ckpt) == 2
    for a, b in zip(from_file, from_ckpt, strict=True):
        assert a["defense"] == b["defense"]
        for key in ("victim_accuracy", "defender_accuracy", "l1_mean", "attacker_accuracy"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=0.01), key
    mad = next(r for r in from_file if r["defense"].startswith("mad"))
    assert 0.3 < float(mad["l1_mean"]) <= 0.5 + 1e-6  # MAD spends its budget on the ONNX victim


@pytest.mark.parametrize("change", [{"victim_recipe": "outlier-exposure"},
                                    {"defenses": [{"name": "none"}, {"name": "dp-sgd", "strengths": [1.0]}]}])
def test_a_path_victim_is_not_retrained_by_a_recipe(tmp_path, capsys, change):
    ckpt = save_checkpoint(build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0), tmp_path / "v.pt",
                           dataset="digits")
    victim = {"dataset": "digits", "path": str(ckpt)}
    if "victim_recipe" in change:
        victim["recipe"] = change.pop("victim_recipe")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({**SWEEP, "defenses": [{"name": "none"}], **change, "victim": victim}))
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "victim.path loads a trained model" in err[0], err
    assert not (tmp_path / "o").exists()  # refused before anything ran
