"""``modelsteal verify``: is a suspect model derived from the victim? Prints the p-value and the verdict.

The suspect is a checkpoint (``modelsteal train``), a clone's state dict (``modelsteal attack --save-clone``,
loaded into ``--suspect-arch``, default the victim's architecture), or the URL of a ``modelsteal serve`` instance
(with ``--api-key``). Methods: ``dawn`` (needs ``--records``, the watermarked queries the dawn defense wrote with
``--defense-option records=PATH``, and ``--key``, the defense's key), ``dataset-inference`` (the victim's own
training data, reloaded from the dataset its checkpoint names with ``--data-seed``, the ``modelsteal train
--seed`` that split it), ``ewe`` (the watermark saved with an EWE victim's checkpoint). Everything a user can get
wrong is checked before any model is queried or any embedding computed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from modelsteal.cli._common import add_device, add_model_flags, load_model_arg, parse_options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from modelsteal.ownership import available_verifiers

    p = sub.add_parser(
        "verify",
        help="test whether a suspect model was stolen from the victim (p-value and verdict)",
        description="Ownership verification: query a suspect (checkpoint, clone state dict or http(s):// URL) "
        "and test the null hypothesis that it is independent of the victim.",
    )
    p.add_argument("--victim", required=True,
                   help="the victim's model file: a checkpoint (modelsteal train), ONNX, TorchScript, .pt2, "
                        "scikit-learn or python:module:factory (the model flags below describe it)")
    p.add_argument("--suspect", required=True,
                   help="model file (as --victim), clone state dict, or http(s)://host:port")
    p.add_argument("--suspect-format", default=None, metavar="NAME", help="the suspect file's format (default: told "
                   "from the file)")
    p.add_argument("--suspect-spec", default=None, metavar="YAML",
                   help="the suspect file's spec (default: SUSPECT.yaml or model.yaml beside it; the victim's input "
                        "shape otherwise)")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(available_verifiers())}")
    p.add_argument("--key", default=None, help="dawn: the defense's secret key (checks the records were made with it)")
    p.add_argument("--records", default=None, help="dawn: the records file the dawn defense wrote (records=PATH)")
    p.add_argument("--budget", type=int, default=1000, help="most queries to send to the suspect (default 1000)")
    p.add_argument("--alpha", type=float, default=0.05, help="the test's level (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", default=[], metavar="K=V", help="verifier option (repeatable)")
    p.add_argument("--api-key", default=None, help="API key for a suspect URL")
    p.add_argument("--suspect-arch", default=None, help="architecture of a clone state dict (default: the victim's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--data-seed", type=int, default=None,
                   help="dataset-inference: the seed that split the victim's data (default: the checkpoint's, else 0)")
    p.add_argument("--json", default=None, help="write the verdict as JSON here")
    add_device(p)
    add_model_flags(p, dataset=True)
    return p


def verifier_options(args: argparse.Namespace) -> dict[str, Any]:
    """The verifier's options from ``--option`` and the dedicated flags (a flag the method does not take is
    refused by the registry's check, naming the valid options)."""
    opts = parse_options(args.option, flag="--option")
    for flag, name in (("--key", "key"), ("--records", "records"), ("--alpha", "alpha")):
        value = getattr(args, name)
        if value is None:
            continue
        if name in opts:
            raise ValueError(f"give {name} once: as {flag}, not as --option {name}=...")
        opts[name] = value
    return opts


def _suspect(args: argparse.Namespace, meta: dict, device: object) -> Any:
    """The suspect: an ``nn.Module`` for a file (white-box methods may use its gradients), else an HTTP box."""
    if args.suspect.startswith(("http://", "https://")):
        from modelsteal.serve.client import HTTPBlackBox, split_endpoint

        if not args.api_key and split_endpoint(args.suspect)[1] == "v1":  # a /v2/models/NAME URL may need none
            raise ValueError("a suspect URL needs --api-key (a key of that server)")
        box = HTTPBlackBox(args.suspect, args.api_key)  # a server that is not there fails here, at once
        if meta.get("input_shape") and tuple(meta["input_shape"]) != box.input_shape:
            box.view_inputs_as(tuple(meta["input_shape"]))  # a v2 model of flat features answers images
        return box
    from modelsteal.models.formats import ModelSpec, load_model

    path = Path(args.suspect)
    if not args.suspect.startswith("python:") and not path.is_file():
        raise FileNotFoundError(f"suspect {path} does not exist (a model file, a clone from `modelsteal attack "
                                "--save-clone`, or an http(s):// URL)")
    state = None if args.suspect.startswith("python:") or args.suspect_format else _state_dict(path)
    if state is not None:
        arch = args.suspect_arch or meta.get("arch")
        if not arch:
            raise ValueError(f"suspect {path} is a bare state dict: pass --suspect-arch (the --clone the attack used)")
        return _clone_from_state(state, meta, arch=arch, device=device, path=path)
    loaded = load_model(args.suspect, format=args.suspect_format, spec_file=args.suspect_spec, device=device,
                        defaults=ModelSpec(input_shape=tuple(meta["input_shape"])))
    return loaded.model  # its classes are checked against the victim's by the verifier


def _state_dict(path: Path) -> dict | None:
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a tensor file: the checkpoint loader's message stands
        return None
    return blob if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()) \
        else None


def _clone_from_state(state: dict, meta: dict, *, arch: str, device: object, path: Path) -> Any:
    """A clone's bare state dict (``attack --save-clone``) in ``arch`` for the victim's task."""
    from modelsteal.models import build_model

    shape = tuple(meta["input_shape"])
    chans = [0.5] * shape[0] if len(shape) == 3 else None
    model = build_model(arch, input_shape=shape, num_classes=meta["num_classes"], mean=chans, std=chans)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise ValueError(f"suspect {path} is a state dict that does not fit architecture {arch!r} for the "
                         "victim's task: pass --suspect-arch (the --clone the attack used)") from None
    return model.to(device).eval()


def run(args: argparse.Namespace) -> int:
    from modelsteal.devices import resolve_device
    from modelsteal.ownership import verifier_class
    from modelsteal.ownership.base import check_alpha

    cls = verifier_class(args.method)
    check_alpha(args.alpha)
    if args.budget < 1:
        raise ValueError(f"--budget must be a positive integer, got {args.budget}")
    opts = verifier_options(args)
    device = resolve_device(args.device)
    loaded = load_model_arg(args.victim, args, device=device)
    victim, meta = loaded.model, loaded.meta
    if cls.name == "dawn" and not opts.get("records"):
        raise ValueError("--method dawn needs --records PATH: the watermarked queries the dawn defense recorded "
                         "(modelsteal attack --defense dawn --defense-option records=PATH)")
    from_checkpoint = getattr(cls, "from_checkpoint", None)  # EWE: its triggers live in the victim's checkpoint
    opts = _checked(cls, opts)
    verifier = from_checkpoint(args.victim, device=device, **opts) if from_checkpoint else cls(**opts)
    verifier.bind(victim)
    suspect = _suspect(args, meta, device)
    verifier.check_suspect(suspect, fitted=False)
    verifier.check_budget(args.budget)
    data = _data(args, meta) if cls.needs_data else None
    start = time.perf_counter()
    import torch

    if not verifier.fitted:
        verifier.fit(victim, data=data, generator=torch.Generator().manual_seed(args.seed))
    verdict = verifier.verify(suspect, budget=args.budget, seed=args.seed)
    seconds = time.perf_counter() - start
    print(f"p-value: {verdict.p_value:.4g}")
    print(f"verdict: {'stolen' if verdict.stolen else 'not shown stolen'} at alpha = {verdict.alpha:g} "
          f"({verdict.queries} queries to the suspect, {seconds:.1f}s)")
    if args.json:
        report = {**verdict.to_dict(), "victim": args.victim, "suspect": args.suspect, "seconds": seconds,
                  "seed": args.seed, "budget": args.budget}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _checked(cls: type, opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` after the registry's check against ``cls``'s constructor (one line naming a wrong option)."""
    from modelsteal._registry import check_options

    check_options(cls, opts, kind="verifier", noun="option")
    return opts


def _data(args: argparse.Namespace, meta: dict) -> Any:
    from modelsteal.data import load_dataset

    name = meta.get("dataset")
    if not name:
        raise ValueError(f"--method {args.method} needs the victim's training data, but its checkpoint names no "
                         "dataset")
    seed = args.data_seed if args.data_seed is not None else int(meta.get("data_seed", meta.get("seed", 0)) or 0)
    return load_dataset(name, data_dir=args.data_dir, seed=seed)
