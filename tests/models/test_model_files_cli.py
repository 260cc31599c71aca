"""ONNX and TorchScript victims from the command line: served (``serve --model``), attacked (``attack --target``)
and verified (``verify --victim``), each giving what the checkpoint they were exported from gives; and the
mistakes a user makes with a model file are one line and exit code 2, before anything is served."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from cli_helpers import one_line_error
from model_files import trained_lenet, write_all

from modelsteal.cli.main import main
from modelsteal.models import load_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # torch.onnx.export needs it

SHAPE = ["--input-shape", "1,8,8"]  # TorchScript does not record its input shape
EXTRA = {"onnx": [], "torchscript": SHAPE}
DI = ["--method", "dataset-inference", "--option", "samples=4", "--option", "fit_samples=20", "--option",
      "directions=2", "--option", "steps=5", "--budget", "80", "--dataset", "digits", "--seed", "3"]


@pytest.fixture(scope="module")
def files(digits, tmp_path_factory):
    return write_all(trained_lenet(digits), tmp_path_factory.mktemp("cli-files"))


@pytest.fixture(scope="module")
def reference(files, digits):
    ckpt, _ = load_checkpoint(files["checkpoint"])
    with torch.no_grad():
        probs = torch.softmax(ckpt(digits.x_test), dim=1)
    return {"probs": probs, "accuracy": float((probs.argmax(1) == digits.y_test).float().mean())}


@pytest.fixture(scope="module")
def clone(files, tmp_path_factory):
    """A clone stolen from the checkpoint itself (the suspect of the verify tests)."""
    out = tmp_path_factory.mktemp("clone")
    assert main(["--threads", "1", "attack", "--target", str(files["checkpoint"]), "--budget", "200", "--epochs", "3",
                 "--clone", "mlp", "--transfer", "dataset:digits", "--save-clone", str(out / "clone.pt")]) == 0
    return out / "clone.pt"


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_attack_a_model_file(fmt, files, reference, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["--threads", "1", "attack", "--target", str(files[fmt]), *EXTRA[fmt], "--dataset", "digits",
               "--budget", "150", "--epochs", "5", "--clone", "mlp", "--transfer", "dataset:digits",
               "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["queries"] == 150
    # the file's answers are the checkpoint's: the defender's side measures the same accuracy
    assert result["victim_accuracy"] == pytest.approx(reference["accuracy"], abs=1e-9)
    assert result["attacker_accuracy"] > 0.2  # the clone learnt something from 150 answers


def test_attack_an_onnx_file_behind_mad(files, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["--threads", "1", "attack", "--target", str(files["onnx"]), "--dataset", "digits", "--budget", "60",
               "--epochs", "1", "--clone", "mlp", "--defense", "mad", "--strength", "0.5", "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert 0.3 < result["l1_mean"] <= 0.5 + 1e-6  # MAD with its random LeNet surrogate spends its L1 budget


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_verify_with_a_model_file_as_victim(fmt, files, clone, tmp_path, capsys):
    """Dataset inference fitted on the file gives the checkpoint's verdict: same p-value, same queries."""
    got, want = tmp_path / "file.json", tmp_path / "ckpt.json"
    common = ["--suspect", str(clone), "--suspect-arch", "mlp", *DI]
    victim = ["--victim", str(files[fmt]), *EXTRA[fmt]]
    assert main(["--threads", "1", "verify", *victim, *common, "--json", str(got)]) == 0
    assert main(["--threads", "1", "verify", "--victim", str(files["checkpoint"]), *common, "--json", str(want)]) == 0
    got_v, want_v = json.loads(got.read_text()), json.loads(want.read_text())
    assert got_v["queries"] == want_v["queries"] > 0
    assert got_v["p_value"] == pytest.approx(want_v["p_value"], rel=1e-6)
    assert "p-value:" in capsys.readouterr().out


def test_verify_a_model_file_suspect(files, tmp_path):
    """The suspect may be a model file too: the ONNX export of the victim is tested as the victim itself is."""
    got, want = tmp_path / "onnx.json", tmp_path / "self.json"
    for suspect, out in ((files["onnx"], got), (files["checkpoint"], want)):
        assert main(["--threads", "1", "verify", "--victim", str(files["checkpoint"]), "--suspect", str(suspect),
                     *DI, "--json", str(out)]) == 0
    got_v, want_v = json.loads(got.read_text()), json.loads(want.read_text())
    assert got_v["p_value"] == pytest.approx(want_v["p_value"], rel=1e-6) and got_v["queries"] == want_v["queries"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_serve_a_model_file(fmt, files, reference, tmp_path, digits):
    pytest.importorskip("fastapi")
    from serve_helpers import ServerProcess

    from modelsteal.serve.client import HTTPBlackBox
    from modelsteal.serve.store import open_store

    store_url = str(tmp_path / "ledger.db")
    with open_store(store_url) as store:
        _, key = store.create_key(name="alice", budget=1000)
    args = [*EXTRA[fmt], "--dataset", "digits", "--eval-size", "100"]
    with ServerProcess(model=files[fmt], store=store_url, log_path=tmp_path / "server.log", args=args) as server:
        with HTTPBlackBox(server.url, key) as box:
            answers = box.query(digits.x_test[:40])
            assert box.info["model_format"] == fmt
            assert box.usage()["queries"] == 40
        log = server.log()
    assert (answers - reference["probs"][:40]).abs().max().item() <= 1e-5
    accuracy = float((reference["probs"][:100].argmax(1) == digits.y_test[:100]).float().mean())
    assert f"undefended {100 * accuracy:.1f}%" in log  # the start-up measurement on the spec's dataset


# -- mistakes: one line, exit 2, before serving -----------------------------------------------------------------
def test_serve_a_file_of_unknown_format(tmp_path, capsys):
    junk = tmp_path / "model.bin"
    junk.write_bytes(b"\x00garbage" * 64)
    one_line_error(capsys, ["serve", "--model", junk, "--store", tmp_path / "db", "--port", "0"],
                   "cannot tell the format", "--format")


def test_serve_with_a_spec_that_does_not_fit(files, tmp_path, capsys):
    one_line_error(capsys, ["serve", "--model", files["onnx"], "--input-shape", "1,28,28", "--store", tmp_path / "db",
                            "--port", "0"], "(1, 28, 28)", "declares (1, 8, 8)")
    one_line_error(capsys, ["serve", "--model", files["torchscript"], "--input-shape", "3,8,8", "--store",
                            tmp_path / "db", "--port", "0"], "fails on a batch of inputs of shape (2, 3, 8, 8)")
    one_line_error(capsys, ["attack", "--target", files["torchscript"], "--budget", "10"],
                   "does not record its input shape", "--input-shape")
    one_line_error(capsys, ["serve", "--model", files["onnx"], "--outputs", "probs", "--store", tmp_path / "db",
                            "--port", "0"], "--outputs logits")
    one_line_error(capsys, ["serve", "--model", files["onnx"], "--detector", "odin", "--dataset", "digits",
                            "--store", tmp_path / "db", "--port", "0"], "input gradient", "epsilon=0")


def test_serve_an_onnx_file_without_the_extra(files, tmp_path):
    """ONNX Runtime missing (blocked in sys.modules of a fresh interpreter): one line naming the extra, exit 2,
    nothing served."""
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from modelsteal.cli.main import main\n"
            f"sys.exit(main(['serve', '--model', {str(files['onnx'])!r}, '--store', {str(tmp_path / 'db')!r}, "
            "'--port', '0', '--eval-size', '0']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'modelsteal[onnx]'" in lines[0], proc.stderr
    assert "listening" not in proc.stdout
