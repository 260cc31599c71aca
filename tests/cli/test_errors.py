"""Every user mistake on the command line is one line on stderr with exit code 2, raised before any work.

Each case runs through the real command line (``modelsteal.cli.main.main``) on tiny inputs: an untrained
digits MLP checkpoint and a logistic regression on iris, both made in a temporary directory. A bug inside a
constructor (a ``TypeError``) keeps its traceback instead of turning into a user error.
"""

from __future__ import annotations

import json

import joblib
import pytest
import torch
import yaml
from cli_helpers import one_line_error
from sklearn.linear_model import LogisticRegression

import modelsteal.experiment.victims as victims_module
from modelsteal.blackbox import PredictionAPI
from modelsteal.cli.main import main
from modelsteal.data.tabular import load_tabular
from modelsteal.defenses.base import _DEFENSES, Defense
from modelsteal.devices import resolve_device
from modelsteal.models import build_model, save_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An untrained 10-class digits MLP checkpoint (only its shape matters here)."""
    path = tmp_path_factory.mktemp("ckpt") / "v.pt"
    model = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0)
    save_checkpoint(model, path, dataset="digits")
    return path


@pytest.fixture(scope="module")
def iris_lr(tmp_path_factory):
    """A softmax logistic regression on iris's training split, saved with joblib."""
    data = load_tabular("iris", seed=0)
    path = tmp_path_factory.mktemp("iris") / "lr.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(data.x_train, data.y_train), path)
    return path


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# -- devices --------------------------------------------------------------------------------------------
def test_resolve_device_is_one_line_for_every_wrong_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^CUDA is not available on this machine; use --device cpu or auto$"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'; use cpu, cuda, cuda:N or auto"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="cuda:2 does not exist: this machine has 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("command", ["train", "attack", "serve", "tramer"])
def test_device_cuda_without_cuda(command, ckpt, iris_lr, tmp_path, capsys, no_cuda):
    argv = {
        "train": ["train", "--dataset", "digits", "--epochs", "1", "--out", tmp_path / "x.pt"],
        "attack": ["attack", "--target", ckpt, "--budget", "5"],
        "serve": ["serve", "--model", ckpt, "--store", tmp_path / "s.db", "--port", "0"],
        "tramer": ["tramer", "--victim", iris_lr, "--dataset", "iris", "--attack", "equation-solving"],
    }[command]
    one_line_error(capsys, [*argv, "--device", "cuda"], "CUDA is not available on this machine", "--device cpu")
    assert not (tmp_path / "x.pt").exists()


def test_nonsense_device_in_a_sweep_config(tmp_path, capsys, no_cuda, forbid_training):
    cfg = _write(tmp_path, {**TINY, "device": "cuda:0"})
    one_line_error(capsys, ["sweep", cfg, "--out", tmp_path / "o"], "device:", "CUDA is not available")


# -- tramer -----------------------------------------------------------------------------------------------
def test_tramer_given_a_torch_checkpoint(ckpt, capsys):
    one_line_error(capsys, ["tramer", "--victim", ckpt, "--dataset", "iris", "--attack", "equation-solving"],
                   "is a torch checkpoint, not a scikit-learn model", "modelsteal attack")


@pytest.mark.parametrize("content", [b"f", b"", b"not a pickle at all"])
def test_tramer_given_a_file_that_is_not_a_joblib_model(content, tmp_path, capsys):
    bad = tmp_path / "bad.joblib"
    bad.write_bytes(content)
    line = one_line_error(capsys, ["tramer", "--victim", bad, "--dataset", "iris", "--attack", "equation-solving"],
                          "is not a scikit-learn model saved with joblib")
    assert not line.endswith("error: 102")


def test_tramer_exact_budget_below_d_plus_one_fails_before_any_query(iris_lr, capsys, monkeypatch):
    def no_queries(*args, **kwargs):
        raise AssertionError("the victim was queried")

    monkeypatch.setattr(PredictionAPI, "query", no_queries)
    one_line_error(capsys, ["tramer", "--victim", iris_lr, "--dataset", "iris", "--attack", "equation-solving",
                            "--method", "exact", "--budget", "2"],
                   "--method exact needs at least d + 1 = 5", "--budget 2")


@pytest.mark.parametrize("budget", ["0", "-3"])
def test_tramer_rejects_a_non_positive_budget(budget, iris_lr, capsys):
    one_line_error(capsys, ["tramer", "--victim", iris_lr, "--dataset", "iris", "--attack", "equation-solving",
                            "--budget", budget], f"--budget must be >= 1, got {budget}")


def test_tramer_without_out_prints_the_result(iris_lr, capsys):
    rc = main(["tramer", "--victim", str(iris_lr), "--dataset", "iris", "--attack", "equation-solving",
               "--unif", "200"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    record = json.loads(out.out)
    assert record["queries"] == 5 and record["method"] == "exact" and record["r_test"] < 1e-6


def test_tramer_hints_name_cli_flags(iris_lr, capsys):
    line = one_line_error(capsys, ["tramer", "--victim", iris_lr, "--dataset", "iris", "--attack", "equation-solving",
                                   "--output", "rounded-1", "--method", "exact"], "--method optimize")
    assert "method='optimize'" not in line


def test_angles_eval_every_zero(tmp_path, capsys, forbid_training):
    cfg = _write(tmp_path, {**TINY, "defenses": [{"name": "mad", "strengths": [0.5]}]})
    one_line_error(capsys, ["angles", cfg, "--out", tmp_path / "a", "--eval-every", "0"], "--eval-every must be >= 1")


# -- configs ------------------------------------------------------------------------------------------------
def test_malformed_yaml_is_one_line_with_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvictim: {dataset: digits\ndefenses: [a\n")
    one_line_error(capsys, ["sweep", bad, "--out", tmp_path / "o"], f"{bad}:3:9: invalid YAML", "flow mapping")


# -- defenses and attacks: options checked against the constructor --------------------------------------
def test_defense_without_its_strength_says_which_flag(ckpt, capsys):
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--defense", "mad"],
                   "pass --strength E (MAD's epsilon)")
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--defense", "reverse-sigmoid",
                            "--defense-option", "beta=0.5", "--strength", "0.3"], "give beta once")


def test_unknown_defense_option_lists_the_valid_ones(ckpt, capsys):
    line = one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--defense", "mad", "--strength",
                                   "0.5", "--defense-option", "epsilonn=0.1"], "unknown option epsilonn", "valid:")
    assert "epsilon" in line.split("valid:")[1] and "norm" in line.split("valid:")[1]


def test_defense_option_of_the_wrong_type(ckpt, capsys):
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--defense", "mad", "--strength", "0.5",
                            "--defense-option", "max_exact_classes=many"], "max_exact_classes='many'", "integer")


def test_unknown_attack_option_lists_the_valid_ones(ckpt, capsys):
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--attack-option", "queries_per_img=2"],
                   "unknown option queries_per_img for attack 'knockoff'", "valid: queries_per_image")


@pytest.mark.parametrize(("option", "flag"), [
    ("labels=argmax", "--labels argmax"), ("clone=mlp", "--clone mlp"), ("device=cpu", "--device cpu"),
])
def test_attack_option_that_duplicates_a_flag_names_the_flag(ckpt, capsys, monkeypatch, option, flag):
    import modelsteal.cli.attack as attack_cli

    def no_work(*a, **k):
        raise AssertionError("the target was opened before the attack options were checked")

    monkeypatch.setattr(attack_cli, "load_model_arg", no_work)
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--attack-option", option],
                   f"--attack-option {option} duplicates {flag.split()[0]}", f"pass {flag} instead")


@pytest.mark.parametrize("value", ["lenet", "none"])
def test_a_python_object_option_is_neither_listed_nor_taken_from_text(ckpt, capsys, value):
    line = one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--defense", "am", "--strength",
                                   "0.5", "--defense-option", f"misinformation={value}"],
                          "option misinformation of defense 'am' takes a Python object (a Module)", "valid: tau")
    assert "misinformation," not in line.split("valid:")[1]
    line = one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--defense", "am", "--strength",
                                   "0.5", "--defense-option", "tauu=0.1"], "unknown option tauu")
    assert "misinformation," not in line.split("valid:")[1] and "misinformation_kind" in line.split("valid:")[1]


def test_mad_surrogate_from_text_is_an_architecture_or_a_model_file(ckpt, capsys):
    """MAD's surrogate takes text since victims may be model files without torch layers (issue 28): an
    architecture name or a model file; anything else is one line naming the architectures."""
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--defense", "mad", "--strength", "0.5",
                            "--defense-option", "surrogate=lenett"], "surrogate 'lenett' is neither an architecture",
                   "lenet")


def test_a_python_caller_still_passes_python_objects():
    from modelsteal.defenses import make_defense

    surrogate = build_model("mlp", input_shape=(1, 8, 8), num_classes=10, seed=1)
    assert make_defense("mad", strength=0.5, surrogate=surrogate).surrogate is surrogate


def test_python_only_reads_the_annotation():
    from collections.abc import Callable

    from modelsteal._registry import python_only

    assert python_only(torch.nn.Module | None) and python_only(torch.Tensor) and python_only(Callable[[int], int])
    assert not any(python_only(h) for h in (int | None, str | Callable[[int], int], tuple[float, float] | None,
                                            dict[str, int], "nn.Module"))  # an unresolved annotation counts as text


def test_sweep_and_build_model_share_one_unknown_architecture_message():
    from modelsteal.experiment.validate import check_architecture

    with pytest.raises(ValueError) as from_sweep:
        check_architecture("vgg")
    with pytest.raises(ValueError) as from_models:
        build_model("vgg", input_shape=(1, 8, 8), num_classes=10)
    assert str(from_sweep.value) == str(from_models.value)
    assert str(from_sweep.value) == "unknown architecture 'vgg'; known architectures: cnn, lenet, mlp, resnet18, vgg16"
    check_architecture("ResNet-18")  # what build_model accepts, the check accepts


def test_unknown_recipe_option_lists_the_valid_ones(tmp_path, capsys):
    one_line_error(capsys, ["train", "--dataset", "digits", "--recipe", "outlier-exposure", "--recipe-option",
                            "lam=0.5", "--out", tmp_path / "x.pt"], "unknown option lam for recipe", "valid: weight")


class _Buggy(Defense):
    """A defense whose constructor has a bug that raises ``TypeError`` (its options are right)."""

    strength_param = "epsilon"

    def __init__(self, *, epsilon: float) -> None:
        self.epsilon = len(epsilon)  # TypeError: a float has no len()

    def perturb(self, x, probs, *, client):
        return probs


def test_a_type_error_inside_a_constructor_keeps_its_traceback(ckpt, capsys, monkeypatch):
    monkeypatch.setattr(_Buggy, "name", "buggy")
    monkeypatch.setitem(_DEFENSES._classes, "buggy", _Buggy)
    with pytest.raises(TypeError, match="has no len"):
        main(["attack", "--target", str(ckpt), "--budget", "5", "--defense", "buggy", "--strength", "0.5"])
    assert "error:" not in capsys.readouterr().err


# -- train ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--epochs", "-1", "--epochs must be >= 1"),
    ("--epochs", "0", "0 would save an untrained model"),
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("--lr", "0", "--lr must be > 0"),
])
def test_train_names_the_flag(flag, value, words, tmp_path, capsys):
    out = tmp_path / "x.pt"
    one_line_error(capsys, ["train", "--dataset", "digits", "--arch", "mlp", flag, value, "--out", out], words)
    assert not out.exists()


# -- outputs ------------------------------------------------------------------------------------------------
def test_top_zero_names_k_only(ckpt, capsys):
    line = one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--output", "top-0"],
                          "k must be an integer >= 1, got 0")
    assert "decimals" not in line


def test_top_k_defense_above_the_number_of_classes(ckpt, capsys):
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--defense", "top-k", "--strength", "20"],
                   "top-k defense keeps k=20 classes", "more than the model has (10)")


def test_top_k_above_the_number_of_classes(ckpt, capsys):
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--output", "top-20"],
                   "top-20", "more classes than the model has (10)")


# -- sweeps: the whole config is checked before any training -----------------------------------------------
TINY = {
    "name": "tiny",
    "victim": {"dataset": "digits", "arch": "mlp", "epochs": 1},
    "transfer": {"source": "dataset", "dataset": "digits", "size": 50},
    "defenses": [{"name": "none"}],
    "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 1}}],
    "budgets": [20],
}


def _write(tmp_path, raw) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.fixture
def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a victim was trained before the config was checked")

    monkeypatch.setattr(victims_module, "train_victim", fail)


@pytest.mark.parametrize(("change", "words"), [
    ({"defenses": [{"name": "none"}, {"name": "madd", "strengths": [0.5]}]}, ("defenses[1]", "unknown defense 'madd'")),
    ({"defenses": [{"name": "mad", "strengths": [0.5, 0.1], "options": {"nrm": "l2"}}]},
     ("defenses[0] (mad, strength 0.5)", "unknown option nrm", "valid:")),
    ({"defenses": [{"name": "mad", "strengths": [0.5, -1.0]}]}, ("strength -1.0", "epsilon >= 0")),
    ({"defenses": [{"name": "mad"}]}, ("defense 'mad' needs epsilon", "strengths")),
    ({"defenses": [{"name": "dp-sgd", "strengths": [1.0], "options": {"sigma": 1}}]}, ("unknown option sigma",)),
    ({"defenses": [{"name": "top-k", "strengths": [2, 20]}]}, ("defenses[0] (top-k, strength 20)", "k=20", "(10)")),
    ({"defenses": [{"name": "mad", "strengths": [0.5], "options": {"surrogate": "lenett"}}]},
     ("defenses[0] (mad, strength 0.5)", "surrogate 'lenett' is neither an architecture")),
    ({"attacks": [{"name": "knockoff", "options": {"querie_per_image": 2}}]}, ("attacks[0]", "valid: queries_per")),
    ({"attacks": [{"name": "knockoff", "options": {"queries_per_image": "two"}}]}, ("queries_per_image='two'",)),
    ({"attacks": [{"name": "knockoff", "options": {"queries_per_image": 0}}]}, ("queries_per_image must be >= 1",)),
    ({"attacks": [{"name": "knockoff", "train": {"epoch": 3}}]}, ("attacks[0].train", "unknown option epoch")),
    ({"attacks": [{"name": "knockoff", "train": {"epochs": "ten"}}]}, ("epochs='ten'", "integer")),
    ({"attacks": [{"name": "knockoff", "clone": "vgg"}]}, ("unknown architecture 'vgg'",)),
    ({"output": "top-0"}, ("output:", "k must be")),
    ({"output": "top-11"}, ("top-11", "more classes")),
    ({"budgets": [0]}, ("budgets",)),
    ({"seeds": ["a"]}, ("seeds",)),
    ({"victim": {"dataset": "digitz"}}, ("victim.dataset", "unknown dataset 'digitz'")),
    ({"transfer": {"source": "dataset", "dataset": ["digits", "nope"]}}, ("transfer.dataset", "'nope'")),
    ({"victim": {"dataset": "digits", "epochs": 0}}, ("victim.epochs must be >= 1",)),
    ({"defenses": [{"name": "none", "strengths": [0.5]}]}, ("defenses[0] (none, strength 0.5)", "no strength")),
    ({"defenses": [{"name": "none", "options": {"norm": "l2"}}]}, ("takes no strength or options", "norm")),
    ({"benign": {"clients": 3}}, ("benign clients", "add a 'detector' section")),
    ({"detector": {"name": "prada", "tnr": 1.5}}, ("detector.tnr must be in (0, 1)",)),
    ({"detector": {"name": "pradda"}}, ("detector:", "'pradda'", "prada")),
    ({"detector": {"name": "prada", "options": {"delt": 0.9}}}, ("detector:", "unknown option delt", "valid:")),
    ({"detector": {"name": "msp"}}, ("detector 'msp'", "give detector.tnr")),
    ({"detector": {"name": "prada", "response": "misinform"}}, ("detector.response", "needs a model object")),
    ({"detector": {"name": "binary", "tnr": 0.95}}, ("outlier set", "detector.outliers")),
    ({"detector": {"name": "prada"}, "benign": {"clients": 0}}, ("benign.clients must be an integer >= 1",)),
    ({"detector": {"name": "prada"}, "benign": {"queries": 1000}}, ("benign.queries 1000", "test split", "(359)")),
])
def test_a_bad_sweep_config_is_rejected_before_any_training(change, words, tmp_path, capsys, forbid_training):
    cfg = _write(tmp_path, {**TINY, **change})
    one_line_error(capsys, ["sweep", cfg, "--out", tmp_path / "o", "--quiet"], *words)
    assert not (tmp_path / "o").exists()  # no output folder for a config that was refused


# -- review fixes -------------------------------------------------------------------------------------------
def _no_queries(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the victim was queried")

    monkeypatch.setattr(PredictionAPI, "query", fail)


def test_an_unknown_clone_architecture_fails_before_any_query(ckpt, capsys, monkeypatch):
    _no_queries(monkeypatch)
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--clone", "vgg"],
                   "unknown architecture 'vgg'", "known architectures: cnn, lenet")


def test_the_none_defense_refuses_a_strength(ckpt, capsys, monkeypatch):
    _no_queries(monkeypatch)
    one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--strength", "0.3"],
                   "defense 'none' takes no strength or options, got strength")


def test_flag_backed_attack_options_are_not_listed_as_valid(ckpt, capsys, monkeypatch):
    _no_queries(monkeypatch)
    line = one_line_error(capsys, ["attack", "--target", ckpt, "--budget", "5", "--attack-option", "lables=soft"],
                          "unknown option lables", "valid: queries_per_image")
    assert "labels" not in line.split("valid:")[1]


def test_an_internal_key_error_or_connection_reset_keeps_its_traceback(capsys, monkeypatch):
    import modelsteal.cli.datasets as datasets_cli

    for error in (KeyError("oops"), ConnectionResetError("reset")):
        def broken(args, error=error):
            raise error

        monkeypatch.setattr(datasets_cli, "run", broken)
        with pytest.raises(type(error)):
            main(["datasets"])
        assert "error:" not in capsys.readouterr().err


@pytest.mark.parametrize(("spec", "options", "words"), [
    ("top-3", {"k": 5}, "already sets k=3; k=5 contradicts it"),
    ("rounded", {"k": 2}, "option k applies to top-k only"),
    ("probs", {"decimals": 2}, "option decimals applies to rounded only"),
])
def test_output_options_belong_to_their_format(spec, options, words):
    from modelsteal.outputs import make_output

    with pytest.raises(ValueError, match=words):
        make_output(spec, **options)
    assert make_output("top-3", k=3).k == 3 and make_output("rounded", decimals=3).decimals == 3


def test_tramer_json_reports_saturated_answers_and_probes(iris_lr, capsys):
    rc = main(["tramer", "--victim", str(iris_lr), "--dataset", "iris", "--attack", "equation-solving",
               "--unif", "200"])
    record = json.loads(capsys.readouterr().out)
    assert rc == 0 and (record["saturated"], record["probes"], record["queries"]) == (0, 0, 5)


@pytest.mark.parametrize(("argv", "words"), [
    (["attack", "--budget", "x"], ["argument --budget: invalid int value: 'x'", "see modelsteal attack -h"]),
    (["attack", "--budget", "5"], ["the following arguments are required: --target"]),
    (["reproduce", "results/reproduce-digits", "--rows", "1", "--points", "2"], ["not allowed with argument"]),
    (["sweep", "c.yaml", "--out", "o", "--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
])
def test_usage_mistakes_are_one_line_too(argv, words, capsys):
    # argparse's own errors (wrong type, missing or unknown flag, exclusive flags): one line, exit 2, no usage dump
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    # (an unknown flag is reported by the top-level parser, as "modelsteal: error: …")
    assert err.startswith((f"modelsteal {argv[0]}: error: ", "modelsteal: error: ")), err
    assert all(w in err for w in words), err
