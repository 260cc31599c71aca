"""Tabular victims for the Tramèr et al. (USENIX Security 2016) extraction suite.

Three things live here:

- :class:`SklearnVictim`, an ``nn.Module`` around a fitted scikit-learn classifier (or a ``Pipeline``
  ending in one) whose ``forward`` returns float64 logits ``z`` with ``softmax(z) = predict_proba``, so it
  can stand behind a :class:`~modelsteal.PredictionAPI` like any other model. The logits are taken where
  the estimator computes them (``decision_function``, the MLP's output layer) rather than as
  ``log predict_proba``: the posteriors are the same, but the tiny class probabilities keep their full
  relative precision, which exact equation solving (the paper's Sec. 4.1.1) relies on.
- PyTorch equivalents of the victims — :class:`TabularLinear` (binary, multinomial softmax and
  one-vs-rest logistic regression), :class:`TabularMLP` (a multilayer perceptron) and
  :class:`TabularTree` (a decision tree) — built from scratch or converted with :func:`torch_equivalent`.
  The equation-solving and retraining attacks fit the first two as clones.
- :class:`TreeOracle`, the leaf-identity oracle of the paper's Sec. 4.2: a decision tree that answers
  each query with ``[id, label, confidence]`` and, like BigML, accepts *incomplete* queries (missing
  features as NaN), stopping at the first node that splits on a missing feature.

:func:`fit_victim` trains the victims the docs and tests use; :func:`raw_linear_parameters` reads the
weights of a linear victim in the raw input space (a scaler in a pipeline folded in).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelsteal.blackbox import BudgetExceededError

__all__ = [
    "ACTIVATIONS", "VICTIM_KINDS", "SklearnVictim", "Standardize", "TabularLinear", "TabularMLP", "TabularTree",
    "TreeOracle", "fit_victim", "raw_linear_parameters", "torch_equivalent", "victim_kind",
]

ACTIVATIONS = ("relu", "tanh", "logistic", "identity")
VICTIM_KINDS = ("lr", "lr-scaled", "ovr", "ovr-scaled", "mlp", "tree")
_TINY = float(np.finfo(np.float64).tiny)


# ---------------------------------------------------------------------------------------------------
# scikit-learn estimators
# ---------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------
# PyTorch equivalents
# ---------------------------------------------------------------------------------------------------
class Standardize(nn.Module):
    """``(x − center) / scale`` with the statistics stored as float64 buffers."""

    def __init__(self, center: Tensor, scale: Tensor) -> None:
        super().__init__()
        scale = torch.as_tensor(scale, dtype=torch.float64)
        if (scale <= 0).any():
            raise ValueError("Standardize needs a positive scale for every column")
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float64).clone())
        self.register_buffer("scale", scale.clone())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.center) / self.scale


def _normalizer(d: int, center: Tensor | None, scale: Tensor | None) -> Standardize:
    c = torch.zeros(d, dtype=torch.float64) if center is None else torch.as_tensor(center, dtype=torch.float64)
    s = torch.ones(d, dtype=torch.float64) if scale is None else torch.as_tensor(scale, dtype=torch.float64)
    if c.shape != (d,) or s.shape != (d,):
        raise ValueError(f"center and scale must have shape ({d},)")
    return Standardize(c, s)


class TabularLinear(nn.Module):
    """Logistic regression in PyTorch (float64): ``z = W ((x − c)/s) + b`` turned into logits.

    ``mode="binary"``: one output, logits ``[0, z]`` (``P(y=1) = σ(z)``; scikit-learn's binary layout);
    ``mode="softmax"``: ``K`` outputs, logits ``z`` (multinomial regression);
    ``mode="ovr"``: ``K`` outputs, logits ``log σ(z)`` so that ``P(y=k) = σ(z_k) / Σ_j σ(z_j)``
    (one-vs-rest, the normalisation ``OneVsRestClassifier.predict_proba`` applies).
    ``center``/``scale`` standardise the input inside the model (raw units outside).
    """

    def __init__(self, in_features: int, num_classes: int, *, mode: str = "softmax",
                 center: Tensor | None = None, scale: Tensor | None = None) -> None:
        super().__init__()
        if mode not in ("binary", "softmax", "ovr"):
            raise ValueError(f"unknown logistic mode {mode!r}; known: binary, softmax, ovr")
        if num_classes < 2 or (mode == "binary" and num_classes != 2):
            raise ValueError(f"mode {mode!r} cannot have {num_classes} classes")
        self.mode = mode
        self.input_shape = (int(in_features),)
        self.num_classes = int(num_classes)
        self.normalize = _normalizer(in_features, center, scale)
        self.linear = nn.Linear(in_features, 1 if mode == "binary" else num_classes, dtype=torch.float64)

    @property
    def unknowns(self) -> int:
        """Number of parameters ``w, β`` (the paper's Table 4 column)."""
        return self.linear.weight.numel() + self.linear.bias.numel()

    def scores(self, x: Tensor) -> Tensor:
        """The linear scores ``z`` ``(N, 1 or K)``."""
        return self.linear(self.normalize(x.to(torch.float64)))

    def link(self, z: Tensor) -> Tensor:
        """Logits from scores: ``[0, z]`` (binary), ``z`` (softmax) or ``log σ(z)`` (one-vs-rest)."""
        if self.mode == "binary":
            return torch.cat([torch.zeros_like(z), z], dim=1)
        return F.logsigmoid(z) if self.mode == "ovr" else z

    def forward(self, x: Tensor) -> Tensor:
        return self.link(self.scores(x))

    @torch.no_grad()
    def raw_parameters(self) -> tuple[Tensor, Tensor]:
        """``(W, b)`` in raw input units: ``z = x Wᵀ + b``."""
        w = self.linear.weight / self.normalize.scale
        return w.clone(), self.linear.bias - w @ self.normalize.center

    @torch.no_grad()
    def set_raw_parameters(self, weight: Tensor, bias: Tensor) -> TabularLinear:
        """Set ``W, b`` given in raw input units (the standardisation is kept)."""
        weight = torch.as_tensor(weight, dtype=torch.float64).reshape(self.linear.weight.shape)
        bias = torch.as_tensor(bias, dtype=torch.float64).reshape(self.linear.bias.shape)
        self.linear.weight.copy_(weight * self.normalize.scale)
        self.linear.bias.copy_(bias + weight @ self.normalize.center)
        return self


def _activation(name: str) -> nn.Module:
    mods = {"relu": nn.ReLU, "tanh": nn.Tanh, "logistic": nn.Sigmoid, "identity": nn.Identity}
    if name not in mods:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return mods[name]()


class TabularMLP(nn.Module):
    """A multilayer perceptron in PyTorch (float64), scikit-learn's ``MLPClassifier`` shape.

    ``hidden`` sizes with ``activation`` between layers; a binary model has one output (logits ``[0, z]``,
    scikit-learn's logistic output unit), a ``K``-class model ``K`` softmax outputs.
    """

    def __init__(self, in_features: int, num_classes: int, *, hidden: Sequence[int] = (20,),
                 activation: str = "relu", center: Tensor | None = None, scale: Tensor | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"an MLP classifier needs >= 2 classes, got {num_classes}")
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive, got {tuple(hidden)}")
        self.input_shape = (int(in_features),)
        self.num_classes = int(num_classes)
        self.activation = activation
        self.normalize = _normalizer(in_features, center, scale)
        sizes = [in_features, *hidden, 1 if num_classes == 2 else num_classes]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], dtype=torch.float64))
            if i < len(sizes) - 2:
                layers.append(_activation(activation))
        self.layers = nn.Sequential(*layers)

    @property
    def unknowns(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        z = self.layers(self.normalize(x.to(torch.float64)))
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.num_classes == 2 else z


class TabularTree(nn.Module):
    """A decision tree in PyTorch: arrays of split features, thresholds, children and class fractions.

    ``apply(x)`` walks every row down the tree at once (``x[f] <= t`` goes left, scikit-learn's rule);
    with ``incomplete=True`` a NaN feature stops the walk at the node that splits on it and that node's id
    is returned (BigML's incomplete queries, Tramèr et al. Sec. 4.2). ``forward`` returns the log class
    fractions of the reached node.
    """

    def __init__(self, feature: Tensor, threshold: Tensor, left: Tensor, right: Tensor, value: Tensor, *,
                 float32_inputs: bool = False) -> None:
        super().__init__()
        n = len(feature)
        if not (len(threshold) == len(left) == len(right) == len(value) == n) or value.ndim != 2:
            raise ValueError("tree arrays must all have one entry per node; value must be (nodes, K)")
        self.register_buffer("feature", torch.as_tensor(feature, dtype=torch.long))
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float64))
        self.register_buffer("left", torch.as_tensor(left, dtype=torch.long))
        self.register_buffer("right", torch.as_tensor(right, dtype=torch.long))
        value = torch.as_tensor(value, dtype=torch.float64)
        self.register_buffer("value", value / value.sum(dim=1, keepdim=True).clamp_min(_TINY))
        self.float32_inputs = float32_inputs
        self.num_classes = int(value.shape[1])
        self.input_shape = (int(self.feature.max().item()) + 1 if n > 1 else 1,)
        self.depth = self._depth()
        self._lists: tuple[list[int], list[float], list[int], list[int]] | None = None

    @classmethod
    def from_sklearn(cls, tree: Any) -> TabularTree:
        """Convert a fitted ``DecisionTreeClassifier`` (scikit-learn compares float32 inputs)."""
        t = tree.tree_
        out = cls(torch.from_numpy(t.feature.astype(np.int64)), torch.from_numpy(t.threshold),
                  torch.from_numpy(t.children_left.astype(np.int64)),
                  torch.from_numpy(t.children_right.astype(np.int64)),
                  torch.from_numpy(np.asarray(t.value[:, 0, :], dtype=np.float64)), float32_inputs=True)
        out.input_shape = (int(tree.n_features_in_),)
        return out

    def _depth(self) -> int:
        depth = torch.zeros(len(self.feature), dtype=torch.long)
        for node in range(len(self.feature)):  # scikit-learn numbers children after their parent
            for child in (self.left[node], self.right[node]):
                if child >= 0:
                    depth[child] = depth[node] + 1
        return int(depth.max())

    @property
    def is_leaf(self) -> Tensor:
        return self.left < 0

    @property
    def n_leaves(self) -> int:
        return int(self.is_leaf.sum())

    def apply(self, x: Tensor, *, incomplete: bool = False) -> Tensor:
        """Node id ``(N,)`` reached by each row of ``x`` ``(N, d)``."""
        x = torch.as_tensor(x).to(self.threshold.device, torch.float64)
        if self.float32_inputs:
            x = x.to(torch.float32).to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.input_shape[0]:
            raise ValueError(f"tree expects inputs (N, {self.input_shape[0]}), got {tuple(x.shape)}")
        if not incomplete and torch.isnan(x).any():
            raise ValueError("query has missing (NaN) features but incomplete queries are not accepted")
        if len(x) <= 4:  # a few rows (path finding asks one at a time): walk them without tensor overhead
            return torch.tensor([self._walk(row) for row in x.tolist()], dtype=torch.long, device=x.device)
        node = torch.zeros(len(x), dtype=torch.long, device=x.device)
        leaf = self.left < 0
        for _ in range(self.depth):
            v = x.gather(1, self.feature[node].clamp_min(0)[:, None]).squeeze(1)
            nxt = torch.where(v <= self.threshold[node], self.left[node], self.right[node])
            node = torch.where(leaf[node] | torch.isnan(v), node, nxt)
        return node

    def _walk(self, row: list[float]) -> int:
        if self._lists is None:
            self._lists = (self.feature.tolist(), self.threshold.tolist(), self.left.tolist(), self.right.tolist())
        feature, threshold, left, right = self._lists
        node = 0
        while left[node] >= 0:
            v = row[feature[node]]
            if v != v:  # missing: stop at the node that needs it
                break
            node = left[node] if v <= threshold[node] else right[node]
        return node

    def forward(self, x: Tensor) -> Tensor:
        return self.value[self.apply(x)].clamp_min(_TINY).log()


def torch_equivalent(estimator: Any) -> nn.Module:
    """The PyTorch equivalent of a fitted estimator (a ``Pipeline`` of affine scalers folded in).

    ``LogisticRegression`` → :class:`TabularLinear` (binary or softmax), ``OneVsRestClassifier`` of
    logistic regressions → :class:`TabularLinear` (``ovr``), ``MLPClassifier`` → :class:`TabularMLP`,
    ``DecisionTreeClassifier`` → :class:`TabularTree`. The outputs match ``predict_proba``.
    """
    kind = victim_kind(estimator)
    pre, final = _split_pipeline(estimator)
    d = int(estimator.n_features_in_)
    k = len(final.classes_)
    if kind in ("binary-lr", "softmax-lr", "ovr-lr"):
        w, b = raw_linear_parameters(estimator)
        mode = {"binary-lr": "binary", "softmax-lr": "softmax", "ovr-lr": "ovr"}[kind]
        model = TabularLinear(d, k, mode=mode)
        return model.set_raw_parameters(torch.from_numpy(w), torch.from_numpy(b))
    if kind == "mlp":
        if pre is not None:
            a, c = _affine_map(pre, d)
            if not np.allclose(a, np.diag(np.diag(a))) or (np.diag(a) <= 0).any():
                raise ValueError(f"only per-column scalers can be folded into an MLP, not {type(pre).__name__}")
            scale, center = 1.0 / np.diag(a), -c / np.diag(a)
        else:
            scale, center = np.ones(d), np.zeros(d)
        model = TabularMLP(d, k, hidden=tuple(final.hidden_layer_sizes) if np.iterable(final.hidden_layer_sizes)
                           else (int(final.hidden_layer_sizes),), activation=final.activation,
                           center=torch.from_numpy(center), scale=torch.from_numpy(scale))
        linears = [m for m in model.layers if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for lin, w, b in zip(linears, final.coefs_, final.intercepts_, strict=True):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                lin.bias.copy_(torch.from_numpy(b))
        return model
    if kind == "tree":
        if pre is not None:
            raise ValueError("a decision tree behind preprocessing has no direct PyTorch equivalent here")
        return TabularTree.from_sklearn(final)
    raise ValueError(f"no PyTorch equivalent for victim of type {type(final).__name__}")


# ---------------------------------------------------------------------------------------------------
# The leaf-identity oracle
# ---------------------------------------------------------------------------------------------------
class TreeOracle:
    """A decision tree behind a leaf-identity API (Tramèr et al., Sec. 4.2), a :class:`~modelsteal.BlackBox`.

    ``query(x)`` returns ``(N, 3)`` float64 rows ``[id, label, confidence]`` (``(N, 2)`` without
    ``confidence``): the reached node's identifier, its majority class and that class's fraction.
    ``identity="leaf"`` gives every node its own identifier; ``identity="output"`` derives it from the
    answer ``(label, confidence)``, so distinct leaves may share one (the paper's "unique IDs" in its
    Table 6, which cost path finding some predicates). With ``incomplete=True`` NaN features are missing
    values and the walk stops at the first node that splits on one.
    Queries are counted per client; an optional ``budget`` is enforced as in ``PredictionAPI``.

    Example::

        oracle = TreeOracle(DecisionTreeClassifier().fit(x, y), incomplete=True)
        oracle.query(torch.full((1, d), float("nan")))     # the root's [id, label, confidence]
    """

    def __init__(self, tree: Any, *, identity: str = "leaf", confidence: bool = True, incomplete: bool = True,
                 budget: int | None = None) -> None:
        if identity not in ("leaf", "output"):
            raise ValueError(f"unknown identity {identity!r}; known: leaf, output")
        if budget is not None and budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        if isinstance(tree, TabularTree):
            self.tree = tree
        else:
            pre, final = _split_pipeline(tree)
            if victim_kind(tree) != "tree" or pre is not None:
                what = type(tree).__name__ if pre is not None else type(final).__name__
                raise ValueError(f"a leaf-identity oracle needs a bare DecisionTreeClassifier, not a {what}")
            self.tree = TabularTree.from_sklearn(final)
        self.identity = identity
        self.confidence = confidence
        self.incomplete = incomplete
        self.budget = budget
        self.num_classes = self.tree.num_classes
        self.input_shape = self.tree.input_shape
        conf, label = self.tree.value.max(dim=1)
        self._label = label.to(torch.float64)
        self._conf = conf
        if identity == "leaf":
            self._ids = torch.arange(len(label), dtype=torch.float64)
        else:
            keys = [(int(lab), round(float(c), 9)) for lab, c in zip(label, conf, strict=True)]
            table = {k: i for i, k in enumerate(dict.fromkeys(keys))}
            self._ids = torch.tensor([table[k] for k in keys], dtype=torch.float64)
        self._counts: Counter[str] = Counter()

    # -- facts about the victim (for reports, not for attackers) -----------------------------------------
    @property
    def n_leaves(self) -> int:
        return self.tree.n_leaves

    @property
    def unique_leaf_ids(self) -> int:
        return int(self._ids[self.tree.is_leaf].unique().numel())

    @property
    def depth(self) -> int:
        return self.tree.depth

    def predict(self, x: Tensor) -> Tensor:
        """Labels ``(N,)`` of complete inputs (uncounted: for evaluation only)."""
        return self._label[self.tree.apply(torch.as_tensor(x))].long()

    def queries(self, client: str = "default") -> int:
        return self._counts[client]

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        """Answer ``(N, d)`` queries (NaN = missing feature) with ``[id, label, confidence]`` rows."""
        x = torch.as_tensor(x)
        if x.ndim == 1:
            x = x.unsqueeze(0)
        n = int(x.shape[0])
        if self.budget is not None and self._counts[client] + n > self.budget:
            raise BudgetExceededError(f"client {client!r} asked for {n} queries with "
                                      f"{self.budget - self._counts[client]} of its budget of {self.budget} left")
        node = self.tree.apply(x, incomplete=self.incomplete)
        cols = [self._ids[node], self._label[node]] + ([self._conf[node]] if self.confidence else [])
        self._counts[client] += n
        return torch.stack(cols, dim=1)

    def __repr__(self) -> str:
        return (f"TreeOracle(leaves={self.n_leaves}, identity={self.identity}, incomplete={self.incomplete}, "
                f"budget={self.budget})")


# ---------------------------------------------------------------------------------------------------
# Victims used by the docs and tests
# ---------------------------------------------------------------------------------------------------
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
