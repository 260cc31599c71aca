"""Decision-tree path finding (Tramèr et al., USENIX Security 2016, Sec. 4.2, Algorithm 1).

The victim is a leaf-identity oracle (:class:`~modelsteal.tabular.TreeOracle`): every query
returns the identifier of the leaf it reaches, with that leaf's label and confidence. A leaf of a decision
tree is an axis-aligned box, so along any line parallel to a feature axis the leaf identifier is piecewise
constant and every leaf occupies one interval (boxes are convex). The attack:

- ``LINE_SEARCH(x, i, ε)`` queries ``x`` with feature ``i`` at both ends of its range and bisects every
  segment whose ends reach different leaves, down to a width of ``ε`` (relative to the feature's range),
  which gives every interval ``(α, β]`` of feature ``i`` on which the identifier is constant;
- ``CATEGORY_SPLIT(x, i, id)`` queries every category of a categorical feature and splits them into the set
  ``S`` that keeps leaf ``id`` and the rest ``V``;
- Algorithm 1 starts at a random input, records for each new leaf the interval (or category set) of every
  feature that contains it, and queues one input in every other interval (or category) to visit.

The *top-down* variant (the paper's Sec. 4.2, "incomplete queries") uses an oracle that accepts missing
features (NaN) and stops at the first node that splits on one. Starting from the all-missing query (the
root), it finds each node's split feature, line-searches that feature to reach the node's descendants, and
so extracts the tree layer by layer. The split feature is found by bisecting the set of missing features
(setting half of them and checking whether the walk goes past the node), ``1 + ⌈log₂ m⌉`` queries for ``m``
missing features instead of the ``m`` of testing one at a time.

Granularity: thresholds are located to within ``ε·(high − low)`` of each feature's training range; a test
point falling between the located boundary and the true threshold is the only source of error. Learned
thresholds sit at (or halfway between) training values, which have few decimals in real data, so with
``snap=True`` (beyond the paper) each bracket ``[a, b)`` of width ``≤ ε`` costs one more query: the number
with the fewest decimals inside it, which decides the side of every such value (a data value equal to a
threshold, which scikit-learn produces, goes to the correct side).

Example::

    oracle = TreeOracle(tree, incomplete=True)
    result = PathFinding(space=data.space, epsilon=1e-3, incomplete=True)(oracle, budget=100_000)
    result.clone.predict(x_test)             # labels of the extracted tree
    result.info["leaves"], result.queries    # the paper's Table 6 columns
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from modelsteal.attacks.base import Attack, StealResult, register_attack
from modelsteal.blackbox import BudgetExceededError, QueryBudget
from modelsteal.data.tabular import CONTINUOUS, Feature, FeatureSpace

__all__ = ["ExtractedTree", "ExtractedLeaf", "Interval", "PathFinding"]

_INF = math.inf


@dataclass(frozen=True)
class Interval:
    """The predicate ``x_i ∈ (lo, hi]``; ``a ≤ b`` are the lowest and highest *queried* values inside it."""

    lo: float
    hi: float
    a: float
    b: float

    def contains(self, v: float) -> bool:
        return self.lo < v <= self.hi


@dataclass(frozen=True)
class Answer:
    """One oracle answer: node identifier, label and confidence."""

    id: float
    label: int
    confidence: float


@dataclass
class ExtractedLeaf:
    """A recovered leaf: its identifier and label, and one predicate per constrained feature."""

    id: float
    label: int
    confidence: float
    predicates: dict[int, Interval | frozenset[int]] = field(default_factory=dict)


class ExtractedTree(nn.Module):
    """The extracted model: predicts with the leaf whose predicates an input satisfies.

    An input that satisfies no leaf's predicates (possible within ``ε`` of a threshold, or when leaves were
    missed) goes to the leaf with the fewest violated predicates. ``forward`` returns logits with the
    predicted label's entry 0 and the others −50 (argmax = label).
    """

    def __init__(self, space: FeatureSpace, leaves: list[ExtractedLeaf], num_classes: int) -> None:
        super().__init__()
        if not leaves:
            raise ValueError("an extracted tree needs at least one leaf")
        self.space = space
        self.leaves = leaves
        self.num_classes = int(num_classes)
        self.input_shape = (space.dim,)
        nf, nl = len(space.features), len(leaves)
        lo = torch.full((nl, nf), -_INF, dtype=torch.float64)
        hi = torch.full((nl, nf), _INF, dtype=torch.float64)
        kmax = max([f.categories for f in space.features] + [1])
        allowed = torch.ones(nl, nf, kmax, dtype=torch.bool)
        for li, leaf in enumerate(leaves):
            for fi, pred in leaf.predicates.items():
                if isinstance(pred, Interval):
                    lo[li, fi], hi[li, fi] = pred.lo, pred.hi
                else:
                    allowed[li, fi] = False
                    allowed[li, fi, sorted(pred)] = True
        self.register_buffer("lo", lo)
        self.register_buffer("hi", hi)
        self.register_buffer("allowed", allowed)
        self.register_buffer("labels", torch.tensor([leaf.label for leaf in leaves], dtype=torch.long))
        self.register_buffer("ids", torch.tensor([leaf.id for leaf in leaves], dtype=torch.float64))
        self.register_buffer("categorical", torch.tensor([f.categorical for f in space.features], dtype=torch.bool))

    def leaf_index(self, x: Tensor, *, chunk: int = 1024) -> Tensor:
        """Index into :attr:`leaves` ``(N,)`` of the leaf each row of ``x`` ``(N, D)`` falls in."""
        x = x.to(self.lo.device, torch.float64)
        values = torch.stack([f.decode(x) for f in self.space.features], dim=1)  # (N, F)
        codes = values.nan_to_num(0).long().clamp(0, self.allowed.shape[2] - 1)
        cols = torch.arange(values.shape[1], device=x.device)[None, :]
        out = []
        for v, c in zip(values.split(chunk), codes.split(chunk), strict=True):
            inside = (v[:, None, :] > self.lo) & (v[:, None, :] <= self.hi)  # (n, L, F)
            cat_ok = self.allowed[:, cols, c].permute(1, 0, 2)  # (n, L, F)
            ok = torch.where(self.categorical, cat_ok, inside)
            out.append((~ok).sum(dim=2).argmin(dim=1))
        return torch.cat(out)

    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels ``(N,)`` (on ``x``'s device)."""
        return self.labels[self.leaf_index(x)].to(x.device)

    def leaf_ids(self, x: Tensor) -> Tensor:
        """Oracle identifiers ``(N,)`` of the leaves the rows fall in (on ``x``'s device)."""
        return self.ids[self.leaf_index(x)].to(x.device)

    def forward(self, x: Tensor) -> Tensor:
        labels = self.predict(x)
        out = torch.full((len(x), self.num_classes), -50.0, dtype=torch.float64, device=x.device)
        return out.scatter_(1, labels[:, None].to(x.device), 0.0)


@register_attack("path-finding")
class PathFinding(Attack):
    """The path-finding attack on decision trees (Tramèr et al., Sec. 4.2, Algorithm 1, Table 6).

    Options (keyword-only): ``space`` the feature space (ranges and categorical features, e.g.
    ``load_tabular(name).space``); ``epsilon`` the granularity of ``LINE_SEARCH`` relative to each
    feature's range (the paper uses 10⁻³); ``incomplete`` runs the top-down variant with incomplete queries
    (the victim must accept NaN as a missing feature); ``snap`` spends one query per located threshold on
    the shortest decimal inside its bracket. The result's ``clone`` is an :class:`ExtractedTree`
    and ``info`` holds ``leaves`` (found), ``complete`` (whether the search finished within the budget).
    A budget that runs out stops the search with the leaves found so far (the last one possibly with only
    some of its predicates).
    """

    modality = "tabular"

    def __init__(self, *, space: FeatureSpace, epsilon: float = 1e-3, incomplete: bool = False, snap: bool = True,
                 device: str | torch.device | None = None) -> None:
        super().__init__(device=device)
        if not 0 < epsilon < 1:
            raise ValueError(f"epsilon is relative to each feature's range and must be in (0, 1), got {epsilon}")
        self.space = space
        self.epsilon = float(epsilon)
        self.incomplete = bool(incomplete)
        self.snap = bool(snap)

    def describe(self) -> dict[str, object]:
        return {"attack": self.name, "epsilon": self.epsilon, "incomplete": self.incomplete, "snap": self.snap}

    # -- the oracle ------------------------------------------------------------------------------------
    def _ask(self, victim: QueryBudget, xs: list[Tensor]) -> list[Answer]:
        """Query the rows ``xs`` (one batch), answering repeated inputs from the memo without a query."""
        keys = [x.numpy().tobytes() for x in xs]
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        fresh = [k for k in first if k not in self._memo]
        if fresh:
            out = victim.query(torch.stack([xs[first[k]] for k in fresh])).detach().cpu().to(torch.float64)
            for k, row in zip(fresh, out, strict=True):
                conf = float(row[2]) if len(row) > 2 else float("nan")
                self._memo[k] = Answer(float(row[0]), int(row[1]), conf)
        return [self._memo[k] for k in keys]

    @staticmethod
    def _with(x: Tensor, feature: Feature, value: float | None) -> Tensor:
        """``x[i] ⇒ v``: ``x`` with ``feature`` set to ``value`` (``None``: missing, NaN)."""
        y = x.clone()
        y[list(feature.columns)] = (torch.nan if value is None else
                                    torch.tensor(feature.encode(value), dtype=torch.float64))
        return y

    # -- LINE_SEARCH and CATEGORY_SPLIT ---------------------------------------------------------------
    def _line_search(self, victim: QueryBudget, x: Tensor, fi: int, span: Interval,
                     known: dict[float, Answer]) -> list[tuple[Interval, Answer]]:
        """Every interval of feature ``fi`` inside ``span`` on which the leaf identifier is constant.

        ``known`` maps already-answered values of the feature to answers. Returns ``(interval, answer)``
        pairs in increasing order; each interval's ``b`` is a queried value whose answer is given.
        """
        f = self.space.features[fi]
        eps = self.epsilon * max(f.width, 1e-12)
        known = dict(known)
        ends = [v for v in (span.a, span.b) if v not in known]
        for v, ans in zip(ends, self._ask(victim, [self._with(x, f, v) for v in ends]), strict=True):
            known[v] = ans
        pts = sorted(v for v in known if span.a <= v <= span.b)
        boundaries: list[tuple[float, float]] = []
        stack = [(pts[i], pts[i + 1], False) for i in range(len(pts) - 1)]
        while stack:
            a, b, snapped = stack.pop()
            if known[a].id == known[b].id:
                continue  # a leaf is convex: one identifier at both ends means one leaf in between
            if b - a > eps:
                m = 0.5 * (a + b)
            elif self.snap and not snapped and (m := _shortest_decimal(a, b)) is not None:
                pass
            else:
                boundaries.append((a, b))
                continue
            known[m] = self._ask(victim, [self._with(x, f, m)])[0]
            final = b - a <= eps
            stack += [(a, m, final), (m, b, final)]
        boundaries.sort()
        out = []
        lo, a_in = span.lo, span.a
        for bl, br in boundaries:
            out.append((Interval(lo, bl, a_in, bl), known[bl]))
            lo, a_in = bl, br
        out.append((Interval(lo, span.hi, a_in, span.b), known[span.b]))
        return out

    def _category_split(self, victim: QueryBudget, x: Tensor, fi: int, allowed: frozenset[int],
                        current: int | None, answer: Answer | None) -> dict[float, tuple[frozenset[int], Answer]]:
        """Group the ``allowed`` categories of feature ``fi`` by the identifier they reach: ``{id: (S, answer)}``."""
        f = self.space.features[fi]
        values = sorted(v for v in allowed if v != current)
        answers = self._ask(victim, [self._with(x, f, v) for v in values])
        groups: dict[float, tuple[frozenset[int], Answer]] = {}
        if current is not None and answer is not None:
            groups[answer.id] = (frozenset([current]), answer)
        for v, ans in zip(values, answers, strict=True):
            s, first = groups.get(ans.id, (frozenset(), ans))
            groups[ans.id] = (s | {v}, first)
        return groups

    def _full_span(self, f: Feature) -> Interval:
        return Interval(-_INF, _INF, f.low, f.high)

    # -- Algorithm 1 -----------------------------------------------------------------------------------
    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        if tuple(victim.input_shape) != (self.space.dim,):
            raise ValueError(f"victim takes inputs {tuple(victim.input_shape)} but the feature space has "
                             f"{self.space.dim} columns")
        self._memo: dict[bytes, Answer] = {}
        leaves: dict[float, ExtractedLeaf] = {}
        complete = True
        try:
            if self.incomplete:
                self._top_down(victim, leaves, generator)
            else:
                self._algorithm1(victim, leaves, generator)
        except BudgetExceededError:
            complete = False
        if not leaves:
            raise BudgetExceededError(f"path finding found no leaf within a budget of {victim.budget} queries")
        clone = ExtractedTree(self.space, list(leaves.values()), victim.num_classes)
        return StealResult(clone=clone, queries=victim.used,
                           info={"leaves": len(leaves), "complete": complete, "epsilon": self.epsilon,
                                 "incomplete": self.incomplete})

    def _algorithm1(self, victim: QueryBudget, leaves: dict[float, ExtractedLeaf],
                    generator: torch.Generator) -> None:
        """Algorithm 1 with complete queries: explore leaves from a random start, one line per feature."""
        x0 = self.space.sample(1, generator=generator)[0]
        queue: deque[tuple[Tensor, Answer | None]] = deque([(x0, None)])
        queued: set[float] = set()
        while queue:
            x, ans = queue.popleft()
            if ans is None:
                ans = self._ask(victim, [x])[0]
            if ans.id in leaves:
                continue
            leaf = leaves[ans.id] = ExtractedLeaf(ans.id, ans.label, ans.confidence)  # filled in below
            for fi, f in enumerate(self.space.features):
                value = float(f.decode(x[None])[0])
                if f.kind == CONTINUOUS:
                    if f.width == 0:
                        continue
                    for interval, other in self._line_search(victim, x, fi, self._full_span(f), {value: ans}):
                        if interval.contains(value):
                            leaf.predicates[fi] = interval
                        elif other.id not in leaves and other.id not in queued:
                            queued.add(other.id)
                            queue.append((self._with(x, f, interval.b), other))
                else:
                    groups = self._category_split(victim, x, fi, frozenset(range(f.categories)), int(value), ans)
                    for gid, (cats, other) in groups.items():
                        if gid == ans.id:
                            leaf.predicates[fi] = cats
                        elif gid not in leaves and gid not in queued:
                            queued.add(gid)
                            queue.append((self._with(x, f, min(cats)), other))

    def _top_down(self, victim: QueryBudget, leaves: dict[float, ExtractedLeaf],
                  generator: torch.Generator) -> None:
        """The top-down variant: walk the tree from the root with incomplete (NaN) queries.

        A state is a partial query ``q`` reaching node ``id``, plus the one feature whose interval along
        ``q`` is already exact (the line search that found it). At an internal node, the split feature is
        line-searched over its range to reach the node's descendants. At a leaf, every other feature that
        ``q`` sets is line-searched over its range: that pins down the leaf's box and reaches the subtrees
        hidden from the walk by splits on features set higher up.
        """
        features = self.space.features
        root = torch.full((self.space.dim,), torch.nan, dtype=torch.float64)
        queue: deque[tuple[Tensor, int | None, Interval | frozenset[int] | None, Answer | None]] = deque(
            [(root, None, None, None)])
        seen: set[float] = set()

        def push(q: Tensor, fi: int, pred: Interval | frozenset[int], answer: Answer) -> None:
            if answer.id not in seen:
                queue.append((q, fi, pred, answer))

        while queue:
            q, fresh, fresh_pred, ans = queue.popleft()
            if ans is None:
                ans = self._ask(victim, [q])[0]
            if ans.id in seen:
                continue
            seen.add(ans.id)
            missing = [fi for fi, f in enumerate(features) if torch.isnan(q[list(f.columns)]).any()]
            split = self._find_split_feature(victim, q, missing, ans)
            if split is not None:
                f = features[split]
                if f.kind == CONTINUOUS:
                    for interval, other in self._line_search(victim, q, split, self._full_span(f), {}):
                        push(self._with(q, f, interval.b), split, interval, other)
                else:
                    groups = self._category_split(victim, q, split, frozenset(range(f.categories)), None, None)
                    for cats, other in groups.values():
                        push(self._with(q, f, min(cats)), split, cats, other)
                continue
            leaf = leaves[ans.id] = ExtractedLeaf(ans.id, ans.label, ans.confidence)  # filled in below
            for fi, f in enumerate(features):
                if fi in missing:
                    continue
                if fi == fresh and fresh_pred is not None:
                    leaf.predicates[fi] = fresh_pred
                    continue
                value = float(f.decode(q[None])[0])
                if f.kind == CONTINUOUS:
                    for interval, other in self._line_search(victim, q, fi, self._full_span(f), {value: ans}):
                        if interval.contains(value):
                            leaf.predicates[fi] = interval
                        else:
                            push(self._with(q, f, interval.b), fi, interval, other)
                else:
                    groups = self._category_split(victim, q, fi, frozenset(range(f.categories)), int(value), ans)
                    for gid, (cats, other) in groups.items():
                        if gid == ans.id:
                            leaf.predicates[fi] = cats
                        else:
                            push(self._with(q, f, min(cats)), fi, cats, other)

    def _find_split_feature(self, victim: QueryBudget, q: Tensor, missing: list[int], ans: Answer) -> int | None:
        """The missing feature the node ``ans`` splits on, by bisecting the set of missing features."""
        if not missing:
            return None

        def fill(subset: list[int]) -> Tensor:
            y = q
            for fi in subset:
                f = self.space.features[fi]
                y = self._with(y, f, 0.5 * (f.low + f.high) if f.kind == CONTINUOUS else 0)
            return y

        if self._ask(victim, [fill(missing)])[0].id == ans.id:
            return None
        candidates = missing
        while len(candidates) > 1:
            half = candidates[: len(candidates) // 2]
            moved = self._ask(victim, [fill(half)])[0].id != ans.id
            candidates = half if moved else candidates[len(half):]
        return candidates[0]


def _shortest_decimal(a: float, b: float) -> float | None:
    """The number with the fewest decimals strictly between ``a`` and ``b`` (``None`` if there is none)."""
    for digits in range(16):
        scale = 10.0**digits
        s = math.floor(a * scale + 1.0) / scale
        if a < s < b:
            return s
    return None
