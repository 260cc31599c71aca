"""``modelsteal attack``: run any registered attack against a checkpoint (in-process) or a live URL."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from modelsteal._registry import check_options
from modelsteal.attacks.base import Attack, StealResult, attack_class, image_attacks
from modelsteal.blackbox import BlackBox, PredictionAPI
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
        "scikit-learn or python:module:factory, served in-process, optionally behind --defense) or an http(s):// "
        "URL of `modelsteal serve` (with --key). The attack cannot tell the two apart.",
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
    p.add_argument("--save-clone", default=None, help="write the clone's state_dict here")
    p.add_argument("--json", default=None, help="write the result as JSON here")
    add_device(p)
    add_model_flags(p)
    return p


def _blackbox(args: argparse.Namespace, device: object) -> tuple[BlackBox, object, dict]:
    """The target as a black box, the victim model when it is a checkpoint (else None), and its metadata."""
    if args.target.startswith(("http://", "https://")):
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
        defense = bb.info.get("defense") or {}
        return bb, None, {"dataset": bb.info.get("dataset"), "arch": bb.info.get("arch"),
                          "defense": defense.get("description") or defense.get("name") or "unknown"}
    loaded = load_model_arg(args.target, args, device=device)
    model, meta = loaded.model, loaded.meta
    defense = make_defense(args.defense, strength=args.strength, **parse_options(args.defense_option))
    fit_defense(defense, model, dataset=meta.get("dataset"))
    api = PredictionAPI(model, defense=defense, output=args.output, device=device)
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


def _steal(attack: Attack, blackbox: BlackBox, *, budget: int, seed: int) -> StealResult:
    """Run the attack; a server that refuses to answer mid-attack is a one-line error, not a traceback."""
    from modelsteal.serve.client import KeyBudgetExhaustedError, ServerError, ServerUnreachableError

    try:
        return attack(blackbox, budget=budget, seed=seed)
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


def run(args: argparse.Namespace) -> int:
    if args.budget < 1:
        raise ValueError(f"--budget must be positive, got {args.budget}")
    options = attack_options(args.attack_option, attack=args.attack)
    device = resolve_device(args.device)
    blackbox, victim, meta = _blackbox(args, device)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise ValueError("pass --dataset NAME to say which test split measures the clone")
    data = load_dataset(dataset, data_dir=args.data_dir)
    if tuple(data.input_shape) != tuple(blackbox.input_shape) and hasattr(blackbox, "view_inputs_as"):
        blackbox.view_inputs_as(tuple(data.input_shape))  # e.g. a v2 model of 64 features answers (1, 8, 8) digits
    if tuple(data.input_shape) != tuple(blackbox.input_shape):
        raise ValueError(
            f"dataset {dataset} has inputs {data.input_shape}, the target takes {tuple(blackbox.input_shape)}"
        )
    source, _, rest = args.transfer.partition(":")
    name, _, split = rest.partition(":")
    tcfg = TransferConfig(
        source=source,
        dataset=name or None,
        split=split or "train",
        classes=args.transfer_classes,
        data_dir=args.data_dir,
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
        "queries": result.queries,
        "seed": args.seed,
        "dataset": data.name,
    }
    if victim is not None:  # the defender's side, on the same test split (after the attack: same answers)
        cost = defense_cost(blackbox, data.x_test, data.y_test)
        out.update({k: cost[k] for k in ("victim_accuracy", "defender_accuracy", "l1_mean")})
    out["attacker_accuracy"] = attacker_accuracy(result.clone, data.x_test, data.y_test, device=device)
    if victim is not None:
        out["fidelity"] = fidelity(result.clone, data.x_test, blackbox.posteriors(data.x_test).cpu(), device=device)
    for k, v in out.items():
        print(f"{k}: {_show(k, v)}")
    if args.save_clone:
        import torch

        Path(args.save_clone).parent.mkdir(parents=True, exist_ok=True)
        torch.save(result.clone.state_dict(), args.save_clone)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def _show(key: str, value: object) -> str:
    if key.endswith(("accuracy", "fidelity")):
        return f"{100 * value:.2f}%"
    return f"{value:.4f}" if key == "l1_mean" else str(value)
