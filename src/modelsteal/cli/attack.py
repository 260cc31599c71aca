"""``modelsteal attack``: run any registered attack against a checkpoint (in-process) or a live URL."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from modelsteal._registry import check_options
from modelsteal.attacks.base import Attack, StealResult, attack_class, image_attacks
from modelsteal.blackbox import BlackBox, PredictionAPI, QueryRefusedError
from modelsteal.cli._common import add_device, add_model_flags, load_model_arg, model_flags_given, number, parse_options
from modelsteal.data import load_dataset
from modelsteal.defenses import make_defense
from modelsteal.defenses.base import fit_defense
from modelsteal.devices import resolve_device
from modelsteal.experiment.config import AttackConfig, TransferConfig
from modelsteal.experiment.points import build_attack
from modelsteal.experiment.transfer import build_transfer_set, seed_set
from modelsteal.experiment.validate import ATTACK_PROVIDED
from modelsteal.metrics import attacker_accuracy, defense_cost, fidelity


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "attack",
        help="steal a model behind a checkpoint or an HTTP prediction API",
        description="Aim an attack at a black box: a model file (a checkpoint, ONNX, TorchScript, .pt2, "
        "scikit-learn or python:module:factory, served in-process, optionally behind --defense and watched by "
        "--detector) or an http(s):// URL of `modelsteal serve` (with --key). "
        "The attack cannot tell the two apart. Against a detector the report says whether (and after how many "
        "queries) the attacker was detected. Exit codes: 0 done; 2 a mistake in the command; 3 the target's "
        "detector refused the attacker (--response refuse): what it had bought is reported, --json is written, "
        "no clone is trained; 1 anything else (the server stopped answering, the key's budget ran out).",
    )
    p.add_argument("--target", required=True,
                   help="model file (see --format) or http(s)://host:port of a modelsteal server")
    p.add_argument("--key", default=None, help="API key for an HTTP target")
    p.add_argument("--protocol", default="auto", choices=["auto", "v1", "v2"],
                   help="wire protocol of an HTTP target: v1 (modelsteal's /v1/predict) or v2 (the Open Inference "
                        "Protocol of Triton, KServe, MLServer, TorchServe); auto: v2 for a /v2/models/NAME URL")
    p.add_argument("--model-name", default=None, help="model name on a v2 server (or give /v2/models/NAME in --target)")
    p.add_argument(
        "--attack",
        default="knockoff",
        help=f"one of: {', '.join(image_attacks())} (tabular attacks: modelsteal tramer)",
    )
    p.add_argument("--attack-option", action="append", default=[], metavar="K=V", help="attack option (repeatable)")
    p.add_argument("--budget", type=int, required=True, help="number of queries (input rows) to spend")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--transfer",
        default="sample-patches",
        help="attacker data: sample-patches, or dataset:NAME[:SPLIT] (default split train)",
    )
    p.add_argument(
        "--transfer-classes", type=int, nargs="+", default=None, help="only these classes of the transfer dataset"
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="dataset whose test split measures the clone (default: the checkpoint's dataset)",
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--clone", default=None, help="clone architecture (default: the victim's, else lenet)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.5)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--labels", default="soft", choices=["soft", "argmax"], help="train on posteriors or top-1 labels")
    p.add_argument("--defense", default="none", help="defense in front of a checkpoint target")
    p.add_argument("--strength", type=number, default=None, help="the defense's strength parameter")
    p.add_argument("--defense-option", action="append", default=[], metavar="K=V")
    p.add_argument("--output", default="probs", help="API output format for a checkpoint target")
    p.add_argument("--detector", default="none",
                   help="detector watching a checkpoint target's queries, e.g. prada, msp (a server has its own)")
    p.add_argument("--detector-option", action="append", default=[], metavar="K=V", help="detector option")
    p.add_argument("--detector-tnr", default="0.95", metavar="RATE",
                   help="calibrate the detector for this true-negative rate on the victim's validation split "
                   "(default 0.95); 'none' keeps its own threshold (prada: 1 - delta)")
    p.add_argument("--response", default=None, choices=IN_PROCESS_RESPONSES,
                   help="what a checkpoint target answers to flagged queries (default none: flags are only "
                   "counted); refuse ends the attack (exit code 3)")
    p.add_argument("--save-clone", default=None, help="write the clone's state_dict here")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    add_device(p)
    add_model_flags(p)
    return p


#: the responses ``attack`` can put in front of a checkpoint target (misinform needs a model: `modelsteal serve`)
IN_PROCESS_RESPONSES = ("none", "shuffle", "refuse")
#: the exit code of an attacker refused by the target's detector
REFUSED_EXIT = 3


def _is_http(target: str) -> bool:
    return target.startswith(("http://", "https://"))


def check_detector_args(args: argparse.Namespace) -> Any:
    """The ``--detector`` of a checkpoint target, built but not fitted (``None`` without one), its flags checked
    before any work: one-line ``ValueError``s."""
    from modelsteal.detectors import make_detector

    name = args.detector.strip().lower()
    given = [f for f, v in (("--detector-option", args.detector_option), ("--response", args.response)) if v]
    if name == "none":
        if given:
            raise ValueError(f"{given[0]} needs --detector NAME (e.g. prada): without a detector no query is flagged")
        return None
    if _is_http(args.target):
        raise ValueError("--detector applies to checkpoint targets; a server watches its clients with its own "
                         "detector (its flags are read from /v1/usage)")
    detector = make_detector(args.detector, **parse_options(args.detector_option, flag="--detector-option"))
    if detector.needs_outliers:
        raise ValueError(f"detector {detector.name!r} is trained against an outlier set, which `attack` cannot give "
                         "it: build its PredictionAPI from Python")
    if args.detector_tnr.strip().lower() != "none":
        try:
            tnr = float(args.detector_tnr)
        except ValueError:
            raise ValueError(f"--detector-tnr expects a rate in (0, 1) or 'none', got {args.detector_tnr!r}") from None
        if not 0 < tnr < 1:
            raise ValueError(f"--detector-tnr must lie in (0, 1), got {args.detector_tnr}")
    return detector


def _blackbox(args: argparse.Namespace, device: object, detector: Any = None) -> tuple[BlackBox, object, dict]:
    """The target as a black box, the victim model when it is a checkpoint (else None), and its metadata."""
    if _is_http(args.target):
        if args.defense != "none":
            raise ValueError("--defense applies to checkpoint targets; a server chooses its own defense")
        if model_flags_given(args):
            raise ValueError(f"{model_flags_given(args)[0]} applies to model files; a server describes its own model")
        from modelsteal.serve.client import HTTPBlackBox, split_endpoint

        _, protocol, _ = split_endpoint(args.target, protocol=args.protocol, model_name=args.model_name)
        if not args.key and protocol == "v1":
            raise ValueError("an HTTP target needs --key (create one with `modelsteal keys create`)")
        bb = HTTPBlackBox(args.target, args.key, protocol=args.protocol, model_name=args.model_name)  # fails at once
        check_key_budget(bb.usage(), budget=args.budget)  # an invalid key fails here, before any work
        check_transfer(args, args.dataset or bb.info.get("dataset"))
        defense = bb.info.get("defense") or {}
        return bb, None, {"dataset": bb.info.get("dataset"), "arch": bb.info.get("arch"),
                          "defense": defense.get("description") or defense.get("name") or "unknown"}
    loaded = load_model_arg(args.target, args, device=device)
    model, meta = loaded.model, loaded.meta
    check_transfer(args, args.dataset or meta.get("dataset"))  # before a defense or detector is fitted
    defense = make_defense(args.defense, strength=args.strength, **parse_options(args.defense_option))
    fit_defense(defense, model, dataset=meta.get("dataset"))
    if detector is not None:
        from modelsteal.serve.config import fit_detector

        tnr = None if args.detector_tnr.strip().lower() == "none" else float(args.detector_tnr)
        fit_detector(detector, model, dataset=meta.get("dataset"), tnr=tnr, data_dir=args.data_dir)
    api = PredictionAPI(model, defense=defense, output=args.output, device=device, detector=detector,
                        response=args.response or "none")
    return api, model, {**meta, "defense": "none" if defense is None else repr(defense)}


def check_key_budget(usage: dict, *, budget: int) -> None:
    """Refuse to start when the key's ``/v1/usage`` says fewer than ``budget`` queries are left."""
    remaining = usage.get("remaining")
    if remaining is None or remaining >= budget:
        return
    who = f"key {usage.get('client')!r}" if usage.get("client") else "this key"
    spent = f"{usage.get('queries')} of its budget of {usage.get('budget')}"
    if remaining <= 0:
        raise ValueError(f"{who} has already spent its budget ({spent} queries); ask the server's operator for "
                         "a new key or a larger budget")
    raise ValueError(f"{who} has {remaining} queries left ({spent} spent), fewer than --budget {budget}; "
                     f"pass --budget {remaining} or ask for a larger budget")


def _steal(attack: Attack, blackbox: BlackBox, *, budget: int, seed: int) -> StealResult | QueryRefusedError:
    """Run the attack; a server that refuses to answer mid-attack is a one-line error, not a traceback. A
    detector's refusal is returned (with what was bought, ``.partial``), for the caller to report."""
    from modelsteal.serve.client import KeyBudgetExhaustedError, ServerError, ServerUnreachableError

    try:
        return attack(blackbox, budget=budget, seed=seed)
    except QueryRefusedError as e:
        return e
    except KeyBudgetExhaustedError as e:
        got = getattr(blackbox, "total_queries", 0)
        raise ValueError(f"the key's budget ran out after {got} of --budget {budget} queries ({e}); someone "
                         "else may be using this key: check `/v1/usage`; no clone was trained") from None
    except ServerError as e:
        got = getattr(blackbox, "total_queries", 0)
        raise ServerUnreachableError(
            f"the server stopped answering after {got} of --budget {budget} queries: {e}"
        ) from None


#: attack options that have a flag of their own: ``--attack-option labels=argmax`` would silently override it
FLAG_OPTIONS = {"labels": "--labels", "clone": "--clone", "device": "--device"}


def attack_options(pairs: list[str], *, attack: str) -> dict[str, object]:
    """The ``--attack-option K=V`` pairs as a dict, checked against ``attack``'s constructor; one that
    duplicates a dedicated flag is a ``ValueError`` naming the flag to use (and such options are not listed
    as valid ones)."""
    options = parse_options(pairs, flag="--attack-option")
    for key, flag in FLAG_OPTIONS.items():
        if key in options:
            raise ValueError(f"--attack-option {key}={options[key]} duplicates {flag}; pass {flag} "
                             f"{options[key]} instead")
    check_options(attack_class(attack), options, kind="attack", provided=(*ATTACK_PROVIDED, *FLAG_OPTIONS))
    return options


def detection_report(blackbox: BlackBox, *, refused: bool) -> dict[str, Any]:
    """``detected``, ``queries_to_detection`` and ``flagged_queries`` against a detector: exact for a checkpoint
    target (the API's own counts), from ``/v1/usage`` for a server (``queries_to_detection`` only when the server
    reports it; a refusal is a detection); empty when no detector watches the target."""
    if isinstance(blackbox, PredictionAPI):
        if blackbox.detector is None:
            return {}
        from modelsteal.experiment.detection import detection_facts

        facts = detection_facts(blackbox)
        return {"detector": facts["detector"], "refused": refused,
                **{k: facts[k] for k in ("detected", "queries_to_detection", "flagged_queries")}}
    info = getattr(blackbox, "info", {}) or {}
    detector = (info.get("detector") or {}).get("name", "none")
    if detector == "none":
        return {}
    usage = blackbox.usage()
    flagged = usage.get("flagged")
    return {"detector": detector, "refused": refused, "detected": bool(refused or flagged),
            "queries_to_detection": usage.get("queries_to_detection"), "flagged_queries": flagged,
            "server_queries": usage.get("queries")}


def _report_refusal(args: argparse.Namespace, e: QueryRefusedError, out: dict[str, Any], blackbox: BlackBox) -> int:
    """Print what the refused attacker had bought (stdout), write ``--json``, say it in one line (stderr)."""
    import sys

    from modelsteal.cli.main import close_progress_bars

    bought = e.partial.queries if e.partial is not None else getattr(blackbox, "total_queries", 0)
    out.update({"queries": bought, **detection_report(blackbox, refused=True), "refused_batch_rows": e.rows,
                "refused_batch_flagged": e.flagged, "refusal": str(e)})
    close_progress_bars()
    for k, v in out.items():
        if k != "refusal":
            print(f"{k}: {_show(k, v)}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    what = (f"detector {e.detector!r} flagged {e.flagged} of the batch's {e.rows} rows" if e.flagged is not None
            else str(e))
    print(f"modelsteal attack: refused: the target's {what} after {bought} of --budget {args.budget} queries "
          f"were answered; no clone trained{'; wrote ' + args.json if args.json else ''} (exit code "
          f"{REFUSED_EXIT})", file=sys.stderr)
    return REFUSED_EXIT


def run(args: argparse.Namespace) -> int:
    if args.budget < 1:
        raise ValueError(f"--budget must be positive, got {args.budget}")
    options = attack_options(args.attack_option, attack=args.attack)
    detector = check_detector_args(args)
    device = resolve_device(args.device)
    blackbox, victim, meta = _blackbox(args, device, detector)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise ValueError("pass --dataset NAME to say which test split measures the clone")
    source, _, rest = args.transfer.partition(":")
    name, _, split = rest.partition(":")
    tcfg = TransferConfig(
        source=source,
        dataset=name or None,
        split=split or "train",
        classes=args.transfer_classes,
        data_dir=args.data_dir,
    )
    data = load_dataset(dataset, data_dir=args.data_dir)
    if tuple(data.input_shape) != tuple(blackbox.input_shape) and hasattr(blackbox, "view_inputs_as"):
        blackbox.view_inputs_as(tuple(data.input_shape))  # e.g. a v2 model of 64 features answers (1, 8, 8) digits
    if tuple(data.input_shape) != tuple(blackbox.input_shape):
        raise ValueError(
            f"dataset {dataset} has inputs {data.input_shape}, the target takes {tuple(blackbox.input_shape)}"
        )
    transfer = build_transfer_set(tcfg, victim_data=data, seed=args.seed)
    acfg = AttackConfig(
        name=args.attack,
        clone=args.clone,
        train={"epochs": args.epochs, "lr": args.lr, "momentum": args.momentum, "optimizer": args.optimizer},
        options={"labels": args.labels, "progress": True, **options},
    )
    attack = build_attack(
        acfg,
        victim_arch=meta.get("arch") or ("lenet" if len(data.input_shape) == 3 else "mlp"),
        transfer=transfer,
        seeds=seed_set(tcfg, victim_data=data, seed=args.seed),
        device=device,
    )
    result = _steal(attack, blackbox, budget=args.budget, seed=args.seed)
    out = {
        "attack": args.attack,
        "target": args.target,
        "defense": meta["defense"],
        "budget": args.budget,
        "queries": None,
        "seed": args.seed,
        "dataset": data.name,
    }
    if isinstance(result, QueryRefusedError):
        return _report_refusal(args, result, out, blackbox)
    out["queries"] = result.queries
    out.update(detection_report(blackbox, refused=False))  # before the defender's side below queries the API
    if victim is not None:  # the defender's side, on the same test split (after the attack: same answers)
        watching, blackbox.detector = blackbox.detector, None  # the defense's cost, not another client's flags
        try:
            cost = defense_cost(blackbox, data.x_test, data.y_test)
        finally:
            blackbox.detector = watching
        out.update({k: cost[k] for k in ("victim_accuracy", "defender_accuracy", "l1_mean")})
    x_test, y_test = held_out(result, data, out)
    out["attacker_accuracy"] = attacker_accuracy(result.clone, x_test, y_test, device=device) if len(x_test) else None
    if victim is not None and len(x_test):
        out["fidelity"] = fidelity(result.clone, x_test, blackbox.posteriors(x_test).cpu(), device=device)
    for k, v in out.items():
        print(f"{k}: {_show(k, v)}")
    if args.save_clone:
        import torch

        Path(args.save_clone).parent.mkdir(parents=True, exist_ok=True)
        torch.save(result.clone.state_dict(), args.save_clone)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def check_transfer(args: argparse.Namespace, dataset: str | None) -> None:
    """Refuse a ``--transfer`` drawn from the test split that measures the clone (``dataset``), before any work."""
    source, _, rest = args.transfer.partition(":")
    name, _, split = rest.partition(":")
    if dataset and source == "dataset" and (split or "train") in ("test", "all") and _same_name(name or dataset,
                                                                                                 dataset):
        raise ValueError(f"--transfer {args.transfer} draws the attacker's queries from the test split of {dataset}, "
                         f"which measures the clone; use dataset:{name or dataset}:train (or :val), or measure on "
                         "another dataset with --dataset NAME")


def _same_name(a: str, b: str) -> bool:
    return a.strip().lower().replace("_", "-") == b.strip().lower().replace("_", "-")


def held_out(result: StealResult, data: Any, out: dict[str, Any]) -> tuple[Any, Any]:
    """The test inputs (and labels) that the attack did not query, which measure the clone; records in ``out``
    how many were queried and how many remain, and says so on stderr when some were left out."""
    import sys

    from modelsteal.experiment.transfer import queried_rows

    queried = (queried_rows(data.x_test, result.transfer_x) if result.transfer_x is not None
               else torch.zeros(len(data.x_test), dtype=torch.bool))
    n, hit = len(data.x_test), int(queried.sum())
    out.update({"test_inputs_queried": hit, "held_out": n - hit})
    if hit:
        print(f"modelsteal attack: warning: {hit} of the {n} test inputs of {data.name} were among the attack's "
              f"queries; accuracy and fidelity are measured on the other {n - hit}", file=sys.stderr)
    keep = ~queried
    return data.x_test[keep], data.y_test[keep]


def _show(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "unknown (the server does not report it)" if key == "queries_to_detection" else "none"
    if key.endswith(("accuracy", "fidelity")):
        return f"{100 * value:.2f}%"
    return f"{value:.4f}" if key == "l1_mean" else str(value)
