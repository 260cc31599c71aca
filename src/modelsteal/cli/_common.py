"""Helpers shared by CLI subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def parse_value(text: str) -> Any:
    """``"3"`` → 3, ``"0.5"`` → 0.5, ``"true"`` → True, ``"none"`` → None, anything else stays a string."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def number(text: str) -> int | float:
    """An argparse ``type`` for a strength: ``"1"`` → 1 (an integer, for top-k's k), ``"0.5"`` → 0.5."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")


def parse_options(pairs: list[str] | None, *, flag: str = "--defense-option") -> dict[str, Any]:
    """Parse repeated ``key=value`` options into a dict with typed values."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects key=value, got {pair!r}")
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
