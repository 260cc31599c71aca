"""``modelsteal tramer``: each attack on a joblib-saved scikit-learn model, results as JSON."""

import json

import joblib
import numpy as np
import pytest

from modelsteal.attacks.tramer import raw_linear_parameters
from modelsteal.cli.main import main


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Tiny tabular models: one BLAS thread is much faster on the shared machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def tramer(*args):
    return main(["tramer", "--unif", "2000", *map(str, args)])


def fitted(tmp_path, dataset, kind):
    path = tmp_path / f"{dataset}-{kind}.joblib"
    assert tramer("--dataset", dataset, "--fit-victim", kind, "--victim", path) == 0
    return path


def test_equation_solving_on_a_bare_binary_model_reports_coef_and_intercept(tmp_path):
    victim = fitted(tmp_path, "breast-cancer", "lr")
    out = tmp_path / "r.json"
    assert tramer("--victim", victim, "--dataset", "breast-cancer", "--attack", "equation-solving", "--out", out) == 0
    r = json.loads(out.read_text())
    est = joblib.load(victim)
    assert r["queries"] == 31 and r["r_test"] < 1e-9 and r["r_unif"] < 1e-9 and r["method"] == "exact"
    np.testing.assert_allclose(r["weights"], est.coef_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r["bias"], est.intercept_, rtol=0, atol=1e-6)
    assert r["weights_space"].startswith("input") and r["weight_error"] < 1e-6


def test_pipeline_weights_are_in_the_raw_input_space(tmp_path):
    victim = fitted(tmp_path, "iris", "lr-scaled")
    out = tmp_path / "r.json"
    assert tramer("--victim", victim, "--dataset", "iris", "--attack", "equation-solving", "--out", out) == 0
    r = json.loads(out.read_text())
    coef, intercept = raw_linear_parameters(joblib.load(victim))
    assert r["pipeline"] and r["weights_space"].startswith("raw input")
    np.testing.assert_allclose(r["weights"], coef, rtol=0, atol=1e-6)
    np.testing.assert_allclose(r["bias"], intercept, rtol=0, atol=1e-6)
    assert r["queries"] == 5 and r["unknowns"] == 15


def test_path_finding_and_label_only_attacks(tmp_path):
    tree = fitted(tmp_path, "iris", "tree")
    out = tmp_path / "tree.json"
    assert tramer("--victim", tree, "--dataset", "iris", "--attack", "path-finding", "--incomplete", "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["r_test"] == 0.0 and r["leaves_found"] == r["leaves"] and r["queries"] > 0 and r["distance"] == "0-1"
    lr = fitted(tmp_path, "moons", "lr")
    assert tramer("--victim", lr, "--dataset", "moons", "--attack", "lowd-meek", "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["r_test"] == 0.0 and r["weight_error"] < 1e-6 and r["scale"].startswith("unit-norm")
    assert tramer("--victim", lr, "--dataset", "moons", "--attack", "retraining", "--strategy", "uniform",
                  "--budget", 60, "--epochs", 40, "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["queries"] == 60 and r["strategy"] == "uniform" and r["r_test"] < 0.05 and r["output"] == "label"


def test_rounded_outputs_go_through_the_api(tmp_path):
    victim = fitted(tmp_path, "iris", "lr-scaled")
    out = tmp_path / "r.json"
    assert tramer("--victim", victim, "--dataset", "iris", "--attack", "equation-solving", "--method", "optimize",
                  "--output", "rounded-2", "--out", out) == 0
    r = json.loads(out.read_text())
    assert r["output"] == "rounded-2" and r["queries"] == 15 and 1e-5 < r["r_test"] < 0.05


def test_user_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert tramer("--victim", tmp_path / "none.joblib", "--dataset", "adult", "--attack", "path-finding",
                  "--out", out) == 2
    assert "known: blobs" in capsys.readouterr().err
    assert tramer("--victim", tmp_path / "none.joblib", "--dataset", "iris", "--attack", "path-finding",
                  "--out", out) == 2
    assert "does not exist" in capsys.readouterr().err
    tree = fitted(tmp_path, "iris", "tree")
    assert tramer("--victim", tree, "--dataset", "iris", "--attack", "equation-solving", "--out", out) == 2
    assert "got DecisionTreeClassifier" in capsys.readouterr().err
    assert tramer("--victim", tree, "--dataset", "wine", "--attack", "path-finding", "--out", out) == 2
    assert "takes 4 features" in capsys.readouterr().err
