"""The gradient-bandit policy over a class hierarchy that drives adaptive Knockoff sampling.

Orekondy, Schiele and Fritz (CVPR 2019, Sec. 4.1.2): an action is a path from the root of a coarse→fine
hierarchy to a leaf class, sampled from per-node softmax policies ``π_n = softmax(H_n)``. After a reward
``r_t`` every preference on the path is updated by the gradient-bandit rule (Sutton and Barto,
*Reinforcement Learning*, 2nd ed., Sec. 2.8)::

    H_a ← H_a + α (r_t − r̄_t) (1[a = a_t] − π_a)        for every child a of each node on the path

:class:`ActionTree` holds the hierarchy and the preferences; :class:`RunningStats` standardises rewards
by their running mean and standard deviation.

Example::

    tree = ActionTree([0, 1, 2, 3], {0: "animal", 1: "animal", 2: "vehicle", 3: "vehicle"})
    policies = tree.policies()
    leaves = torch.multinomial(tree.leaf_probabilities(policies), 8, replacement=True)
    rewards = torch.rand(8, dtype=torch.float64)
    tree.update(leaves, rewards - rewards.mean(), policies, lr=0.1)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch import Tensor

ROOT = object()
"""The implicit root of every :class:`ActionTree` (the parent of nodes that have none)."""


class ActionTree:
    """The action hierarchy with one preference vector ``H_n`` per internal node.

    ``classes`` are the leaves; ``hierarchy`` maps a node (a class or an internal node) to its parent;
    nodes without a parent hang from an implicit root, nodes with no class below them are ignored.
    ``None`` gives the flat hierarchy (the root's children are the classes). Leaves can be *exhausted*
    (no images left); they and internal nodes whose leaves are all exhausted get probability 0.
    """

    def __init__(self, classes: list[int], hierarchy: Mapping[Hashable, Hashable] | None = None) -> None:
        parent_of = dict(hierarchy or {})
        leaves = set(classes)
        clash = leaves & set(parent_of.values())
        if clash:
            raise ValueError(f"transfer classes {sorted(clash, key=str)} are also used as parent nodes")
        # keep the chains above the transfer classes; nodes with no class below them are ignored
        parent: dict[Hashable, Hashable] = {}
        for c in classes:
            seen, cur = set(), c
            while cur is not ROOT:
                if cur in seen:
                    raise ValueError(f"the hierarchy has a cycle through {cur!r}")
                seen.add(cur)
                if cur in parent:  # reached a chain already known to end at the root
                    break
                parent[cur] = parent_of.get(cur, ROOT)
                cur = parent[cur]
        children: dict[Hashable, list[Hashable]] = {ROOT: []}
        def order_key(n: Hashable) -> tuple[str, Any]:
            return type(n).__name__, n if isinstance(n, (int, str)) else str(n)

        for node in sorted(parent, key=order_key):
            children.setdefault(parent[node], []).append(node)
            children.setdefault(node, [])
        # nodes in breadth-first order; internal ones own a preference vector over their children
        self.order: list[Hashable] = []
        queue = [ROOT]
        while queue:
            node = queue.pop(0)
            if children[node]:
                self.order.append(node)
                queue.extend(children[node])
        self.children = {n: children[n] for n in self.order}
        self.classes = list(classes)
        self.leaf_index = {c: i for i, c in enumerate(self.classes)}
        self.H = {n: torch.zeros(len(self.children[n]), dtype=torch.float64) for n in self.order}
        # path of each leaf: (node, position of the next node among its children), root first
        self.paths: list[list[tuple[Hashable, int]]] = []
        for c in self.classes:
            path, cur = [], c
            while cur is not ROOT:
                p = parent[cur]
                path.append((p, self.children[p].index(cur)))
                cur = p
            self.paths.append(path[::-1])
        # child_of[n][i]: position among n's children of the child on leaf i's path (-1: the path avoids n)
        self.child_of = {n: torch.full((len(self.classes),), -1, dtype=torch.long) for n in self.order}
        for i, path in enumerate(self.paths):
            for node, j in path:
                self.child_of[node][i] = j
        self.available = torch.ones(len(self.classes), dtype=torch.bool)

    def _node_available(self) -> dict[Hashable, bool]:
        avail: dict[Hashable, bool] = {c: bool(self.available[i]) for c, i in self.leaf_index.items()}
        for node in reversed(self.order):
            avail[node] = any(avail[ch] for ch in self.children[node])
        return avail

    def policies(self, *, masked: bool = True) -> dict[Hashable, Tensor]:
        """``π_n = softmax(H_n)`` over the available children of each node (all if not ``masked``)."""
        avail = self._node_available()
        out = {}
        for node in self.order:
            mask = torch.tensor([avail[ch] or not masked for ch in self.children[node]])
            h = self.H[node].masked_fill(~mask, float("-inf"))
            out[node] = torch.softmax(h, dim=0) if mask.any() else torch.zeros_like(h)
        return out

    def leaf_probabilities(self, policies: dict[Hashable, Tensor] | None = None) -> Tensor:
        """Probability of sampling each class: the product of ``π`` along its path."""
        policies = policies if policies is not None else self.policies()
        probs = torch.ones(len(self.classes), dtype=torch.float64)
        for i, path in enumerate(self.paths):
            for node, j in path:
                probs[i] = probs[i] * policies[node][j]
        return probs

    def update(
        self, leaves: Tensor, advantages: Tensor, policies: dict[Hashable, Tensor], *, lr: float,
    ) -> None:
        """Batched gradient-bandit step: ``H_n += lr/B · Σ_i adv_i (e_{a_i} − π_n)`` over paths through n."""
        adv = advantages.to(torch.float64)
        b = max(len(leaves), 1)
        for node in self.order:
            child = self.child_of[node][leaves]
            through = child >= 0
            if not bool(through.any()):
                continue
            acc = torch.zeros_like(self.H[node]).index_add_(0, child[through], adv[through])
            self.H[node] += lr / b * (acc - adv[through].sum() * policies[node])


class RunningStats:
    """Running mean and standard deviation over every value seen (Chan et al.'s batched update)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: Tensor) -> None:
        v = values.double()
        nb = v.numel()
        if nb == 0:
            return
        mb, m2b = float(v.mean()), float(((v - v.mean()) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    def standardize(self, values: Tensor) -> Tensor:
        std = (self.m2 / self.n) ** 0.5 if self.n > 0 else 0.0
        if std < 1e-8:
            return torch.zeros_like(values, dtype=torch.float64)
        return (values.double() - self.mean) / std
