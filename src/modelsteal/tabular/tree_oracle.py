"""The leaf-identity oracle of Tramèr et al. (USENIX Security 2016), Sec. 4.2: :class:`TreeOracle`.

A decision tree that answers each query with ``[id, label, confidence]`` and, like BigML, accepts
*incomplete* queries (missing features as NaN), stopping at the first node that splits on a missing
feature. It is a :class:`~modelsteal.BlackBox`, the victim of path finding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from modelsteal.blackbox import QueryCounter, as_batch
from modelsteal.tabular.sklearn_victim import _split_pipeline, victim_kind
from modelsteal.tabular.tabular import TabularTree


class TreeOracle(QueryCounter):
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
        super().__init__(budget=budget)
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

    def query(self, x: Tensor, *, client: str = "default") -> Tensor:
        """Answer ``(N, d)`` queries (NaN = missing feature) with ``[id, label, confidence]`` rows."""
        x = torch.as_tensor(x)
        x = as_batch(x if x.is_floating_point() else x.double(), self.input_shape, finite=False)  # ints exact
        self.reserve(client, len(x))
        node = self.tree.apply(x, incomplete=self.incomplete)
        cols = [self._ids[node], self._label[node]] + ([self._conf[node]] if self.confidence else [])
        self.record(client, len(x))
        return torch.stack(cols, dim=1)

    def __repr__(self) -> str:
        return (f"TreeOracle(leaves={self.n_leaves}, identity={self.identity}, incomplete={self.incomplete}, "
                f"budget={self.budget})")
