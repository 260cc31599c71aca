"""Model files of every format answer as the modelsteal checkpoint they were made from, through the one loader.

The files are made from one LeNet trained on digits (:mod:`model_files`): ONNX (``torch.onnx.export``),
TorchScript, ``torch.export``; a scikit-learn pipeline and a ``python:module:factory`` module with ``--weights``
stand beside them. Every spec transformation (range, normalisation, channel order, probabilities) is checked by
a file that needs it and by the answer that changes when it is left out or applied twice.
"""

from __future__ import annotations

import logging

import pytest
import torch
from model_files import export_onnx, export_program, trained_lenet, write_all

from modelsteal import PredictionAPI
from modelsteal.defenses import make_defense
from modelsteal.models import load_checkpoint
from modelsteal.models.formats import ModelSpec, load_model, sniff_format

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export needs it

TOL = 1e-5


@pytest.fixture(scope="module")
def lenet(digits):
    return trained_lenet(digits)


@pytest.fixture(scope="module")
def files(lenet, tmp_path_factory):
    return write_all(lenet, tmp_path_factory.mktemp("files"))


def _posteriors(model, x):
    with torch.no_grad():
        return torch.softmax(model(x), dim=1)


def _pixel_spec(digits, **over):
    spec = {"range": (0, 255), "mean": tuple(255 * m for m in digits.mean), "std": tuple(255 * s for s in digits.std),
            "layout": "nhwc", "outputs": "probs"}
    return ModelSpec(**{**spec, **over})


@pytest.mark.parametrize("fmt,spec", [("onnx", None), ("torchscript", ModelSpec(input_shape=(1, 8, 8))),
                                      ("export", None)])
def test_a_model_file_answers_as_its_checkpoint(fmt, spec, files, digits):
    ckpt, _ = load_checkpoint(files["checkpoint"])
    loaded = load_model(files[fmt], spec=spec)
    assert loaded.format == fmt == sniff_format(str(files[fmt]))
    assert loaded.meta["input_shape"] == [1, 8, 8] and loaded.meta["num_classes"] == 10
    assert loaded.spec.outputs == "logits"
    ref = _posteriors(ckpt, digits.x_test)
    assert (ref.argmax(1) == digits.y_test).float().mean() > 0.5  # a trained model: the answers carry information
    api = PredictionAPI(loaded.model)
    got = api.query(digits.x_test)
    assert (got - ref).abs().max().item() <= TOL
    assert api.queries() == len(digits.x_test)
    assert loaded.gradients == (fmt != "onnx")
    assert not loaded.features  # compiled or foreign graphs: no penultimate features to hook


def test_the_spec_scales_normalises_permutes_and_takes_probabilities_once(files, digits):
    ckpt, _ = load_checkpoint(files["checkpoint"])
    ref = _posteriors(ckpt, digits.x_test)
    loaded = load_model(files["raw-onnx"], spec=_pixel_spec(digits))
    assert loaded.meta["input_shape"] == [1, 8, 8]  # the file declares (N, 8, 8, 1); nhwc reorders it
    assert (_posteriors(loaded.model, digits.x_test) - ref).abs().max().item() <= TOL
    # each step left out changes the answers (so the match above is no accident)
    for wrong in (_pixel_spec(digits, range=(0, 1)),  # pixels not scaled to [0, 255]
                  _pixel_spec(digits, mean=(0.0,), std=(1.0,))):  # normalisation forgotten
        other = _posteriors(load_model(files["raw-onnx"], spec=wrong).model, digits.x_test)
        assert (other - ref).abs().max().item() > 0.1
    # probabilities taken as logits would be softmaxed twice: refused at load, and auto tells them apart
    with pytest.raises(ValueError, match="softmax would be applied twice"):
        load_model(files["raw-onnx"], spec=_pixel_spec(digits, outputs="logits"))
    auto = load_model(files["raw-onnx"], spec=_pixel_spec(digits, outputs="auto"))
    assert auto.spec.outputs == "probs"
    assert (_posteriors(auto.model, digits.x_test) - ref).abs().max().item() <= TOL
    # channels first while the file takes channels last: the declared shape disagrees, one line
    with pytest.raises(ValueError, match=r"declares \(8, 8, 1\)"):
        load_model(files["raw-onnx"], spec=_pixel_spec(digits, layout="nchw", input_shape=(1, 8, 8)))


def test_normalisation_applied_twice_changes_the_answers(files, digits):
    """The exported checkpoint normalises inside; a --mean/--std on top would normalise twice."""
    ckpt, _ = load_checkpoint(files["checkpoint"])
    twice = load_model(files["onnx"], spec=ModelSpec(mean=digits.mean, std=digits.std))
    assert (_posteriors(twice.model, digits.x_test) - _posteriors(ckpt, digits.x_test)).abs().max().item() > 0.1


def test_channel_order_matters_on_three_channels(tmp_path):
    """On RGB inputs an NHWC file given NCHW would see its channels mixed with its columns."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)).eval()

    class NHWC(torch.nn.Module):
        def forward(self, x):
            return net(x.permute(0, 3, 1, 2))

    path = export_program(NHWC(), torch.zeros(2, 8, 8, 3), tmp_path / "rgb.pt2")
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    loaded = load_model(path, spec=ModelSpec(layout="nhwc"))
    assert loaded.meta["input_shape"] == [3, 8, 8]
    with torch.no_grad():
        assert (loaded.model(x) - net(x)).abs().max().item() <= TOL


def test_a_fixed_batch_program_answers_any_batch(lenet, tmp_path, digits):
    path = export_program(lenet, torch.zeros(4, 1, 8, 8), tmp_path / "fixed.pt2", dynamic_batch=False)
    loaded = load_model(path)
    x = digits.x_test[:10]  # 4 + 4 + 2 padded to 4
    assert (_posteriors(loaded.model, x) - _posteriors(lenet, x)).abs().max().item() <= TOL
    onnx_path = export_onnx(lenet, torch.zeros(3, 1, 8, 8), tmp_path / "fixed.onnx", dynamic_batch=False)
    assert (_posteriors(load_model(onnx_path).model, x) - _posteriors(lenet, x)).abs().max().item() <= TOL


def test_a_scikit_learn_pipeline_answers_its_predict_proba(tmp_path, digits):
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    flat = digits.x_train.reshape(len(digits.x_train), -1).numpy()
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(flat, digits.y_train.numpy())
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    loaded = load_model(path, spec=ModelSpec(input_shape=(1, 8, 8), dataset="digits"))
    assert loaded.format == "sklearn" and loaded.spec.outputs == "probs"
    assert loaded.meta["classes"] == [str(c) for c in range(10)]
    assert not loaded.gradients and not loaded.features
    want = torch.as_tensor(pipe.predict_proba(digits.x_test.reshape(len(digits.x_test), -1).numpy())).float()
    got = PredictionAPI(loaded.model).query(digits.x_test)
    assert (got - want).abs().max().item() <= TOL
    assert (got.argmax(1) == digits.y_test).float().mean() > 0.8
    tabular = load_model(path)  # without a spec: the estimator's 64 features
    assert tabular.meta["input_shape"] == [64]
    with pytest.raises(ValueError, match="fitted on 64 features"):
        load_model(path, spec=ModelSpec(input_shape=(1, 28, 28)))


def test_a_python_factory_with_weights(lenet, tmp_path, monkeypatch, digits):
    (tmp_path / "my_nets.py").write_text(
        "from modelsteal.models import build_model\n\n"
        "def make(num_classes=10):\n"
        "    return build_model('lenet', input_shape=(1, 8, 8), num_classes=num_classes, mean=[0.305437833070755],"
        " std=[0.37591931223869324])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "w.pt"
    torch.save(lenet.state_dict(), weights)
    loaded = load_model("python:my_nets:make", weights=weights)
    assert loaded.format == "python" and loaded.gradients and loaded.features
    ref = _posteriors(lenet, digits.x_test)
    assert (_posteriors(loaded.model, digits.x_test) - ref).abs().max().item() <= TOL
    fresh = load_model("python:my_nets:make")  # its own random initialisation: not the trained model
    assert (_posteriors(fresh.model, digits.x_test) - ref).abs().max().item() > 0.1
    torch.save({"head.weight": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit python:my_nets:make"):
        load_model("python:my_nets:make", weights=tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="cannot import nowhere_module"):
        load_model("python:nowhere_module:make")


def test_a_spec_file_beside_the_model_is_read(files, tmp_path, digits):
    import shutil

    target = tmp_path / "victim.ts"
    shutil.copy(files["torchscript"], target)
    with pytest.raises(ValueError, match="does not record its input shape"):
        load_model(target)
    spec = tmp_path / "victim.ts.yaml"
    spec.write_text("input_shape: [1, 8, 8]\ndataset: digits\nclasses: [a,b,c,d,e,f,g,h,i,j]\n")
    loaded = load_model(target)
    assert loaded.meta["dataset"] == "digits" and loaded.model.class_names[0] == "a"
    (tmp_path / "victim.ts.yaml").write_text("input_shape: [1, 8, 8]\nclasses: [a, b, c]\n")
    with pytest.raises(ValueError, match="answers 10 classes but the spec names 3"):
        load_model(target)
    (tmp_path / "victim.ts.yaml").write_text("input_shap: [1, 8, 8]\n")
    with pytest.raises(ValueError, match="unknown key.*input_shap"):
        load_model(target)


def test_a_wrong_input_shape_fails_at_load(files):
    with pytest.raises(ValueError, match="fails on a batch of inputs of shape"):
        load_model(files["torchscript"], spec=ModelSpec(input_shape=(1, 28, 28)))
    with pytest.raises(ValueError, match=r"the spec says inputs \(1, 28, 28\), but .* declares \(1, 8, 8\)"):
        load_model(files["onnx"], spec=ModelSpec(input_shape=(1, 28, 28)))
    with pytest.raises(ValueError, match="--mean does not apply"):
        load_model(files["checkpoint"], spec=ModelSpec(mean=(0.5,), std=(0.5,)))


def test_a_file_of_unknown_format_is_one_line(tmp_path):
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x00\x01 not a model at all" * 10)
    with pytest.raises(ValueError, match="cannot tell the format of .*pass --format NAME"):
        load_model(junk)


def test_mad_on_an_onnx_victim_uses_a_random_surrogate(files, digits, caplog):
    """MAD cannot copy an ONNX victim: it announces a random LeNet surrogate in one line, and its answers are then
    those of MAD on the torch victim with that same surrogate (the victim's posteriors agree to 1e-5)."""
    ckpt, _ = load_checkpoint(files["checkpoint"])
    onnx = load_model(files["onnx"]).model
    x = digits.x_test[:64]
    with caplog.at_level(logging.WARNING, logger="modelsteal"):
        api = PredictionAPI(onnx, defense=make_defense("mad", strength=0.5))
    notes = [r.getMessage() for r in caplog.records if r.name == "modelsteal"]
    assert len(notes) == 1 and "randomly initialised lenet" in notes[0] and "\n" not in notes[0]
    defended = api.query(x)
    undefended = PredictionAPI(onnx).query(x)
    l1 = (defended - undefended).abs().sum(1)
    assert l1.max().item() <= 0.5 + 1e-5 and l1.mean().item() > 0.3  # MAD spends its budget
    torch_api = PredictionAPI(ckpt, defense=make_defense("mad", strength=0.5, surrogate="lenet"))
    assert (torch_api.query(x) - defended).abs().max().item() <= 1e-4


def test_detectors_that_read_features_or_gradients_say_so(files, digits):
    from modelsteal.detectors import make_detector

    onnx = load_model(files["onnx"]).model
    with pytest.raises(ValueError, match="penultimate features.*an onnx model.*features=FILE"):
        make_detector("mahalanobis").fit(onnx, digits)
    with pytest.raises(ValueError, match="input gradient.*epsilon=0"):
        make_detector("odin").fit(onnx, digits)
    odin = make_detector("odin", epsilon=0.0, temperature=1000.0).fit(onnx, digits)  # logits only: fine
    assert odin.calibrate(digits.x_val, tnr=0.9) is not None
    # a torch feature model given as a file: the TorchScript archive's logits serve as features
    maha = make_detector("mahalanobis", features=str(files["torchscript"])).fit(onnx, digits)
    maha.calibrate(digits.x_val, tnr=0.9)
    assert maha.score(digits.x_test[:8], PredictionAPI(onnx).posteriors(digits.x_test[:8])).shape == (8,)
