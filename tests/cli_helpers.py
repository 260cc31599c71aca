"""Helpers for tests that run the command line in-process."""

from __future__ import annotations

from modelsteal.cli.main import main


def one_line_error(capsys, argv: list, *words: str) -> str:
    """Run the CLI; assert exit code 2, exactly one line on stderr, its ``modelsteal CMD: error:`` prefix, and
    that the line holds ``words``. Returns the line."""
    argv = [str(a) for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"modelsteal {argv[0]}: error: "), err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    return lines[0]
