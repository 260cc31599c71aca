"""A fitted scikit-learn classifier as a victim: :class:`SklearnVictim` and what the attacks read off it.

:class:`SklearnVictim` is an ``nn.Module`` around a fitted classifier (or a ``Pipeline`` ending in one)
whose ``forward`` returns float64 logits ``z`` with ``softmax(z) = predict_proba``, so it can stand behind
a :class:`~modelsteal.PredictionAPI` like any other model. The logits are taken where the estimator
computes them (``decision_function``, the MLP's output layer) rather than as ``log predict_proba``: the
posteriors are the same, but the tiny class probabilities keep their full relative precision, which exact
equation solving (Tramèr et al., Sec. 4.1.1) relies on.

:func:`victim_kind` says what an estimator is, :func:`raw_linear_parameters` reads the weights of a linear
victim in the raw input space (a scaler in a pipeline folded in) and :func:`fit_victim` trains the victims
the docs and tests use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

ACTIVATIONS = ("relu", "tanh", "logistic", "identity")
VICTIM_KINDS = ("lr", "lr-scaled", "ovr", "ovr-scaled", "mlp", "tree")
_TINY = float(np.finfo(np.float64).tiny)


def _split_pipeline(estimator: Any) -> tuple[Any, Any]:
    """``(preprocessing or None, final estimator)`` of a Pipeline, or ``(None, estimator)``."""
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        return (estimator[:-1] if len(estimator.steps) > 1 else None), estimator.steps[-1][1]
    return None, estimator


def victim_kind(estimator: Any) -> str:
    """What a fitted estimator is, as the attacks see it.

    ``"binary-lr"``, ``"softmax-lr"``, ``"ovr-lr"`` (``OneVsRestClassifier`` of logistic regressions),
    ``"mlp"``, ``"tree"`` or ``"proba"`` (any other classifier with ``predict_proba``). A ``Pipeline`` is
    judged by its final step. Raises ``ValueError`` naming the type of anything else.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.tree import DecisionTreeClassifier

    _, final = _split_pipeline(estimator)
    if not hasattr(final, "classes_"):
        raise ValueError(f"victim of type {type(final).__name__} is not a fitted scikit-learn classifier")
    k = len(final.classes_)
    if isinstance(final, LogisticRegression):
        return "binary-lr" if k == 2 else "softmax-lr"
    if isinstance(final, OneVsRestClassifier) and all(isinstance(e, LogisticRegression) for e in final.estimators_):
        return "binary-lr" if k == 2 else "ovr-lr"
    if isinstance(final, MLPClassifier):
        return "mlp"
    if isinstance(final, DecisionTreeClassifier):
        return "tree"
    if hasattr(final, "predict_proba"):
        return "proba"
    raise ValueError(f"victim of unsupported type {type(final).__name__}: it has no predict_proba")


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -z)


def _activation_np(name: str, a: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(a, 0.0)
    if name == "tanh":
        return np.tanh(a)
    if name == "logistic":
        return 0.5 * (1.0 + np.tanh(0.5 * a))
    if name == "identity":
        return a
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


def sklearn_logits(estimator: Any, x: np.ndarray) -> np.ndarray:
    """Logits ``(N, K)`` float64 of a fitted estimator with ``softmax(logits) = predict_proba(x)``."""
    kind = victim_kind(estimator)
    pre, final = _split_pipeline(estimator)
    x = np.asarray(x, dtype=np.float64)
    h = pre.transform(x) if pre is not None else x
    if kind in ("binary-lr", "softmax-lr", "ovr-lr"):
        if kind == "ovr-lr":
            z = np.column_stack([e.decision_function(h) for e in final.estimators_])
            return _log_sigmoid(z)
        z = np.asarray(final.decision_function(h), dtype=np.float64)
        return np.column_stack([np.zeros_like(z), z]) if z.ndim == 1 else z
    if kind == "mlp":
        a = h
        last = len(final.coefs_) - 1
        for i, (w, b) in enumerate(zip(final.coefs_, final.intercepts_, strict=True)):
            a = a @ w + b
            if i < last:
                a = _activation_np(final.activation, a)
        if final.out_activation_ == "logistic":
            return np.column_stack([np.zeros(len(a)), a[:, 0]])
        return a
    return np.log(np.maximum(np.asarray(estimator.predict_proba(x), dtype=np.float64), _TINY))


class SklearnVictim(nn.Module):
    """A fitted scikit-learn classifier as an ``nn.Module`` returning float64 logits.

    ``softmax(forward(x)) == estimator.predict_proba(x)`` (to float64 rounding), so
    ``PredictionAPI(SklearnVictim(est))`` answers exactly what the estimator would. Carries
    ``input_shape = (d,)`` and ``num_classes``.

    Example::

        api = PredictionAPI(SklearnVictim(LogisticRegression().fit(x, y)), output="probs")
    """

    def __init__(self, estimator: Any) -> None:
        super().__init__()
        self.kind = victim_kind(estimator)
        self.estimator = estimator
        _, final = _split_pipeline(estimator)
        d = getattr(estimator, "n_features_in_", None) or getattr(final, "n_features_in_", None)
        if d is None:
            raise ValueError(f"cannot tell the number of input features of {type(estimator).__name__}")
        self.input_shape = (int(d),)
        self.num_classes = len(final.classes_)

    def forward(self, x: Tensor) -> Tensor:
        z = sklearn_logits(self.estimator, x.detach().cpu().to(torch.float64).numpy())
        return torch.from_numpy(np.ascontiguousarray(z)).to(x.device)

    def extra_repr(self) -> str:
        return f"{type(self.estimator).__name__}, kind={self.kind}, d={self.input_shape[0]}, K={self.num_classes}"


def _affine_map(pre: Any, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, c)`` with ``pre.transform(x) = x A + c``, probed on the basis and checked on random points."""
    base = pre.transform(np.zeros((1, d)))[0]
    a = pre.transform(np.eye(d)) - base
    probe = np.random.default_rng(0).normal(size=(8, d))
    if not np.allclose(pre.transform(probe), probe @ a + base, rtol=1e-9, atol=1e-9):
        raise ValueError(f"preprocessing {type(pre).__name__} is not affine; the victim is not linear in its input")
    return a, base


def raw_linear_parameters(estimator: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(coef, intercept)`` of a linear victim in the raw input space, in scikit-learn's layout.

    ``coef`` is ``(1, d)`` for a binary model and ``(K, d)`` otherwise (one-vs-rest: one row per binary
    model). For a ``Pipeline`` the (affine) preprocessing is folded in, so ``x @ coef.T + intercept``
    equals the final step's ``decision_function`` on the transformed input.
    """
    kind = victim_kind(estimator)
    if kind not in ("binary-lr", "softmax-lr", "ovr-lr"):
        raise ValueError(f"victim of type {type(_split_pipeline(estimator)[1]).__name__} is not a linear model")
    pre, final = _split_pipeline(estimator)
    if hasattr(final, "estimators_"):
        coef = np.vstack([e.coef_ for e in final.estimators_])
        intercept = np.concatenate([np.atleast_1d(e.intercept_) for e in final.estimators_])
    else:
        coef, intercept = np.asarray(final.coef_, dtype=np.float64), np.asarray(final.intercept_, dtype=np.float64)
    if pre is None:
        return coef.copy(), intercept.copy()
    a, c = _affine_map(pre, coef.shape[1])
    return coef @ a.T, intercept + coef @ c


def fit_victim(kind: str, x: np.ndarray, y: np.ndarray, *, seed: int = 0, hidden: int = 20,
               activation: str = "tanh") -> Any:
    """Train a victim of ``kind`` on ``(x, y)``.

    ``"lr"`` logistic regression on raw features (binary or multinomial by the labels), ``"lr-scaled"`` the
    same behind a ``StandardScaler`` (a ``Pipeline``), ``"ovr"``/``"ovr-scaled"`` one-vs-rest logistic
    regression, ``"mlp"`` a scaled ``MLPClassifier`` with one hidden layer of ``hidden`` units, ``"tree"`` a
    fully grown ``DecisionTreeClassifier``. Fitting runs on one BLAS thread: these data sets are small, and
    on a busy machine several BLAS threads slow the many tiny iterations of L-BFGS down by an order of
    magnitude.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeClassifier
    from threadpoolctl import threadpool_limits

    if kind not in VICTIM_KINDS:
        raise ValueError(f"unknown victim kind {kind!r}; known: {', '.join(VICTIM_KINDS)}")
    lr = LogisticRegression(max_iter=5000)
    model: Any = {
        "lr": lr, "lr-scaled": make_pipeline(StandardScaler(), lr),
        "ovr": OneVsRestClassifier(lr), "ovr-scaled": make_pipeline(StandardScaler(), OneVsRestClassifier(lr)),
        "mlp": make_pipeline(StandardScaler(), MLPClassifier((hidden,), activation=activation, max_iter=2000,
                                                             random_state=seed)),
        "tree": DecisionTreeClassifier(random_state=seed),
    }[kind]
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(np.asarray(x, dtype=np.float64), np.asarray(y))
    return model
