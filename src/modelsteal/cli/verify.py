"""``modelsteal verify``: were suspect models derived from the victim? Prints p-values and verdicts.

Each suspect is a checkpoint (``modelsteal train``), a clone's state dict (``modelsteal attack --save-clone``,
loaded into ``--suspect-arch``, default the victim's architecture), or the URL of a ``modelsteal serve`` instance
(with ``--api-key``); several suspects share one fitted verifier (and one set of reference models) and get a
table. Methods: ``dawn`` (needs ``--records``, the watermarked queries the dawn defense wrote with
``--defense-option records=PATH``, ``--key``, the defense's key, and optionally ``--clients``),
``dataset-inference`` (the victim's own training data, reloaded from the dataset its checkpoint names with
``--data-seed``, the ``modelsteal train --data-seed`` that split it, and checked against the fingerprint the
checkpoint committed to), ``ewe`` (the watermark saved with an EWE victim's checkpoint). ``--references N``
estimates the null from N independent reference models (:mod:`modelsteal.ownership.null`); ``--commitment``
checks the checkpoint against the digest published at training time. Everything a user can get wrong is checked
before any model is queried or any embedding computed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from modelsteal.cli._common import add_device, add_model_flags, load_model_arg, parse_options


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from modelsteal.ownership import available_verifiers

    p = sub.add_parser(
        "verify",
        help="test whether suspect models were stolen from the victim (p-values and verdicts)",
        description="Ownership verification: query each suspect (checkpoint, clone state dict or http(s):// URL) "
        "and test the null hypothesis that it is independent of the victim. The verifier (and dataset "
        "inference's regressor, and the reference models) are fitted once for all suspects.",
        epilog=method_options_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--victim", required=True,
                   help="the victim's model file: a checkpoint (modelsteal train), ONNX, TorchScript, .pt2, "
                        "scikit-learn or python:module:factory (the model flags below describe it)")
    p.add_argument("--suspect", required=True, nargs="+", metavar="SUSPECT",
                   help="one or more: model file (as --victim), clone state dict, or http(s)://host:port")
    p.add_argument("--suspect-format", default=None, metavar="NAME", help="the suspect files' format (default: told "
                   "from each file)")
    p.add_argument("--suspect-spec", default=None, metavar="YAML",
                   help="the suspect files' spec (default: SUSPECT.yaml or model.yaml beside each; the victim's input "
                        "shape otherwise)")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(available_verifiers())}")
    p.add_argument("--key", default=None, help="dawn: the defense's secret key (checks the records were made with it)")
    p.add_argument("--records", default=None, help="dawn: the records file the dawn defense wrote (records=PATH)")
    p.add_argument("--clients", nargs="+", default=None, metavar="CLIENT",
                   help="dawn: use only these clients' records (e.g. the attacker's; default all)")
    p.add_argument("--budget", type=int, default=1000, help="most queries to send to each suspect (default 1000)")
    p.add_argument("--alpha", type=float, default=0.05, help="the test's level (default 0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", default=[], metavar="K=V", help="verifier option (repeatable; "
                   "see the methods' options below)")
    p.add_argument("--references", type=int, default=0, metavar="N",
                   help="estimate the null from N independent reference models trained on the victim's test split "
                   "(architectures mlp, lenet, cnn in turn; cached in --reference-cache)")
    p.add_argument("--reference", nargs="+", default=[], metavar="CKPT",
                   help="independent reference models the owner trained (checkpoints), added to --references")
    p.add_argument("--reference-epochs", type=int, default=30, help="epochs of each trained reference (default 30)")
    p.add_argument("--reference-cache", default=".modelsteal-references",
                   help="where trained references are cached (default .modelsteal-references)")
    p.add_argument("--commitment", default=None, metavar="HEX",
                   help="the commitment digest `modelsteal train` printed and the owner published: the victim's "
                   "checkpoint must match it")
    p.add_argument("--api-key", default=None, help="API key for a suspect URL")
    p.add_argument("--suspect-arch", default=None, help="architecture of a clone state dict (default: the victim's)")
    p.add_argument("--data-dir", default=None, help="where the victim's dataset is (checked against the checkpoint's "
                   "commitment to its private data)")
    p.add_argument("--data-seed", type=int, default=None,
                   help="dataset-inference: the seed that split the victim's data (default: the checkpoint's, else 0)")
    p.add_argument("--json", default=None, help="write the verdicts as JSON here")
    add_device(p)
    add_model_flags(p, dataset=True)
    return p


def method_options_help() -> str:
    """Every verifier's options with their defaults, from the constructors (the epilog of ``verify --help``)."""
    import inspect

    from modelsteal.ownership import available_verifiers, verifier_class

    lines = ["options of each method (--option K=V; --key, --records, --clients, --alpha are flags):"]
    for name in available_verifiers():
        cls = verifier_class(name)
        params = [f"{n}={'(required)' if q.default is inspect.Parameter.empty else q.default!r}"
                  for n, q in inspect.signature(cls.__init__).parameters.items()
                  if n != "self" and q.kind is inspect.Parameter.KEYWORD_ONLY]
        lines.append(f"  {name}: " + ", ".join(params))
        lines.append(f"    null: {cls.null_hypothesis}")
    return "\n".join(lines)


def verifier_options(args: argparse.Namespace) -> dict[str, Any]:
    """The verifier's options from ``--option`` and the dedicated flags (a flag the method does not take is
    refused by the registry's check, naming the valid options)."""
    opts = parse_options(args.option, flag="--option")
    for flag, name in (("--key", "key"), ("--records", "records"), ("--alpha", "alpha"), ("--clients", "clients")):
        value = getattr(args, name)
        if value is None:
            continue
        if name in opts:
            raise ValueError(f"give {name} once: as {flag}, not as --option {name}=...")
        opts[name] = value
    return opts


def _suspect(args: argparse.Namespace, meta: dict, device: object, spec: str) -> Any:
    """The suspect ``spec``: an ``nn.Module`` for a file (white-box methods may use its gradients), else an HTTP
    box."""
    if spec.startswith(("http://", "https://")):
        from modelsteal.serve.client import HTTPBlackBox, split_endpoint

        if not args.api_key and split_endpoint(spec)[1] == "v1":  # a /v2/models/NAME URL may need none
            raise ValueError("a suspect URL needs --api-key (a key of that server)")
        box = HTTPBlackBox(spec, args.api_key)  # a server that is not there fails here, at once
        if meta.get("input_shape") and tuple(meta["input_shape"]) != box.input_shape:
            box.view_inputs_as(tuple(meta["input_shape"]))  # a v2 model of flat features answers images
        return box
    from modelsteal.models.formats import ModelSpec, load_model

    path = Path(spec)
    if not spec.startswith("python:") and not path.is_file():
        raise FileNotFoundError(f"suspect {path} does not exist (a model file, a clone from `modelsteal attack "
                                "--save-clone`, or an http(s):// URL)")
    state = None if spec.startswith("python:") or args.suspect_format else _state_dict(path)
    if state is not None:
        arch = args.suspect_arch or meta.get("arch")
        if not arch:
            raise ValueError(f"suspect {path} is a bare state dict: pass --suspect-arch (the --clone the attack used)")
        return _clone_from_state(state, meta, arch=arch, device=device, path=path)
    loaded = load_model(spec, format=args.suspect_format, spec_file=args.suspect_spec, device=device,
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
    from modelsteal.ownership.commitments import check_published

    cls = verifier_class(args.method)
    check_alpha(args.alpha)
    if args.budget < 1:
        raise ValueError(f"--budget must be a positive integer, got {args.budget}")
    if args.references < 0 or args.reference_epochs < 1:
        raise ValueError("--references must be >= 0 and --reference-epochs >= 1")
    opts = verifier_options(args)
    device = resolve_device(args.device)
    loaded = load_model_arg(args.victim, args, device=device)
    victim, meta = loaded.model, loaded.meta
    commitments = meta.get("commitments")
    if args.commitment is not None:
        check_published(commitments, args.commitment)
    if cls.name == "dawn" and not opts.get("records"):
        raise ValueError("--method dawn needs --records PATH: the watermarked queries the dawn defense recorded "
                         "(modelsteal attack --defense dawn --defense-option records=PATH)")
    from_checkpoint = getattr(cls, "from_checkpoint", None)  # EWE: its triggers live in the victim's checkpoint
    opts = _checked(cls, opts)
    verifier = from_checkpoint(args.victim, device=device, **opts) if from_checkpoint else cls(**opts)
    verifier.commit(commitments)
    verifier.bind(victim)
    suspects = [(spec, _suspect(args, meta, device, spec)) for spec in args.suspect]
    for _, suspect in suspects:
        verifier.check_suspect(suspect, fitted=False)
    verifier.check_budget(args.budget)
    refs = [_suspect(args, meta, device, spec) for spec in args.reference]
    for r in refs:
        verifier.check_suspect(r, fitted=False)
    data = _data(args, meta) if cls.needs_data or args.references else None
    import torch

    start = time.perf_counter()
    if not verifier.fitted:
        verifier.fit(victim, data=data, generator=torch.Generator().manual_seed(args.seed))
    print(f"null hypothesis: {verifier.null_hypothesis}")
    if args.references or refs:
        from modelsteal.ownership.references import train_references

        if args.references:
            refs += train_references(data.x_test, data.y_test, like=victim, count=args.references,
                                     epochs=args.reference_epochs, cache_dir=args.reference_cache, device=device,
                                     progress=True)
        value = verifier.calibrate(refs)
        rule = getattr(getattr(verifier, "reference_null", None), "rule", "")
        print(f"null estimated from {len(refs)} reference models: {value:.4g} ({rule})")
    verdicts = []
    for i, (spec, suspect) in enumerate(suspects, 1):
        if len(suspects) > 1:
            print(f"[{i}/{len(suspects)}] verifying {spec}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        verdict = verifier.verify(suspect, budget=args.budget, seed=args.seed)
        verdicts.append((spec, verdict, time.perf_counter() - t))
    seconds = time.perf_counter() - start
    if len(verdicts) == 1:
        _, verdict, _ = verdicts[0]
        print(f"p-value: {verdict.p_value:.4g}")
        print(f"verdict: {'stolen' if verdict.stolen else 'not shown stolen'} at alpha = {verdict.alpha:g} "
              f"({verdict.queries} queries to the suspect, {seconds:.1f}s)")
    else:
        print(_table(verdicts, alpha=args.alpha))
        print(f"{sum(v.stolen for _, v, _ in verdicts)} of {len(verdicts)} suspects stolen at alpha = "
              f"{args.alpha:g} ({seconds:.1f}s in all)")
    if verifier.commitment_checked:
        print("evidence matches the victim's commitment" + (" and the published digest" if args.commitment else ""))
    else:
        print("note: the victim's checkpoint holds no commitment for this evidence: the claim is unbound (see "
              "docs/ownership.md, commitments)", file=sys.stderr)
    if args.json:
        reports = [{**v.to_dict(), "victim": args.victim, "suspect": spec, "seconds": s, "seed": args.seed,
                    "budget": args.budget} for spec, v, s in verdicts]
        report = reports[0] if len(reports) == 1 else {"verdicts": reports, "seconds": seconds}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _table(verdicts: list[tuple[str, Any, float]], *, alpha: float) -> str:
    """One row per suspect: name, p-value, verdict, queries, seconds."""
    width = max(7, *(len(spec) for spec, _, _ in verdicts))
    lines = [f"{'suspect':<{width}}  {'p-value':>9}  {'verdict':<16}  {'queries':>8}  {'seconds':>7}"]
    for spec, v, s in verdicts:
        word = "stolen" if v.stolen else "not shown stolen"
        lines.append(f"{spec:<{width}}  {v.p_value:>9.3g}  {word:<16}  {v.queries:>8}  {s:>7.2f}")
    return "\n".join(lines)


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
    data = load_dataset(name, data_dir=args.data_dir, seed=seed)
    committed = (meta.get("commitments") or {}).get("private_data")
    if committed is not None:
        from modelsteal.ownership.commitments import private_data_commitment

        if private_data_commitment(data.x_train, data.y_train) != committed:
            where = f"--data-dir {args.data_dir}" if args.data_dir else f"the default {name} folder"
            raise ValueError(f"{where} with data seed {seed} does not hold the data the victim was trained on (its "
                             "training split's fingerprint differs from the checkpoint's): pass the victim's "
                             "--data-dir and --data-seed")
    return data
