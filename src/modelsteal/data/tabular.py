"""Tabular data sets for the Tramèr et al. (USENIX Security 2016) extraction suite.

The registry holds scikit-learn's bundled ``iris``, ``digits``, ``wine`` and ``breast-cancer`` and its
generated ``circles``, ``moons``, ``blobs`` and ``five-class`` sets (the paper's synthetic sets, its
Table 3), each with explicit train/test splits. Derived names:

- ``NAME-binary`` for a multi-class set: the first ``⌈K/2⌉`` classes become class 0, the rest class 1
  (the paper's binary benchmark models need two classes);
- ``NAME-cat`` and ``NAME-onehot``: every other column (1, 3, 5, …) is discretised into quantile bins of
  the training split and kept as a category code (``-cat``) or expanded into one-hot columns
  (``-onehot``), so decision trees meet categorical features (the paper's Sec. 4.1, ``CATEGORY_SPLIT``).
  These also combine with ``-binary`` (``iris-binary-cat``).

Features keep their original units: scaling belongs to the model (a scikit-learn ``Pipeline`` is a valid
victim). What an attacker is assumed to know of the input domain — each feature's range and which
columns are categorical — is a :class:`FeatureSpace`; ``R_unif`` draws its uniform points from it.

Example::

    data = load_tabular("iris", seed=0)
    data.x_train.shape, data.x_test.shape      # (112, 4), (38, 4)
    u = data.space.sample(1000, generator=torch.Generator().manual_seed(0))   # (1000, 4) float64
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["Feature", "FeatureSpace", "TabularDataset", "available_tabular", "load_tabular"]

CONTINUOUS, CODES, ONEHOT = "continuous", "codes", "onehot"


@dataclass(frozen=True)
class Feature:
    """One input feature as the attacker sees it.

    ``kind`` is ``"continuous"`` (one column, values in ``[low, high]``), ``"codes"`` (one column holding
    category codes ``0 … categories-1``) or ``"onehot"`` (``categories`` columns, exactly one set to 1).
    """

    name: str
    kind: str
    columns: tuple[int, ...]
    low: float = 0.0
    high: float = 0.0
    categories: int = 0

    def __post_init__(self) -> None:
        if self.kind not in (CONTINUOUS, CODES, ONEHOT):
            raise ValueError(f"unknown feature kind {self.kind!r}; known: {CONTINUOUS}, {CODES}, {ONEHOT}")
        if self.kind == CONTINUOUS and (len(self.columns) != 1 or not self.high >= self.low):
            raise ValueError(f"continuous feature {self.name!r} needs one column and low <= high")
        if self.kind != CONTINUOUS and self.categories < 1:
            raise ValueError(f"categorical feature {self.name!r} needs at least one category")
        if self.kind == CODES and len(self.columns) != 1:
            raise ValueError(f"coded feature {self.name!r} needs exactly one column")
        if self.kind == ONEHOT and len(self.columns) != self.categories:
            raise ValueError(f"one-hot feature {self.name!r} needs one column per category")

    @property
    def categorical(self) -> bool:
        return self.kind != CONTINUOUS

    @property
    def width(self) -> float:
        """``high - low`` for a continuous feature (0 for a constant one)."""
        return self.high - self.low

    def encode(self, value: float | int) -> list[float]:
        """The column values that put this feature at ``value`` (a category index when categorical)."""
        if self.kind == CONTINUOUS:
            return [float(value)]
        v = int(value)
        if not 0 <= v < self.categories:
            raise ValueError(f"feature {self.name!r} has categories 0..{self.categories - 1}, got {value}")
        if self.kind == CODES:
            return [float(v)]
        return [1.0 if c == v else 0.0 for c in range(self.categories)]

    def decode(self, x: Tensor) -> Tensor:
        """This feature's value in each row of ``x`` ``(N, D)``: the column, the code, or the one-hot argmax."""
        if self.kind == ONEHOT:
            return x[:, list(self.columns)].argmax(dim=1).to(x.dtype)
        return x[:, self.columns[0]]


@dataclass(frozen=True)
class FeatureSpace:
    """The input domain: the features in column order, their ranges and categories.

    ``sample`` draws the uniform points of ``R_unif`` (Tramèr et al., Sec. 3): continuous features uniform
    in ``[low, high]``, categorical ones uniform over their categories.
    """

    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        cols = sorted(c for f in self.features for c in f.columns)
        if cols != list(range(len(cols))):
            raise ValueError("the features' columns must cover 0..D-1 exactly once")

    @classmethod
    def continuous(cls, low: np.ndarray | Tensor, high: np.ndarray | Tensor) -> FeatureSpace:
        """A space of continuous features with the given per-column ranges."""
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        return cls(tuple(Feature(f"x{i}", CONTINUOUS, (i,), float(lo), float(hi))
                         for i, (lo, hi) in enumerate(zip(low, high, strict=True))))

    @property
    def dim(self) -> int:
        """Number of input columns ``D``."""
        return sum(len(f.columns) for f in self.features)

    @property
    def low(self) -> Tensor:
        """Per-column lower bounds (0 for categorical columns), float64 ``(D,)``."""
        return self._bounds(lambda f: f.low, lambda f: 0.0)

    @property
    def high(self) -> Tensor:
        """Per-column upper bounds (the largest code, or 1 for one-hot columns), float64 ``(D,)``."""
        return self._bounds(lambda f: f.high, lambda f: float(f.categories - 1) if f.kind == CODES else 1.0)

    def _bounds(self, cont: Callable[[Feature], float], cat: Callable[[Feature], float]) -> Tensor:
        out = torch.zeros(self.dim, dtype=torch.float64)
        for f in self.features:
            out[list(f.columns)] = cont(f) if f.kind == CONTINUOUS else cat(f)
        return out

    @property
    def categorical_columns(self) -> list[int]:
        return sorted(c for f in self.features if f.categorical for c in f.columns)

    def box(self, *, widen: float = 1.0) -> tuple[Tensor, Tensor]:
        """Per-column centre and half-width of the domain; a constant column gets half-width ``widen``.

        Attacks standardise their queries and clones with it: ``u = (x − centre) / half_width ∈ [−1, 1]``.
        """
        if widen <= 0:
            raise ValueError(f"widen must be > 0, got {widen}")
        low, high = self.low, self.high
        h = 0.5 * (high - low)
        return 0.5 * (low + high), torch.where(h > 0, h, torch.full_like(h, widen))

    def sample(self, n: int, *, generator: torch.Generator | None = None, widen: float = 0.0) -> Tensor:
        """``n`` uniform points ``(n, D)`` float64.

        ``widen > 0`` replaces the zero-width range of a constant continuous feature by
        ``[low - widen, low + widen]``, so queries vary every column (equation solving needs that to
        identify the weight of a feature that is constant in the data).
        """
        if n < 0:
            raise ValueError(f"cannot sample {n} points")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        x = torch.zeros(n, self.dim, dtype=torch.float64)
        for f in self.features:
            if f.kind == CONTINUOUS:
                lo, hi = f.low, f.high
                if hi == lo and widen > 0:
                    lo, hi = lo - widen, hi + widen
                x[:, f.columns[0]] = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
            else:
                v = torch.randint(0, f.categories, (n,), generator=g)
                if f.kind == CODES:
                    x[:, f.columns[0]] = v.to(torch.float64)
                else:
                    x[torch.arange(n), torch.tensor(f.columns)[v]] = 1.0
        return x


@dataclass(frozen=True)
class TabularDataset:
    """A registered data set with its explicit split (float64 features, int64 labels, NumPy arrays)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    space: FeatureSpace
    class_names: tuple[str, ...] = field(default=())

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()) + 1)

    @property
    def categorical_columns(self) -> list[int]:
        return self.space.categorical_columns

    @property
    def feature_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-column ``(low, high)`` of the training split (what the attacker is assumed to know)."""
        return self.space.low.numpy(), self.space.high.numpy()


def _sklearn_bundled(name: str) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    def load(seed: int) -> tuple[np.ndarray, np.ndarray]:
        from sklearn import datasets

        loader = {"iris": datasets.load_iris, "digits": datasets.load_digits, "wine": datasets.load_wine,
                  "breast-cancer": datasets.load_breast_cancer}[name]
        x, y = loader(return_X_y=True)
        return x, y

    return load


def _generated(name: str) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    def load(seed: int) -> tuple[np.ndarray, np.ndarray]:
        from sklearn import datasets

        if name == "circles":
            return datasets.make_circles(n_samples=5000, noise=0.1, factor=0.5, random_state=seed)
        if name == "moons":
            return datasets.make_moons(n_samples=5000, noise=0.2, random_state=seed)
        if name == "blobs":
            return datasets.make_blobs(n_samples=5000, centers=[[-4.0, 0.0], [4.0, 0.0], [0.0, 6.0]], cluster_std=1.5,
                                       random_state=seed)
        return datasets.make_classification(n_samples=1000, n_features=20, n_informative=10, n_redundant=5,
                                            n_classes=5, n_clusters_per_class=1, random_state=seed)

    return load


_BASES: dict[str, Callable[[int], tuple[np.ndarray, np.ndarray]]] = {
    **{n: _sklearn_bundled(n) for n in ("iris", "digits", "wine", "breast-cancer")},
    **{n: _generated(n) for n in ("circles", "moons", "blobs", "five-class")},
}
_BINARY_BASES = ("breast-cancer", "circles", "moons")


def available_tabular() -> list[str]:
    """Every name :func:`load_tabular` accepts."""
    names = []
    for base in _BASES:
        variants = [base] if base in _BINARY_BASES else [base, f"{base}-binary"]
        for v in variants:
            names += [v, f"{v}-cat", f"{v}-onehot"]
    return sorted(names)


def load_tabular(name: str, *, seed: int = 0, test_size: float = 0.25, n_bins: int = 4) -> TabularDataset:
    """Load a registered tabular data set with a stratified train/test split.

    ``seed`` fixes the split (and the generated sets' sampling); ``n_bins`` is the number of quantile
    bins of the ``-cat``/``-onehot`` variants. Ranges in :attr:`TabularDataset.space` come from the
    training split only.
    """
    from sklearn.model_selection import train_test_split

    key = name.strip().lower().replace("_", "-")
    if key not in available_tabular():
        raise ValueError(f"unknown tabular dataset {name!r}; known: {', '.join(available_tabular())}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    encoding = CONTINUOUS
    for suffix, enc in (("-cat", CODES), ("-onehot", ONEHOT)):
        if key.endswith(suffix):
            key, encoding = key[: -len(suffix)], enc
    binary = key.endswith("-binary")
    base = key[: -len("-binary")] if binary else key
    x, y = _BASES[base](seed)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if binary:
        k = int(y.max()) + 1
        y = (y >= math.ceil(k / 2)).astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    x_tr, x_te, features = _encode(x_tr, x_te, encoding=encoding, n_bins=n_bins)
    return TabularDataset(name=name, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                          space=FeatureSpace(tuple(features)),
                          class_names=tuple(str(c) for c in range(int(y.max()) + 1)))


def _encode(x_tr: np.ndarray, x_te: np.ndarray, *, encoding: str, n_bins: int
            ) -> tuple[np.ndarray, np.ndarray, list[Feature]]:
    """Discretise every other column into training-split quantile bins when ``encoding`` asks for it."""
    cols_tr: list[np.ndarray] = []
    cols_te: list[np.ndarray] = []
    features: list[Feature] = []
    width = 0
    for j in range(x_tr.shape[1]):
        a, b = x_tr[:, j], x_te[:, j]
        if encoding == CONTINUOUS or j % 2 == 0:
            features.append(Feature(f"x{j}", CONTINUOUS, (width,), float(a.min()), float(a.max())))
            cols_tr.append(a[:, None])
            cols_te.append(b[:, None])
            width += 1
            continue
        inner = np.unique(np.quantile(a, np.linspace(0, 1, n_bins + 1)[1:-1]))
        inner = inner[(inner > a.min()) & (inner <= a.max())]
        k = len(inner) + 1
        ca, cb = np.searchsorted(inner, a, side="left"), np.searchsorted(inner, b, side="left")
        if encoding == CODES:
            features.append(Feature(f"x{j}", CODES, (width,), categories=k))
            cols_tr.append(ca[:, None].astype(np.float64))
            cols_te.append(cb[:, None].astype(np.float64))
            width += 1
        else:
            features.append(Feature(f"x{j}", ONEHOT, tuple(range(width, width + k)), categories=k))
            cols_tr.append(np.eye(k)[ca])
            cols_te.append(np.eye(k)[cb])
            width += k
    return np.hstack(cols_tr), np.hstack(cols_te), features
