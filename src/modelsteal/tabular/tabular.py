"""PyTorch equivalents of the tabular victims (float64): logistic regression, an MLP, a decision tree.

:class:`TabularLinear` (binary, multinomial softmax and one-vs-rest logistic regression) and
:class:`TabularMLP` (scikit-learn's ``MLPClassifier`` shape) are the clones the equation-solving and
retraining attacks fit; :class:`TabularTree` walks a decision tree's arrays, with BigML's *incomplete*
queries (a missing feature stops the walk). :func:`torch_equivalent` converts a fitted scikit-learn
estimator into the matching module, whose outputs equal ``predict_proba``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelsteal.tabular.sklearn_victim import (
    _TINY,
    ACTIVATIONS,
    _affine_map,
    _split_pipeline,
    raw_linear_parameters,
    victim_kind,
)


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
