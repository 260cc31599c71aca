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
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelsteal.cli._common import add_device

ATTACKS = ("equation-solving", "path-finding", "lowd-meek", "retraining")
LINEAR = ("binary-lr", "softmax-lr", "ovr-lr")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from modelsteal.attacks.tramer.oracles import VICTIM_KINDS

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
    p.add_argument("--attack", choices=ATTACKS, default=None)
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
    from modelsteal.blackbox import BudgetExceededError
    from modelsteal.data.tabular import load_tabular
    from modelsteal.experiment.sweep import resolve_device

    check_args(args)
    resolve_device(args.device)
    if args.attack is None and args.fit_victim is None:
        raise ValueError("nothing to do: give --attack (and/or --fit-victim)")
    data = load_tabular(args.dataset, seed=args.data_seed)
    if args.fit_victim is not None:
        import joblib

        from modelsteal.attacks.tramer.oracles import fit_victim

        est = fit_victim(args.fit_victim, data.x_train, data.y_train, seed=args.seed, hidden=args.hidden)
        Path(args.victim).parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(est, args.victim)
        acc = float((est.predict(data.x_test) == data.y_test).mean())
        print(f"saved {type(est).__name__} ({args.fit_victim}) to {args.victim}: test accuracy {acc:.4f}")
        if args.attack is None:
            return 0
    est = _load_victim(args.victim)
    try:
        record = attack_estimator(est, data, args)
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


def check_budget(attack: Any, budget: int | None) -> None:
    """A ``ValueError`` before any query when ``budget`` is below what the attack needs (``d + 1`` for exact
    equation solving)."""
    if budget is None or not hasattr(attack, "min_queries") or budget >= attack.min_queries():
        return
    if attack.method == "exact":
        d = attack.space.dim
        raise ValueError(f"--method exact needs at least d + 1 = {d + 1} queries ({d} features), got --budget {budget}")
    raise ValueError(f"--method {attack.method} needs at least {attack.min_queries()} queries, got --budget {budget}")


def attack_estimator(est: Any, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``args.attack`` on a fitted estimator and return the result record (the JSON's content)."""
    from modelsteal.attacks.tramer.oracles import SklearnVictim, raw_linear_parameters, victim_kind
    from modelsteal.blackbox import PredictionAPI
    from modelsteal.experiment.sweep import resolve_device
    from modelsteal.metrics.extraction import r_test, r_unif

    kind = victim_kind(est)
    d = data.space.dim
    n_in = getattr(est, "n_features_in_", None)
    if n_in is not None and int(n_in) != d:
        raise ValueError(f"the victim takes {n_in} features but dataset {data.name!r} has {d} columns")
    device = resolve_device(args.device)
    final = est.steps[-1][1] if hasattr(est, "steps") else est
    record: dict[str, Any] = {"attack": args.attack, "dataset": data.name, "victim": type(final).__name__,
                              "pipeline": hasattr(est, "steps"), "victim_kind": kind, "seed": args.seed}
    x_test = torch.from_numpy(data.x_test)

    if args.attack == "path-finding":
        from modelsteal.attacks.tramer.oracles import TreeOracle
        from modelsteal.attacks.tramer.path_finding import PathFinding

        if kind != "tree":
            raise ValueError(f"path finding needs a DecisionTreeClassifier victim, got {type(final).__name__}")
        oracle = TreeOracle(est, identity=args.identity, incomplete=args.incomplete)
        attack = PathFinding(space=data.space, epsilon=args.epsilon or 1e-3, incomplete=args.incomplete,
                             snap=not args.no_snap, device=device)
        start = time.perf_counter()
        result = attack(oracle, budget=args.budget or 10**7, seed=args.seed)
        elapsed = time.perf_counter() - start
        clone = result.clone
        record.update(output="leaf-id", distance="0-1", time_s=elapsed, leaves=oracle.n_leaves,
                      unique_ids=oracle.unique_leaf_ids, depth=oracle.depth, leaves_found=result.info["leaves"],
                      complete=result.info["complete"], epsilon=attack.epsilon, incomplete=args.incomplete,
                      identity=args.identity, snap=attack.snap)
        rt = r_test(oracle.predict, clone.predict, x_test, labels=True)
        ru = r_unif(oracle.predict, clone.predict, sampler=data.space.sample, n=args.unif, seed=args.seed, labels=True)
        record.update(queries=result.queries, r_test=rt, r_unif=ru)
        return record

    victim = SklearnVictim(est)
    output = args.output or ("probs" if args.attack == "equation-solving" else "label")
    api = PredictionAPI(victim, output=output)
    k = api.num_classes
    linear_unknowns = d + 1 if k == 2 else k * (d + 1)
    start = time.perf_counter()
    if args.attack == "equation-solving":
        from modelsteal.attacks.tramer.equation_solving import EquationSolving

        if kind not in (*LINEAR, "mlp"):
            raise ValueError(f"equation solving needs a logistic regression or MLP victim, got {type(final).__name__}")
        model = {"binary-lr": "logistic", "softmax-lr": "logistic", "ovr-lr": "ovr", "mlp": "mlp"}[kind]
        options: dict[str, Any] = {}
        if model == "mlp":
            sizes = final.hidden_layer_sizes
            options.update(hidden=tuple(sizes) if np.iterable(sizes) else (int(sizes),), activation=final.activation)
        if args.regularization is not None:
            options["regularization"] = args.regularization
        attack = EquationSolving(space=data.space, model=model, method=args.method, design=args.design,
                                 max_iter=args.max_iter, restarts=args.restarts, device=device, **options)
        if attack.method == "exact" and api.output.kind == "label":
            raise ValueError("exact equation solving needs probabilities, not labels: use --output probs, or "
                             "--attack retraining / lowd-meek for label-only APIs")
        check_budget(attack, args.budget)
        budget = args.budget or (d + 1 if attack.method == "exact" else attack.unknowns(k))
        result = attack(api, budget=budget, seed=args.seed)
        record.update(method=attack.method, unknowns=result.info["unknowns"], solver_time_s=result.info["time_s"],
                      saturated=result.info.get("saturated", 0), probes=result.info.get("probes", 0))
        labels_only = output == "label"
    elif args.attack == "lowd-meek":
        from modelsteal.attacks.tramer.lowd_meek import LowdMeek

        if kind != "binary-lr":
            raise ValueError(f"Lowd-Meek needs a binary linear victim, got {type(final).__name__} ({kind})")
        attack = LowdMeek(space=data.space, epsilon=args.epsilon or 1e-10, device=device)
        result = attack(api, budget=args.budget or 10**7, seed=args.seed)
        record.update(unknowns=d + 1, epsilon=attack.epsilon, scale="unit-norm: labels do not reveal |w|")
        labels_only = True
    else:
        from modelsteal.attacks.tramer.equation_solving import mlp_unknowns
        from modelsteal.attacks.tramer.retraining import DEFAULT_TRAIN, Retraining
        from modelsteal.training import TrainConfig

        model = "linear" if kind in LINEAR else "mlp"
        hidden = (20,)
        if kind == "mlp":
            sizes = final.hidden_layer_sizes
            hidden = tuple(sizes) if np.iterable(sizes) else (int(sizes),)
        train = TrainConfig(epochs=args.epochs, batch_size=DEFAULT_TRAIN.batch_size, lr=args.lr,
                            optimizer=DEFAULT_TRAIN.optimizer)
        attack = Retraining(space=data.space, strategy=args.strategy, model=model, hidden=hidden,
                            rounds=args.rounds, train=train, device=device)
        unknowns = linear_unknowns if model == "linear" else mlp_unknowns(d, k, hidden)
        result = attack(api, budget=args.budget or 10 * unknowns, seed=args.seed)
        record.update(strategy=args.strategy, unknowns=unknowns, clone_model=model)
        labels_only = True
    elapsed = time.perf_counter() - start

    clone = result.clone.cpu().eval()

    def truth(x: Tensor) -> Tensor:
        return api.posteriors(x).cpu()

    def pred(x: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.softmax(clone(x), dim=1).cpu()

    record.update(output=output, distance="0-1" if labels_only else "total-variation", time_s=elapsed,
                  queries=result.queries,
                  r_test=r_test(truth, pred, x_test, labels=labels_only),
                  r_unif=r_unif(truth, pred, sampler=data.space.sample, n=args.unif, seed=args.seed,
                                labels=labels_only),
                  r_test_labels=r_test(truth, pred, x_test, labels=True))
    if "weights" in result.info:
        w, b = result.info["weights"], result.info["bias"]
        record.update(weights=w, bias=b, weights_layout="coef_ (1, d) for binary, (K, d) otherwise; intercept_",
                      weights_space=("raw input: the pipeline's preprocessing is folded in, so x @ weights.T + "
                                     "bias is the final estimator's decision function" if record["pipeline"]
                                     else "input (the estimator's own coef_ and intercept_)"))
        if kind in LINEAR:
            true_w, true_b = raw_linear_parameters(est)
            if args.attack == "lowd-meek":
                norm = float(np.linalg.norm(true_w))
                true_w, true_b = true_w / norm, true_b / norm
            if true_w.shape == tuple(w.shape):
                record.update(weight_error=float(np.abs(w.numpy() - true_w).max()),
                              bias_error=float(np.abs(b.numpy() - true_b).max()))
    return record

