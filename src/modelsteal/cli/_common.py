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


def add_model_flags(parser: argparse.ArgumentParser, *, dataset: bool = False) -> None:
    """The flags every command that loads a model file shares: its format, weights and spec (see
    :mod:`modelsteal.models.formats.spec`); ``dataset`` adds ``--dataset`` for commands that have none."""
    g = parser.add_argument_group("model file (ONNX, TorchScript, .pt2, scikit-learn, python:module:factory)")
    g.add_argument("--format", default=None, metavar="NAME",
                   help="model format: checkpoint, torchscript, export, onnx, sklearn, python (default: told from "
                        "the file)")
    g.add_argument("--weights", default=None, metavar="FILE", help="state dict for a python:module:factory model")
    g.add_argument("--spec", default=None, metavar="YAML",
                   help="model spec file (default: MODEL.yaml or model.yaml beside the model file)")
    g.add_argument("--input-shape", default=None, metavar="C,H,W", help="input shape, channels first (e.g. 1,28,28)")
    g.add_argument("--dtype", default=None, help="input dtype the file takes: float32 (default), float64, float16")
    g.add_argument("--range", default=None, metavar="LO,HI",
                   help="value range the file takes (default 0,1; e.g. 0,255): [0, 1] inputs are scaled to it")
    g.add_argument("--mean", default=None, metavar="M[,M...]", help="normalisation the file expects but does not apply")
    g.add_argument("--std", default=None, metavar="S[,S...]", help="with --mean")
    g.add_argument("--layout", default=None, choices=["nchw", "nhwc"], help="channel order the file takes")
    g.add_argument("--outputs", default=None, choices=["auto", "probs", "logits"],
                   help="whether the file answers probabilities or logits (default auto: told at load)")
    g.add_argument("--classes", default=None, metavar="A,B,...", help="class names, in the model's output order")
    if dataset:
        g.add_argument("--dataset", default=None,
                       help="the model's dataset when the file does not name it (test split, training data)")


def model_spec(args: argparse.Namespace) -> Any:
    """The :class:`~modelsteal.models.formats.ModelSpec` the model flags give (only what was given)."""
    from modelsteal.models.formats import ModelSpec

    def ints(text: str | None, flag: str) -> tuple[int, ...] | None:
        if text is None:
            return None
        try:
            return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{flag} expects integers such as 1,28,28, got {text!r}") from None

    def floats(text: str | None, flag: str) -> tuple[float, ...] | None:
        if text is None:
            return None
        try:
            return tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ValueError(f"{flag} expects numbers separated by commas, got {text!r}") from None

    return ModelSpec(
        input_shape=ints(args.input_shape, "--input-shape"), dtype=args.dtype, range=floats(args.range, "--range"),
        mean=floats(args.mean, "--mean"), std=floats(args.std, "--std"), layout=args.layout, outputs=args.outputs,
        classes=tuple(c.strip() for c in args.classes.split(",")) if args.classes else None,
        dataset=getattr(args, "dataset", None))


def load_model_arg(source: str, args: argparse.Namespace, *, device: Any, own_flags: bool = True) -> Any:
    """The :class:`~modelsteal.models.formats.LoadedModel` of ``source`` with the model flags of ``args``
    (``own_flags=False``: only the spec file beside it, e.g. for a second model of the command)."""
    from modelsteal.models.formats import load_model

    if not own_flags:
        return load_model(source, device=device)
    return load_model(source, spec=model_spec(args), format=args.format, weights=args.weights, spec_file=args.spec,
                      device=device)


#: the model flags, as attribute names of the parsed arguments (``--dataset`` is not one: commands have their own)
MODEL_FLAGS = ("format", "weights", "spec", "input_shape", "dtype", "range", "mean", "std", "layout", "outputs",
               "classes")


def model_flags_given(args: argparse.Namespace) -> list[str]:
    """The model flags given on the command line, as ``--flag`` names."""
    return ["--" + f.replace("_", "-") for f in MODEL_FLAGS if getattr(args, f, None) is not None]
