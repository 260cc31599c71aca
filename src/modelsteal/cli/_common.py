"""Helpers shared by CLI subcommands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from modelsteal.metrics import argmax_accuracy, l1_distance

if TYPE_CHECKING:
    from torch import Tensor

    from modelsteal.blackbox import PredictionAPI


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


# The per-client name under which the CLI measures a defended API; API key names cannot contain ':', so it
# never shares a stateful defense's per-client state with a real client.
EVALUATION_CLIENT = "modelsteal:evaluation"


def defense_cost(api: PredictionAPI, x: Tensor, y: Tensor) -> dict[str, float]:
    """What a defended API costs its honest users on labelled data ``(x, y)`` (normally the test split).

    Returns ``victim_accuracy`` (top-1 of the undefended posteriors), ``defender_accuracy`` (top-1 of the
    API's answers: defense and output format), ``l1_mean`` (mean ``||ỹ − y||₁`` between answers and
    undefended posteriors) and ``label_agreement`` (fraction of answers whose top-1 is the undefended one).
    The answers are asked for as :data:`EVALUATION_CLIENT`, not as any attacker's client.
    """
    clean = api.posteriors(x).cpu()
    defended = api.query(x, client=EVALUATION_CLIENT).cpu()
    return {
        "victim_accuracy": argmax_accuracy(clean, y),
        "defender_accuracy": argmax_accuracy(defended, y),
        "l1_mean": float(l1_distance(clean.double(), defended.double()).mean()),
        "label_agreement": float((defended.argmax(dim=1) == clean.argmax(dim=1)).double().mean()),
    }
