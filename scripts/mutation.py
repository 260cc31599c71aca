"""Mutation testing of the detectors, defenses, ownership and serving packages on their own test files, with
mutmut (``pip install 'modelsteal[mutation]'``; ``make mutation``). Not part of CI: a package takes tens of
minutes to hours on a small machine.

Each package runs in a temporary copy of the repository (mutmut writes its ``mutants/`` tree and a
``setup.cfg`` there, never in the working tree): only that package's files are mutated, and only its own test
files run against each mutant. The score printed per package is killed / (killed + survived), with the
mutants that timed out or were not covered by any of those tests counted apart.

    python scripts/mutation.py                 # every package
    python scripts/mutation.py detectors       # one
    python scripts/mutation.py serve --max-children 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: package -> its own test files (globs under tests/; the mirrored tests/<package>/ folder is added when present)
PACKAGES: dict[str, list[str]] = {
    "detectors": ["test_detectors.py", "test_prada.py", "test_responses.py"],
    "defenses": ["test_defenses_generic.py", "test_promises_defenses.py", "test_mad.py", "test_misinformation.py",
                 "test_dawn.py"],
    "ownership": ["test_ownership.py", "test_dataset_inference.py", "test_ewe.py", "test_dawn.py"],
    "serve": ["test_serve_*.py"],
}


def test_files(package: str) -> list[str]:
    """The package's own test files, relative to the repository root."""
    files = sorted({p.relative_to(ROOT).as_posix() for pattern in PACKAGES[package]
                    for p in (ROOT / "tests").glob(pattern)})
    mirrored = ROOT / "tests" / package
    if mirrored.is_dir():
        files.append(mirrored.relative_to(ROOT).as_posix())
    return files


def setup_cfg(package: str, *, only: str | None = None) -> str:
    tests = "\n    ".join(test_files(package))
    return (f"[mutmut]\nsource_paths = src/modelsteal\nonly_mutate = {only or f'src/modelsteal/{package}/*'}\n"
            f"pytest_add_cli_args_test_selection =\n    {tests}\npytest_add_cli_args =\n    -x\n    -q\n"
            "    -p\n    no:cacheprovider\n")


def run_package(package: str, *, max_children: int, keep: bool, only: str | None = None) -> dict[str, int]:
    """mutmut over ``package`` in a temporary copy; returns its counts (``killed``, ``survived``, ...)."""
    work = Path(tempfile.mkdtemp(prefix=f"mutation-{package}-"))
    try:
        for name in ("src", "tests", "pyproject.toml"):
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
        text = (work / "pyproject.toml").read_text()
        (work / "pyproject.toml").write_text(text.replace("[tool.mutmut]", "[tool.mutmut-unused]"))
        (work / "setup.cfg").write_text(setup_cfg(package, only=only))
        cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
        print(f"== {package}: {' '.join(test_files(package))} (in {work})", flush=True)
        subprocess.run(cmd, cwd=work, check=False)
        subprocess.run([sys.executable, "-m", "mutmut", "export-cicd-stats"], cwd=work, check=True)
        stats = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
        return {k: int(v) for k, v in stats.items() if isinstance(v, int)}
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("packages", nargs="*", metavar="PACKAGE",
                   help=f"which packages (default all): {', '.join(PACKAGES)}")
    p.add_argument("--max-children", type=int, default=2, help="mutants run in parallel (default 2)")
    p.add_argument("--keep", action="store_true", help="keep the temporary copies (to browse the survivors)")
    p.add_argument("--only", default=None, metavar="GLOB",
                   help="mutate only these files of the package, e.g. src/modelsteal/detectors/responses.py")
    args = p.parse_args(argv)
    unknown = sorted(set(args.packages) - set(PACKAGES))
    if unknown:
        p.error(f"unknown package {unknown[0]!r}; known: {', '.join(PACKAGES)}")
    rows = []
    for package in args.packages or list(PACKAGES):
        s = run_package(package, max_children=args.max_children, keep=args.keep, only=args.only)
        decided = s.get("killed", 0) + s.get("survived", 0)
        score = s.get("killed", 0) / decided if decided else float("nan")
        rows.append((package, s, score))
    for package, s, score in rows:
        print(f"{package:10s} score {100 * score:5.1f}%  killed {s.get('killed', 0)}  survived {s.get('survived', 0)}"
              f"  timeout {s.get('timeout', 0)}  no tests {s.get('no_tests', 0)}  total {s.get('total', 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
