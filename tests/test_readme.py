"""The README's and the docs' code still runs, and their commands still match the CLI.

Every fenced ``python`` block of README.md runs as written (the example is sized to take seconds), and
so does every block in ``docs/*.md`` whose fence reads ```` ```python runnable ````. Every ``modelsteal …``
command in a ``sh`` block of README.md or ``docs/*.md`` names a subcommand that exists and only flags its
``--help`` lists; every ``make X`` names a Makefile target.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from modelsteal.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.S | re.M)


def blocks(path: Path, *, runnable_only: bool = False) -> list[tuple[str, str]]:
    """``(info string, code)`` of each fenced block in ``path``."""
    found = [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(path.read_text())]
    return [(info, code) for info, code in found if not runnable_only or "runnable" in info.split()[1:]]


def python_blocks() -> list[tuple[str, str]]:
    out = [(f"README.md#{i}", code) for i, (info, code) in enumerate(blocks(ROOT / "README.md"))
           if info.split()[:1] == ["python"]]
    for doc in sorted((ROOT / "docs").glob("*.md")):
        out += [(f"{doc.name}#{i}", code) for i, (info, code) in enumerate(blocks(doc, runnable_only=True))
                if info.split()[:1] == ["python"]]
    return out


def shell_blocks(*, readme_only: bool = False) -> list[str]:
    pages = [ROOT / "README.md"] + ([] if readme_only else sorted((ROOT / "docs").glob("*.md")))
    return [code for page in pages for info, code in blocks(page) if info.split()[:1] in (["sh"], ["bash"])]


def commands(code: str, program: str) -> list[list[str]]:
    """The words of each ``program …`` command in shell ``code`` (comments, pipes, ``$(…)`` cut off)."""
    out = []
    for line in re.sub(r"\\\n\s*", " ", code).splitlines():  # a command continued with `\` is one line
        line = line.split(" #", 1)[0]
        for m in re.finditer(rf"(?:^|[\s(]){program}\s([^|)&;]*)", line):
            words = [w for w in shlex.split(m.group(1).replace("[", " ").replace("]", " "))]
            out.append(words)
    return out


def test_the_readme_has_the_blocks_this_checks():
    assert any(name.startswith("README.md") for name, _ in python_blocks())
    assert len(commands("\n".join(shell_blocks(readme_only=True)), "modelsteal")) >= 4
    assert len(commands("\n".join(shell_blocks()), "modelsteal")) >= 25


@pytest.mark.parametrize(("name", "code"), python_blocks(), ids=[n for n, _ in python_blocks()])
def test_python_block_runs_as_written(name, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    exec(compile(code, name, "exec"), {"__name__": "__readme__"})  # noqa: S102
    assert capsys.readouterr().out.strip() or "print(" not in code


#: the options ``modelsteal`` itself takes before a subcommand, with whether each takes a value
GLOBAL_OPTIONS = {"--threads": True, "--deterministic": False}


def after_global_options(words: list[str]) -> list[str]:
    """``words`` without the global options that lead them."""
    while words and words[0] in GLOBAL_OPTIONS:
        words = words[2:] if GLOBAL_OPTIONS[words[0]] else words[1:]
    return words


def subcommand(words: list[str], capsys) -> tuple[list[str], str]:
    """The longest leading run of ``words`` that is a (nested) subcommand, and its ``--help`` text."""
    path, text = [], ""
    for w in words:
        if w.startswith("-"):
            break
        with pytest.raises(SystemExit) as exit_info:
            main([*path, w, "--help"])
        out = capsys.readouterr().out
        if exit_info.value.code != 0 or not out.startswith("usage:"):
            break
        path, text = [*path, w], out
    return path, text


@pytest.mark.parametrize("words", commands("\n".join(shell_blocks()), "modelsteal"),
                         ids=lambda w: " ".join(w[:2]))
def test_shell_command_matches_the_cli(words, capsys):
    words = after_global_options(words)
    path, help_text = subcommand(words, capsys)
    assert path, f"`modelsteal {' '.join(words)}`: no such subcommand"
    flags = {w.split("=", 1)[0] for w in words if w.startswith("--")}
    listed = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))
    unknown = sorted(flags - listed)
    assert not unknown, f"`modelsteal {' '.join(path)}` has no {', '.join(unknown)} (see its --help)"


def test_make_targets_exist():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    for words in commands("\n".join(shell_blocks()), "make"):
        assert words[0] in targets, f"`make {words[0]}` is not a Makefile target"
