"""scripts/check_layout.py: the tree keeps its floors, and an import from a higher floor is caught."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_layout.py"


def _checker():
    spec = importlib.util.spec_from_file_location("check_layout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_source_tree_keeps_its_floors():
    assert _checker().check(SCRIPT.parents[1] / "src") == []


def test_an_upward_import_is_reported_and_annotations_and_own_floor_are_not(tmp_path):
    pkg = tmp_path / "modelsteal"
    for sub in ("data", "experiment", "attacks"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "bad.py").write_text("def f():\n    from modelsteal.experiment import sweep\n")
    (pkg / "data" / "fine.py").write_text(
        "from typing import TYPE_CHECKING\nfrom modelsteal import data\nif TYPE_CHECKING:\n"
        "    from modelsteal.attacks import Attack\n")
    (pkg / "attacks" / "rel.py").write_text("from ..experiment import plan\n")
    problems = _checker().check(tmp_path)
    assert len(problems) == 2, problems
    assert "bad.py:2: data (floor 0) imports modelsteal.experiment (floor 4)" in problems[1]
    assert "rel.py:1: attacks (floor 3) imports modelsteal.experiment (floor 4)" in problems[0]
    (pkg / "newpart").mkdir()
    (pkg / "newpart" / "__init__.py").write_text("")
    assert any("'newpart' is on no floor" in p for p in _checker().check(tmp_path))
