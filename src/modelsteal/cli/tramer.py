"""``modelsteal tramer``: the Tramèr et al. (USENIX Security 2016) attacks on a saved scikit-learn model.

::

    modelsteal tramer --dataset iris --fit-victim tree --victim runs/iris-tree.joblib
    modelsteal tramer --victim runs/iris-tree.joblib --dataset iris --attack path-finding --out r.json

The victim is a fitted scikit-learn estimator saved with joblib (a ``Pipeline`` ending in one is fine);
``--dataset`` names a registered tabular set whose test split gives ``R_test`` and whose feature ranges
give ``R_unif`` (and the attacker's knowledge of the domain). The result JSON holds at least ``queries``,
``r_test``, ``r_unif`` and, for linear victims, the recovered ``weights`` and ``bias`` in the estimator's
own layout (``coef_``, ``intercept_``; for a pipeline, in the raw input space, see ``weights_space``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from modelsteal.cli._common import add_device


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from modelsteal.attacks.tramer.runner import tabular_attacks
    from modelsteal.tabular import VICTIM_KINDS

    p = sub.add_parser(
        "tramer",
        help="Tramèr et al. extraction attacks on a saved scikit-learn model",
        description="Equation solving, decision-tree path finding, Lowd-Meek and label-only retraining "
        "(Tramèr et al., USENIX Security 2016) against a joblib-saved scikit-learn estimator.",
    )
    p.add_argument("--victim", required=True,
                   help="MODEL.joblib: a fitted scikit-learn estimator (written by --fit-victim)")
    p.add_argument("--dataset", required=True, help="a registered tabular dataset (see modelsteal.data.tabular)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the dataset's split (the victim's)")
    p.add_argument("--fit-victim", choices=VICTIM_KINDS, default=None,
                   help="train a victim of this kind on the dataset's training split and save it to --victim")
    p.add_argument("--hidden", type=int, default=20, help="hidden units of a fitted MLP victim")
    p.add_argument("--attack", choices=tabular_attacks(), default=None)
    p.add_argument("--strategy", choices=("uniform", "line-search", "adaptive"), default="adaptive",
                   help="query selection of --attack retraining")
    p.add_argument("--budget", type=int, default=None,
                   help="queries (default: d+1 for exact equation solving, the unknowns for optimisation, "
                   "10x the unknowns for retraining, 10^7 for path finding and Lowd-Meek)")
    p.add_argument("--out", default=None, help="RESULT.json (default: print the result JSON)")
    p.add_argument("--seed", type=int, default=0, help="the attack's seed")
    p.add_argument("--output", default=None,
                   help="API output: probs, rounded-N or label (default: probs for equation solving, label for "
                   "Lowd-Meek and retraining)")
    p.add_argument("--method", choices=("auto", "exact", "optimize"), default="auto", help="equation solving")
    p.add_argument("--design", choices=("random", "axis"), default="random", help="queries of exact solving")
    p.add_argument("--regularization", type=float, default=None, help="L2 weight of equation solving by optimisation")
    p.add_argument("--max-iter", type=int, default=2000, help="solver iterations of equation solving")
    p.add_argument("--restarts", type=int, default=1, help="random initialisations of an MLP's equation solving")
    p.add_argument("--epsilon", type=float, default=None,
                   help="line-search granularity: relative to each feature's range for path finding "
                   "(default 1e-3), to each segment for Lowd-Meek (default 1e-10)")
    p.add_argument("--incomplete", action="store_true", help="path finding: top-down with incomplete queries")
    p.add_argument("--no-snap", action="store_true", help="path finding: no shortest-decimal probe per threshold")
    p.add_argument("--identity", choices=("leaf", "output"), default="leaf",
                   help="tree oracle identifiers: per leaf, or derived from (label, confidence)")
    p.add_argument("--rounds", type=int, default=10, help="adaptive retraining rounds r")
    p.add_argument("--epochs", type=int, default=100, help="retraining epochs")
    p.add_argument("--lr", type=float, default=0.05, help="retraining learning rate (Adam)")
    p.add_argument("--unif", type=int, default=10_000, help="uniform points for R_unif")
    add_device(p)
    return p


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _load_victim(path: str) -> Any:
    """The scikit-learn estimator saved at ``path``, read by the model-format registry's scikit-learn reader; a
    ``ValueError`` says what the file is when it is not one (another format the registry tells, or a file that
    does not unpickle)."""
    from modelsteal.models.formats import format_class, sniff_format
    from modelsteal.models.formats.sklearn import read_estimator

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"victim file {path} does not exist (write one with --fit-victim KIND)")
    try:
        fmt = sniff_format(path)
    except ValueError:
        fmt = None  # not told: unpickling it says why it is not a model
    if fmt is not None and fmt != "sklearn":
        what = "a torch checkpoint" if fmt == "checkpoint" else format_class(fmt).description
        raise ValueError(f"{path} is {what}, not a scikit-learn model; tramer attacks scikit-learn models saved "
                         f"with joblib (image models: modelsteal attack --target {path})")
    return read_estimator(path)


#: library option spellings in the attacks' messages → the flags of this command
_FLAGS = {"method='optimize'": "--method optimize", "method='exact'": "--method exact",
          "raise the budget": "raise --budget"}


def cli_message(message: str) -> str:
    """An attack's message with its Python option spellings replaced by this command's flags."""
    for spelling, flag in _FLAGS.items():
        message = message.replace(spelling, flag)
    return message


def check_args(args: argparse.Namespace) -> None:
    """Reject nonsensical numbers before any data is loaded."""
    for flag in ("budget", "unif", "hidden", "rounds", "max_iter", "restarts"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
    if args.epsilon is not None and not args.epsilon > 0:
        raise ValueError(f"--epsilon must be > 0, got {args.epsilon}")


def run(args: argparse.Namespace) -> int:
    from modelsteal.attacks.tramer.runner import TramerSettings, run_tramer
    from modelsteal.blackbox import BudgetExceededError
    from modelsteal.data.tabular import load_tabular
    from modelsteal.devices import resolve_device

    check_args(args)
    resolve_device(args.device)
    if args.attack is None and args.fit_victim is None:
        raise ValueError("nothing to do: give --attack (and/or --fit-victim)")
    data = load_tabular(args.dataset, seed=args.data_seed)
    if args.fit_victim is not None:
        import joblib

        from modelsteal.tabular import fit_victim

        est = fit_victim(args.fit_victim, data.x_train, data.y_train, seed=args.seed, hidden=args.hidden)
        Path(args.victim).parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(est, args.victim)
        acc = float((est.predict(data.x_test) == data.y_test).mean())
        print(f"saved {type(est).__name__} ({args.fit_victim}) to {args.victim}: test accuracy {acc:.4f}")
        if args.attack is None:
            return 0
    est = _load_victim(args.victim)
    settings = TramerSettings(
        attack=args.attack, seed=args.seed, budget=args.budget, output=args.output, method=args.method,
        design=args.design, regularization=args.regularization, max_iter=args.max_iter, restarts=args.restarts,
        epsilon=args.epsilon, incomplete=args.incomplete, snap=not args.no_snap, identity=args.identity,
        strategy=args.strategy, rounds=args.rounds, epochs=args.epochs, lr=args.lr, unif=args.unif,
        device=args.device)
    try:
        record = run_tramer(est, data, settings)
    except BudgetExceededError as e:
        given = f"--budget {args.budget}" if args.budget else "the default budget"
        raise ValueError(f"{given} is too small for {args.attack}: {e}; pass a larger --budget") from None
    except ValueError as e:
        raise ValueError(cli_message(str(e))) from None
    text = json.dumps(_jsonable(record), indent=2)
    if args.out is None:
        print(text)
        return 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(f"{args.attack} on {record['victim']} ({args.dataset}): {record['queries']} queries, "
          f"1-R_test {1 - record['r_test']:.4%}, 1-R_unif {1 - record['r_unif']:.4%} -> {args.out}")
    return 0
