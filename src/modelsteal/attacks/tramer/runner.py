"""One Tramèr et al. attack on a fitted scikit-learn model, measured: the record ``modelsteal tramer`` writes.

Tramèr, Zhang, Juels, Reiter and Ristenpart, "Stealing Machine Learning Models via Prediction APIs", USENIX
Security 2016. :func:`run_tramer` looks the attack up in the attack registry, builds it for the victim with the
setup registered for its class (:func:`tramer_setup`), runs it within the budget and measures the clone with
``R_test`` and ``R_unif`` (the paper's Sec. 3 metrics: :mod:`modelsteal.metrics.extraction`). For linear
victims the record also holds the recovered weights in the estimator's own layout and their error.

Example::

    est = fit_victim("softmax-lr", data.x_train, data.y_train)
    record = run_tramer(est, data, TramerSettings(attack="equation-solving"))
    record["queries"], record["r_test"], record["weight_error"]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modelsteal.attacks.base import Attack, StealResult, attack_class, available_attacks
from modelsteal.attacks.tramer.equation_solving import EquationSolving, mlp_unknowns
from modelsteal.attacks.tramer.lowd_meek import LowdMeek
from modelsteal.attacks.tramer.path_finding import PathFinding
from modelsteal.attacks.tramer.retraining import DEFAULT_TRAIN, Retraining
from modelsteal.blackbox import PredictionAPI
from modelsteal.devices import resolve_device
from modelsteal.metrics.extraction import r_test, r_unif
from modelsteal.tabular import SklearnVictim, TreeOracle, raw_linear_parameters, victim_kind
from modelsteal.training import TrainConfig

LINEAR = ("binary-lr", "softmax-lr", "ovr-lr")


@dataclass(frozen=True)
class TramerSettings:
    """What a run is told (the flags of ``modelsteal tramer``); ``None`` budget, output or epsilon: the attack's
    default (see :func:`tramer_setup`'s setups)."""

    attack: str
    seed: int = 0
    budget: int | None = None
    output: str | None = None
    method: str = "auto"
    design: str = "random"
    regularization: float | None = None
    max_iter: int = 2000
    restarts: int = 1
    epsilon: float | None = None
    incomplete: bool = False
    snap: bool = True
    identity: str = "leaf"
    strategy: str = "adaptive"
    rounds: int = 10
    epochs: int = 100
    lr: float = 0.05
    unif: int = 10_000
    device: str | None = None


@dataclass
class Setup:
    """An attack built for one victim: what it queries (``target``), its budget and output, and the facts its
    record starts with."""

    attack: Attack
    target: Any
    budget: int
    output: str
    labels_only: bool
    facts: dict[str, Any]


#: the setup of each registered tabular attack class (the registry gives the class from the attack's name)
_SETUPS: dict[type[Attack], Callable[..., Setup]] = {}


def tramer_setup(cls: type[Attack]) -> Callable[[Callable[..., Setup]], Callable[..., Setup]]:
    """Register the function that builds ``cls`` for a victim: ``fn(est, kind, data, settings, device) -> Setup``."""

    def deco(fn: Callable[..., Setup]) -> Callable[..., Setup]:
        _SETUPS[cls] = fn
        return fn

    return deco


def _final(est: Any) -> Any:
    return est.steps[-1][1] if hasattr(est, "steps") else est


def _hidden(final: Any) -> tuple[int, ...]:
    sizes = final.hidden_layer_sizes
    return tuple(sizes) if np.iterable(sizes) else (int(sizes),)


def check_budget(attack: Any, budget: int | None) -> None:
    """A ``ValueError`` before any query when ``budget`` is below what the attack needs (``d + 1`` for exact
    equation solving)."""
    if budget is None or not hasattr(attack, "min_queries") or budget >= attack.min_queries():
        return
    if attack.method == "exact":
        d = attack.space.dim
        raise ValueError(f"--method exact needs at least d + 1 = {d + 1} queries ({d} features), got --budget {budget}")
    raise ValueError(f"--method {attack.method} needs at least {attack.min_queries()} queries, got --budget {budget}")


@tramer_setup(PathFinding)
def _path_finding(est: Any, kind: str, data: Any, s: TramerSettings, device: torch.device) -> Setup:
    if kind != "tree":
        raise ValueError(f"path finding needs a DecisionTreeClassifier victim, got {type(_final(est)).__name__}")
    oracle = TreeOracle(est, identity=s.identity, incomplete=s.incomplete)
    attack = PathFinding(space=data.space, epsilon=s.epsilon or 1e-3, incomplete=s.incomplete, snap=s.snap,
                         device=device)
    facts = {"leaves": oracle.n_leaves, "unique_ids": oracle.unique_leaf_ids, "depth": oracle.depth,
             "epsilon": attack.epsilon, "incomplete": s.incomplete, "identity": s.identity, "snap": attack.snap}
    return Setup(attack, oracle, s.budget or 10**7, "leaf-id", True, facts)


@tramer_setup(EquationSolving)
def _equation_solving(est: Any, kind: str, data: Any, s: TramerSettings, device: torch.device) -> Setup:
    final = _final(est)
    if kind not in (*LINEAR, "mlp"):
        raise ValueError(f"equation solving needs a logistic regression or MLP victim, got {type(final).__name__}")
    model = {"binary-lr": "logistic", "softmax-lr": "logistic", "ovr-lr": "ovr", "mlp": "mlp"}[kind]
    options: dict[str, Any] = {}
    if model == "mlp":
        options.update(hidden=_hidden(final), activation=final.activation)
    if s.regularization is not None:
        options["regularization"] = s.regularization
    attack = EquationSolving(space=data.space, model=model, method=s.method, design=s.design, max_iter=s.max_iter,
                             restarts=s.restarts, device=device, **options)
    output = s.output or "probs"
    api = PredictionAPI(SklearnVictim(est), output=output)
    if attack.method == "exact" and api.output.kind == "label":
        raise ValueError("exact equation solving needs probabilities, not labels: use --output probs, or "
                         "--attack retraining / lowd-meek for label-only APIs")
    check_budget(attack, s.budget)
    budget = s.budget or (data.space.dim + 1 if attack.method == "exact" else attack.unknowns(api.num_classes))
    return Setup(attack, api, budget, output, output == "label", {"method": attack.method})


@tramer_setup(LowdMeek)
def _lowd_meek(est: Any, kind: str, data: Any, s: TramerSettings, device: torch.device) -> Setup:
    if kind != "binary-lr":
        raise ValueError(f"Lowd-Meek needs a binary linear victim, got {type(_final(est)).__name__} ({kind})")
    attack = LowdMeek(space=data.space, epsilon=s.epsilon or 1e-10, device=device)
    output = s.output or "label"
    facts = {"unknowns": data.space.dim + 1, "epsilon": attack.epsilon,
             "scale": "unit-norm: labels do not reveal |w|"}
    return Setup(attack, PredictionAPI(SklearnVictim(est), output=output), s.budget or 10**7, output, True, facts)


@tramer_setup(Retraining)
def _retraining(est: Any, kind: str, data: Any, s: TramerSettings, device: torch.device) -> Setup:
    model = "linear" if kind in LINEAR else "mlp"
    hidden = _hidden(_final(est)) if kind == "mlp" else (20,)
    train = TrainConfig(epochs=s.epochs, batch_size=DEFAULT_TRAIN.batch_size, lr=s.lr,
                        optimizer=DEFAULT_TRAIN.optimizer)
    attack = Retraining(space=data.space, strategy=s.strategy, model=model, hidden=hidden, rounds=s.rounds,
                        train=train, device=device)
    output = s.output or "label"
    api = PredictionAPI(SklearnVictim(est), output=output)
    d, k = data.space.dim, api.num_classes
    unknowns = (d + 1 if k == 2 else k * (d + 1)) if model == "linear" else mlp_unknowns(d, k, hidden)
    facts = {"strategy": s.strategy, "unknowns": unknowns, "clone_model": model}
    return Setup(attack, api, s.budget or 10 * unknowns, output, True, facts)


def run_tramer(est: Any, data: Any, settings: TramerSettings) -> dict[str, Any]:
    """Run ``settings.attack`` on the fitted estimator ``est`` (a ``Pipeline`` ending in one is fine) over the
    tabular dataset ``data`` and return the result record: ``queries``, ``r_test``, ``r_unif``, the attack's
    facts and, for linear victims, the recovered ``weights`` and ``bias`` with their error."""
    cls = attack_class(settings.attack)
    if cls not in _SETUPS:
        raise ValueError(f"attack {settings.attack!r} does not extract tabular models; use one of "
                         f"{', '.join(tabular_attacks())}")
    kind = victim_kind(est)
    d = data.space.dim
    n_in = getattr(est, "n_features_in_", None)
    if n_in is not None and int(n_in) != d:
        raise ValueError(f"the victim takes {n_in} features but dataset {data.name!r} has {d} columns")
    device = resolve_device(settings.device)
    record: dict[str, Any] = {"attack": settings.attack, "dataset": data.name, "victim": type(_final(est)).__name__,
                              "pipeline": hasattr(est, "steps"), "victim_kind": kind, "seed": settings.seed}
    setup = _SETUPS[cls](est, kind, data, settings, device)
    start = time.perf_counter()
    result = setup.attack(setup.target, budget=setup.budget, seed=settings.seed)
    elapsed = time.perf_counter() - start
    if isinstance(setup.attack, PathFinding):
        f = setup.facts
        record.update(output=setup.output, distance="0-1", time_s=elapsed, leaves=f["leaves"],
                      unique_ids=f["unique_ids"], depth=f["depth"], leaves_found=result.info["leaves"],
                      complete=result.info["complete"], epsilon=f["epsilon"], incomplete=f["incomplete"],
                      identity=f["identity"], snap=f["snap"])
        _measure_tree(record, setup.target, result, data, settings)
        return record
    record.update(setup.facts)
    if isinstance(setup.attack, EquationSolving):
        record.update(unknowns=result.info["unknowns"], solver_time_s=result.info["time_s"],
                      saturated=result.info.get("saturated", 0), probes=result.info.get("probes", 0))
    _measure(record, setup, result, data, settings, elapsed=elapsed)
    if "weights" in result.info:
        _weights(record, est, kind, result, lowd_meek=isinstance(setup.attack, LowdMeek))
    return record


def tabular_attacks() -> list[str]:
    """The registered attacks :func:`run_tramer` can run, by name."""
    return [n for n in available_attacks() if attack_class(n) in _SETUPS]


def _measure_tree(record: dict[str, Any], oracle: TreeOracle, result: StealResult, data: Any,
                  s: TramerSettings) -> None:
    x_test = torch.from_numpy(data.x_test)
    clone = result.clone
    rt = r_test(oracle.predict, clone.predict, x_test, labels=True)
    ru = r_unif(oracle.predict, clone.predict, sampler=data.space.sample, n=s.unif, seed=s.seed, labels=True)
    record.update(queries=result.queries, r_test=rt, r_unif=ru)


def _measure(record: dict[str, Any], setup: Setup, result: StealResult, data: Any, s: TramerSettings, *,
             elapsed: float) -> None:
    api, labels_only = setup.target, setup.labels_only
    x_test = torch.from_numpy(data.x_test)
    clone = result.clone.cpu().eval()

    def truth(x: Tensor) -> Tensor:
        return api.posteriors(x).cpu()

    def pred(x: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.softmax(clone(x), dim=1).cpu()

    record.update(output=setup.output, distance="0-1" if labels_only else "total-variation", time_s=elapsed,
                  queries=result.queries,
                  r_test=r_test(truth, pred, x_test, labels=labels_only),
                  r_unif=r_unif(truth, pred, sampler=data.space.sample, n=s.unif, seed=s.seed, labels=labels_only),
                  r_test_labels=r_test(truth, pred, x_test, labels=True))


def _weights(record: dict[str, Any], est: Any, kind: str, result: StealResult, *, lowd_meek: bool) -> None:
    w, b = result.info["weights"], result.info["bias"]
    record.update(weights=w, bias=b, weights_layout="coef_ (1, d) for binary, (K, d) otherwise; intercept_",
                  weights_space=("raw input: the pipeline's preprocessing is folded in, so x @ weights.T + "
                                 "bias is the final estimator's decision function" if record["pipeline"]
                                 else "input (the estimator's own coef_ and intercept_)"))
    if kind in LINEAR:
        true_w, true_b = raw_linear_parameters(est)
        if lowd_meek:
            norm = float(np.linalg.norm(true_w))
            true_w, true_b = true_w / norm, true_b / norm
        if true_w.shape == tuple(w.shape):
            record.update(weight_error=float(np.abs(w.numpy() - true_w).max()),
                          bias_error=float(np.abs(b.numpy() - true_b).max()))
