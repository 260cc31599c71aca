"""``DIR/provenance.json``: the victim's real SHA-256, a changed victim warned about once and marked per row,
cached points still reused, per-point wall times, and the environment facts (versions, threads, CPU, ISA)."""

import csv
import hashlib
import json
import subprocess

import numpy
import pytest
import sklearn
import torch

from modelsteal.experiment import points as points_mod
from modelsteal.experiment import run_sweep
from modelsteal.experiment import sweep as sweep_mod
from modelsteal.experiment.config import parse_config
from modelsteal.experiment.environment import cpu_model, git_state, parse_onednn_isa
from modelsteal.experiment.results import COLUMNS, PROVENANCE_FILE
from modelsteal.models import load_checkpoint, save_checkpoint


def tiny(victim_path, *, budgets=(100,)):
    return parse_config({
        "name": "tiny-provenance",
        "victim": {"dataset": "digits", "arch": "mlp", "epochs": 2, "lr": 0.05, "momentum": 0.9,
                   "checkpoint": str(victim_path)},
        "transfer": {"source": "dataset", "classes": [5, 6, 7, 8, 9]},
        "defenses": [{"name": "none"}, {"name": "reverse-sigmoid", "strengths": [0.5], "options": {"gamma": 0.2}}],
        "attacks": [{"name": "knockoff", "clone": "mlp", "train": {"epochs": 2, "lr": 0.05, "momentum": 0.9}}],
        "budgets": list(budgets),
        "seeds": [0],
        "device": "cpu",
    })


def sha256_of(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One tiny sweep (2 points), shared by the tests that only read its directory."""
    root = tmp_path_factory.mktemp("prov")
    victim, out = root / "victim.pt", root / "out"
    records = run_sweep(tiny(victim), out_dir=out, progress=False, plots=False)
    return victim, out, records


def test_provenance_holds_the_victim_files_real_sha256(swept):
    # bug caught: hashing something other than the checkpoint's bytes (its path, its state_dict, a stale file)
    victim, out, records = swept
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    want = sha256_of(victim)
    assert prov["victim_sha256"] == want and prov["victims"] == {str(victim): want}
    assert [r["victim_sha256"] for r in rows(out)] == [want, want]
    assert list(rows(out)[0])[: len(COLUMNS)] == COLUMNS  # the standard columns keep their place


def test_per_point_wall_times_are_recorded_and_summed(swept):
    # bugs caught: the clock started after the attack (wall time below the attack's own time), a point's time
    # missing from its cached JSON, or the aggregate not summing the points
    _, out, _ = swept
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    points = {p.stem: json.loads(p.read_text()) for p in (out / "points").glob("*.json")}
    assert len(points) == 2 and set(prov["points"]) == set(points)
    for key, rec in points.items():
        assert rec["wall_seconds"] > 0 and rec["wall_seconds"] >= rec["attack_seconds"] - 0.005  # it rounds to 0.01
        assert prov["points"][key]["wall_seconds"] == rec["wall_seconds"]
        assert prov["points"][key]["environment_id"] in prov["environments"]
    assert prov["points_timed"] == 2
    assert prov["wall_seconds_total"] == pytest.approx(sum(r["wall_seconds"] for r in points.values()), abs=1e-6)


def test_environment_records_versions_threads_cpu_and_isa(swept, tmp_path):
    # bugs caught: a version read from the wrong package, thread counts or env vars not from this process,
    # the oneDNN ISA probe silently failing, git facts wrong inside a checkout or raising outside one
    _, out, _ = swept
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    env = prov["environment"]
    assert env["versions"]["torch"] == torch.__version__
    assert env["versions"]["numpy"] == numpy.__version__
    assert env["versions"]["scikit-learn"] == sklearn.__version__
    assert env["threads"]["torch_num_threads"] == torch.get_num_threads()
    assert env["threads"]["torch_num_interop_threads"] == torch.get_num_interop_threads()
    assert set(env["threads"]["env"]) >= {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "ONEDNN_MAX_CPU_ISA"}
    assert env["cpu"]["model"] and env["cpu"]["aten_capability"] == torch.backends.cpu.get_cpu_capability()
    if torch.backends.mkldnn.is_available():
        assert env["cpu"]["onednn_isa"]  # e.g. "Intel AVX2", read from oneDNN's verbose header
    assert len(prov["config_hash"]) == 16 and prov["config_name"] == "tiny-provenance"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=sweep_mod.__file__.rsplit("/", 1)[0],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = None
    assert env["git"]["commit"] == head
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # outside a checkout: no failure


def test_changed_victim_warns_once_and_marks_rows(tmp_path, capsys):
    # bugs caught: no warning (or one per point) when the victim file changed under a results directory, and
    # cached rows relabelled with the new hash (hiding that the CSV mixes two victims)
    victim, out = tmp_path / "victim.pt", tmp_path / "out"
    run_sweep(tiny(victim), out_dir=out, progress=False, plots=False)
    old = sha256_of(victim)
    assert "warning" not in capsys.readouterr().err
    model, meta = load_checkpoint(victim)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    save_checkpoint(model, victim, dataset=meta["dataset"])
    new = sha256_of(victim)
    assert new != old
    run_sweep(tiny(victim, budgets=(100, 150)), out_dir=out, progress=False, plots=False)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning:") and old[:12] in err[0] and new[:12] in err[0]
    by_budget = {(r["defense"], r["budget"]): r["victim_sha256"] for r in rows(out)}
    assert by_budget[("none", "100")] == old and by_budget[("none", "150")] == new
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    assert prov["victim_sha256"] == new and prov["previous_victim_sha256"] == [old]
    run_sweep(tiny(victim, budgets=(100, 150)), out_dir=out, progress=False, plots=False)
    assert "warning" not in capsys.readouterr().err  # the new victim is now the recorded one


def test_rerun_reuses_cached_points_also_those_written_before_provenance(tmp_path, monkeypatch):
    # bugs caught: the victim hash or wall time folded into the cache key (every existing cached point
    # recomputed), or a point cached without the new fields no longer read
    victim, out = tmp_path / "victim.pt", tmp_path / "out"
    cfg = tiny(victim)
    first = run_sweep(cfg, out_dir=out, progress=False, plots=False)
    d, a = cfg.defenses[0], cfg.attacks[0]
    key = points_mod.sweep_point_key(cfg, d, None, a, 100, 0)
    assert (out / "points" / f"{key}.json").exists()
    old_style = out / "points" / f"{key}.json"  # as a point cached before provenance existed
    rec = json.loads(old_style.read_text())
    old_style.write_text(json.dumps({k: v for k, v in rec.items() if k not in ("victim_sha256", "wall_seconds")}))
    stamps = {p: p.stat().st_mtime_ns for p in (out / "points").glob("*.json")}

    def no_compute(*args, **kwargs):
        raise AssertionError("a cached point was recomputed")

    monkeypatch.setattr(points_mod, "run_point", no_compute)
    again = run_sweep(cfg, out_dir=out, progress=False, plots=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "points").glob("*.json")} == stamps
    assert [r["attacker_accuracy"] for r in again] == [r["attacker_accuracy"] for r in first]
    assert rows(out)[0]["victim_sha256"] == ""  # unknown for the old point, not guessed


def test_cpu_model_and_isa_parsers(tmp_path):
    # bugs caught: the ISA taken from the wrong verbose line; a missing /proc/cpuinfo raising
    header = ("onednn_verbose,v1,info,oneDNN v3.12.0 (commit x)\nonednn_verbose,v1,info,cpu,runtime:OpenMP,nthr:1\n"
              "onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions\n")
    assert parse_onednn_isa(header) == "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions"
    assert parse_onednn_isa("no header here") is None
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n")
    assert cpu_model(tmp_path / "cpuinfo") == "Test CPU 9000"
    assert cpu_model(tmp_path / "missing")  # falls back to the platform's name


def test_merged_results_keep_every_runs_points_and_a_config_only_when_all_agree(tmp_path):
    # two runs of one config into two directories (different budgets: the config hashes differ), then merged
    from modelsteal.cli.main import main

    victim = tmp_path / "victim.pt"
    run_sweep(tiny(victim, budgets=(100,)), out_dir=tmp_path / "a", progress=False, plots=False)
    run_sweep(tiny(victim, budgets=(150,)), out_dir=tmp_path / "b", progress=False, plots=False)
    a, b = (json.loads((tmp_path / d / PROVENANCE_FILE).read_text()) for d in "ab")
    out = tmp_path / "merged"
    assert main(["results", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--no-plots"]) == 0
    merged = json.loads((out / PROVENANCE_FILE).read_text())
    assert set(merged["points"]) == set(a["points"]) | set(b["points"]) and len(merged["points"]) == 4
    assert merged["points_timed"] == 4
    assert merged["wall_seconds_total"] == pytest.approx(
        sum(p["wall_seconds"] for p in [*a["points"].values(), *b["points"].values()]), abs=0.01)
    assert merged["victim_sha256"] == a["victim_sha256"] == b["victim_sha256"]
    assert [m["config_hash"] for m in merged["merged_from"]] == [a["config_hash"], b["config_hash"]]
    assert "config" not in merged  # the two runs' configs differ: none is claimed for the merged rows
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted(int(r["budget"]) for r in rows) == [100, 100, 150, 150]
    # the same directory twice: one config, kept
    assert main(["results", "merge", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(out), "--no-plots"]) == 0
    assert json.loads((out / PROVENANCE_FILE).read_text())["config_hash"] == a["config_hash"]


def test_an_angles_run_records_its_victim_config_and_each_epsilons_time(tmp_path):
    from modelsteal.cli.main import main

    victim = tmp_path / "victim.pt"
    cfg = tmp_path / "angles.yaml"
    cfg.write_text(
        "name: tiny-angles\n"
        f"victim: {{dataset: digits, arch: mlp, epochs: 2, lr: 0.05, momentum: 0.9, checkpoint: {victim}}}\n"
        "transfer: {source: dataset}\n"
        "defenses: [{name: mad, strengths: [0.0, 1.0], options: {norm: l1}}]\n"
        "attacks: [{name: knockoff, clone: mlp, train: {epochs: 1, lr: 0.01, momentum: 0.0, batch_size: 1}}]\n"
        "budgets: [30]\nseeds: [0]\n")
    out = tmp_path / "out"
    assert main(["--threads", "1", "angles", str(cfg), "--out", str(out), "--budget", "12", "--eval-every", "6",
                 "--eval-size", "50"]) == 0
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    assert prov["victim_sha256"] == hashlib.sha256(victim.read_bytes()).hexdigest()
    assert prov["config"]["budgets"] == [12] and prov["config_name"] == "tiny-angles"  # as run: --budget applied
    assert sorted(prov["points"]) == ["epsilon=0.0", "epsilon=1.0"] and prov["points_timed"] == 2
    assert prov["angles"] == {"eval_every": 6, "eval_size": 50}
