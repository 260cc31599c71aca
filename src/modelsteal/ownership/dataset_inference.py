"""Dataset inference (Maini, Yaghini & Papernot, *Dataset Inference: Ownership Resolution in Machine Learning*,
ICLR 2021): a model derived from the victim keeps the victim's larger prediction margins on the victim's
*private training* samples than on *public* samples of the same distribution.

Three steps, each batched (no Python loop over samples):

1. **Embeddings** — a sample's distances to the decision boundary, measured on a model:

   - *MinGD* (white-box): for each target class ``t ≠ y`` and each norm ``p ∈ {L1, L2, L∞}``, the smallest
     perturbation ``δ`` with ``f(x + δ) = t`` (``min_δ ||δ||_p``), found by steepest-descent steps of the
     target's cross-entropy in that norm (L∞: sign of the gradient; L2: the normalised gradient; L1: the
     signs of the top few percent of the gradient's coordinates), then a scan and bisection along the found
     ``δ`` so that the reported distance is the first point of that ray reaching ``t``. All samples × targets
     are one batch; per norm, the ``K − 1`` distances are sorted (class-agnostic features).
   - *Blind Walk* (black-box, labels only): for ``D`` random unit directions ``u`` per sample, the first step
     ``k`` at which ``f(x + k·s·u)`` is no longer ``y``; the distance is ``k·s``. All samples × directions walk
     together, one query batch per step with only the walks still going; the ``D`` distances are sorted. Only
     the top-1 label of each answer is read, and every query row is counted.

2. **Confidence regressor**, trained on the *victim only*: a logistic regression from the victim's embeddings
   to "private training sample (1) or public sample (0)"; its logit is a sample's score.

3. **Hypothesis test** on the suspect: ``m`` private and ``m`` public samples (disjoint from those the
   regressor saw), embedded on the suspect and scored, give ``C`` and ``C₀``; the one-sided Welch t-test
   (``scipy.stats.ttest_ind(C − δ0, C₀, equal_var=False, alternative="greater")``) of ``H0: μ − μ₀ ≤ δ0``
   gives the p-value; ``stolen`` when it is below ``alpha``. ``δ0`` is 0 (the paper's test) unless the null was
   estimated from independent reference models (:meth:`DatasetInference.calibrate`): then it is the largest
   mean difference ``μ̂ − μ̂₀`` any reference showed on the same samples, floored at 0
   (:func:`~modelsteal.ownership.null.null_shift_upper_bound`), so a suspect must separate the private samples
   more than every independent model the owner trained.

Known weaknesses: a victim that does not overfit its training set (small margins gap) gives the test nothing to
find; an independent model trained on data overlapping the victim's private set is (rightly, by the test's
definition) flagged; extraction with label-only answers transfers the margins less.

Example::

    di = make_verifier("dataset-inference", embedding="blind-walk", samples=30).fit(victim, data=splits)
    verdict = di.verify(suspect_api, budget=200_000)        # p-value, stolen, label queries spent
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from modelsteal.blackbox import BlackBox, PredictionAPI
from modelsteal.data.registry import DatasetSplits
from modelsteal.models.builders import model_device
from modelsteal.models.formats import describe_model, model_gradients
from modelsteal.ownership.base import NotFittedError, Verdict, Verifier, register_verifier
from modelsteal.ownership.null import ReferenceNull, null_shift_upper_bound

NORMS = ("l1", "l2", "linf")


def lp_norm(d: Tensor, norm: str) -> Tensor:
    """Row-wise ``||d||_p`` of a batch ``(N, ...)``."""
    flat = d.reshape(len(d), -1)
    if norm == "l1":
        return flat.abs().sum(1)
    if norm == "l2":
        return flat.norm(dim=1)
    return flat.abs().amax(1)


def steepest_step(g: Tensor, norm: str, *, l1_fraction: float = 0.05) -> Tensor:
    """The unit steepest-ascent direction of gradient ``g`` in ``norm`` (rows of a batch)."""
    flat = g.reshape(len(g), -1)
    if norm == "linf":
        step = flat.sign()
    elif norm == "l2":
        step = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    else:  # l1: spread a unit of L1 mass over the top coordinates (a single one is too slow to cross)
        k = max(1, int(round(l1_fraction * flat.shape[1])))
        idx = flat.abs().topk(k, dim=1).indices
        step = torch.zeros_like(flat).scatter_(1, idx, flat.gather(1, idx).sign() / k)
    return step.reshape(g.shape)


@dataclass(frozen=True)
class MinGDResult:
    """``distance`` ``(N,)`` to the target (``reached`` rows: the first point along ``delta``'s ray that is
    classified as the target; other rows: ``||delta||`` after all steps, a lower bound) and ``delta`` ``(N, ...)``."""

    distance: Tensor
    delta: Tensor
    reached: Tensor


def _labels(model: nn.Module, x: Tensor, *, batch_size: int = 4096) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(xb).argmax(1) for xb in x.split(batch_size)])


def min_gd(model: nn.Module, x: Tensor, targets: Tensor, *, norm: str, steps: int = 100, step_size: float,
           clamp: tuple[float, float] | None = (0.0, 1.0), refine: int = 16) -> MinGDResult:
    """MinGD for a batch: rows of ``x`` ``(N, ...)`` pushed towards ``targets`` ``(N,)`` in ``norm``.

    ``steps`` steepest-descent steps of size ``step_size`` on the target's cross-entropy (rows stop once they
    reach their target); then along each reached row's final ``delta``, a scan of ``refine`` points and a
    bisection between the last miss and the first hit give the first point of the ray classified as the
    target. ``clamp`` keeps ``x + delta`` in the input domain.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    model = model.eval()
    delta = torch.zeros_like(x)
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(steps):
        act = (~done).nonzero().flatten()
        if not len(act):
            break
        d = delta[act].clone().requires_grad_(True)
        logits = model(_domain(x[act] + d, clamp))
        hit = logits.argmax(1) == targets[act]
        done[act[hit]] = True
        loss = torch.nn.functional.cross_entropy(logits, targets[act], reduction="sum")
        (g,) = torch.autograd.grad(loss, d)
        if clamp is not None:  # coordinates at a bound cannot move further out: spend the step elsewhere
            point = x[act] + d.detach()
            g = torch.where(((point >= clamp[1]) & (g < 0)) | ((point <= clamp[0]) & (g > 0)), 0.0, g)
        move = ~hit
        new = d.detach() - step_size * steepest_step(g, norm)
        delta[act[move]] = _domain(x[act[move]] + new[move], clamp) - x[act[move]]
    delta = delta.detach()
    dist, reached = _first_hit(model, x, delta, targets, norm=norm, refine=refine, clamp=clamp)
    return MinGDResult(distance=dist, delta=delta, reached=reached)


def _domain(x: Tensor, clamp: tuple[float, float] | None) -> Tensor:
    return x if clamp is None else x.clamp(*clamp)


@torch.no_grad()
def _first_hit(model: nn.Module, x: Tensor, delta: Tensor, targets: Tensor, *, norm: str, refine: int,
               clamp: tuple[float, float] | None) -> tuple[Tensor, Tensor]:
    """Scale ``c`` of the first point ``x + c·delta`` (``c ∈ (0, 1]``) classified as the target, as a distance
    ``||c·delta||``: a scan over ``refine`` scales, then 12 bisection steps in the first bracket."""
    n = len(x)
    grid = torch.linspace(1.0 / refine, 1.0, refine, device=x.device)
    shape = (-1,) + (1,) * (x.dim() - 1)
    hits = torch.stack([_labels(model, _domain(x + c * delta, clamp)) == targets for c in grid], dim=1)
    reached = hits.any(1)
    first = hits.float().argmax(1)  # index of the first hit (0 where none)
    hi = grid[first]
    lo = torch.where(first > 0, grid[(first - 1).clamp_min(0)], torch.zeros_like(hi))
    for _ in range(12):
        mid = (lo + hi) / 2
        ok = _labels(model, _domain(x + mid.view(shape) * delta, clamp)) == targets
        hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
    scale = torch.where(reached, hi, torch.ones(n, device=x.device))
    return lp_norm(scale.view(shape) * delta, norm), reached


def mingd_embedding(model: nn.Module, x: Tensor, y: Tensor, *, num_classes: int, norms: Sequence[str] = NORMS,
                    steps: int = 100, step_sizes: dict[str, float] | None = None,
                    clamp: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """``(N, len(norms)·(K−1))`` MinGD distances of each sample to every other class, sorted per norm.

    Samples × targets form one batch of ``N·(K−1)`` rows per norm."""
    device = model_device(model)
    x, y = x.to(device), y.to(device)
    k, n = num_classes, len(x)
    offsets = torch.arange(1, k, device=device)
    targets = ((y.view(-1, 1) + offsets.view(1, -1)) % k).reshape(-1)  # (N·(K−1),) every t ≠ y
    xr = x.repeat_interleave(k - 1, dim=0)
    sizes = step_sizes or default_step_sizes(x[0].numel())
    cols = [min_gd(model, xr, targets, norm=p, steps=steps, step_size=sizes[p], clamp=clamp)
            .distance.view(n, k - 1).sort(1).values for p in norms]
    return torch.cat(cols, dim=1).cpu()


def default_step_sizes(dim: int) -> dict[str, float]:
    """Step sizes per norm for inputs in ``[0, 1]`` of ``dim`` values: 0.01 per value for L∞, scaled by
    ``sqrt(dim)`` for L2 and ``dim·fraction`` for L1 (the same per-coordinate size on the moved coordinates)."""
    return {"linf": 0.01, "l2": 0.01 * dim ** 0.5, "l1": 0.01 * max(1, round(0.05 * dim))}


def random_directions(n: int, shape: Sequence[int], *, generator: torch.Generator) -> Tensor:
    """``(n, *shape)`` Gaussian directions of unit L2 norm."""
    u = torch.randn(n, *shape, generator=generator)
    return u / lp_norm(u, "l2").clamp_min(1e-12).view(-1, *([1] * len(shape)))


@dataclass(frozen=True)
class BlindWalkResult:
    """``distance`` ``(N, D)``: ``k·step_size`` at the first step ``k`` whose label is not ``y``, or
    ``steps·step_size`` when none within ``steps`` (``flipped`` says which); ``queries``: rows sent."""

    distance: Tensor
    flipped: Tensor
    queries: int


def blind_walk(box: BlackBox, x: Tensor, y: Tensor, *, directions: int = 10, steps: int = 30,
               step_size: float = 0.1, generator: torch.Generator,
               clamp: tuple[float, float] | None = (0.0, 1.0), batch_size: int = 4096) -> BlindWalkResult:
    """Blind Walk of every sample of ``x`` along ``directions`` random directions (labels only, batched).

    Step ``k`` sends one row per walk that has not yet left class ``y`` (the true label) — at most
    ``N·D·steps`` rows in all, exactly ``Σ min(k_flip, steps)``."""
    n = len(x)
    u = random_directions(n * directions, tuple(x.shape[1:]), generator=generator)
    xr, yr = x.cpu().repeat_interleave(directions, dim=0), y.cpu().repeat_interleave(directions)
    flip_step = torch.full((n * directions,), steps, dtype=torch.long)
    flipped = torch.zeros(n * directions, dtype=torch.bool)
    sent = 0
    for k in range(1, steps + 1):
        act = (~flipped).nonzero().flatten()
        if not len(act):
            break
        probe = _domain(xr[act] + (k * step_size) * u[act], clamp)
        labels = torch.cat([box.query(pb).argmax(1).cpu() for pb in probe.split(batch_size)])
        sent += len(act)
        left = labels != yr[act]
        flip_step[act[left]] = k
        flipped[act[left]] = True
    dist = (flip_step.double() * step_size).view(n, directions).float()
    return BlindWalkResult(distance=dist, flipped=flipped.view(n, directions), queries=sent)


def blind_walk_embedding(box: BlackBox, x: Tensor, y: Tensor, **options) -> tuple[Tensor, int]:  # noqa: ANN003
    """``(N, D)`` sorted Blind Walk distances and the queries spent."""
    r = blind_walk(box, x, y, **options)
    return r.distance.sort(1).values, r.queries


def welch_t_test(private: Tensor | np.ndarray, public: Tensor | np.ndarray) -> tuple[float, float]:
    """``(t, p)`` of the one-sided Welch test ``H0: mean(private) <= mean(public)``."""
    from scipy.stats import ttest_ind

    a = np.asarray(private.cpu() if isinstance(private, Tensor) else private, dtype=np.float64)
    b = np.asarray(public.cpu() if isinstance(public, Tensor) else public, dtype=np.float64)
    res = ttest_ind(a, b, equal_var=False, alternative="greater")
    return float(res.statistic), float(res.pvalue)


@register_verifier("dataset-inference")
class DatasetInference(Verifier):
    """Maini et al.'s dataset inference (module docstring).

    ``embedding``: ``"blind-walk"`` (any black-box suspect, label queries counted) or ``"mingd"`` (a white-box
    suspect: an ``nn.Module``; no queries). ``samples``: ``m``, private and public samples each in the test;
    ``repeats``: R disjoint blocks of ``m`` + ``m`` samples, one test each, combined by Fisher's method (the
    block p-values in the verdict show the spread one draw of ``m`` samples has);
    ``fit_samples``: per group, for the regressor (disjoint from the test's); ``directions``, ``steps``,
    ``step_size``: Blind Walk's; ``mingd_steps``: MinGD's gradient steps; ``norms``: MinGD's norms.
    The private pool is the victim's training split, the public pool its validation and test splits.
    """

    example_options = {"alpha": 0.05, "samples": 10, "fit_samples": 40, "directions": 4, "steps": 10}
    needs_data = True
    null_hypothesis = ("the suspect is independent of the victim's private data: its scores on private samples "
                       "exceed those on public samples by no more than an independent reference model's")

    def __init__(self, *, embedding: Literal["blind-walk", "mingd"] = "blind-walk", samples: int = 30,
                 fit_samples: int = 200, directions: int = 10, steps: int = 30, step_size: float = 0.1,
                 repeats: int = 1,
                 mingd_steps: int = 100, norms: Sequence[str] = NORMS, alpha: float = 0.05) -> None:
        super().__init__(alpha=alpha)
        if embedding not in ("blind-walk", "mingd"):
            raise ValueError(f"embedding must be 'blind-walk' or 'mingd', got {embedding!r}")
        for name, v, low in (("samples", samples, 2), ("fit_samples", fit_samples, 2), ("directions", directions, 1),
                             ("repeats", repeats, 1),
                             ("steps", steps, 1), ("mingd_steps", mingd_steps, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"dataset inference's {name} must be an integer >= {low}, got {v!r}")
        if not step_size > 0:
            raise ValueError(f"dataset inference's step_size must be > 0, got {step_size!r}")
        bad = [p for p in norms if p not in NORMS]
        if bad or not norms:
            raise ValueError(f"dataset inference's norms must be among {', '.join(NORMS)}, got {list(norms)}")
        self.embedding, self.samples, self.fit_samples = embedding, samples, fit_samples
        self.directions, self.steps, self.step_size = directions, steps, float(step_size)
        self.mingd_steps, self.norms, self.repeats = mingd_steps, tuple(norms), repeats
        self.regressor: Callable[[np.ndarray], np.ndarray] | None = None
        self._pools: dict[str, tuple[Tensor, Tensor]] = {}
        self.reference_null: ReferenceNull | None = None
        self._saturated = 0.0

    # -- fitting: the regressor on the victim ------------------------------------------------------------
    def _fit(self, victim: nn.Module | BlackBox, *, data: DatasetSplits | None,
             generator: torch.Generator | None) -> None:
        assert data is not None  # needs_data
        if self.embedding == "mingd" and not model_gradients(victim):
            raise ValueError(f"MinGD embeds with input gradients, which {describe_model(victim)} does not give: use "
                             "embedding=blind-walk, or a torch victim (TorchScript, .pt2, python:module:factory)")
        from modelsteal.ownership.commitments import check_commitment, private_data_commitment

        self.commitment_checked = check_commitment(
            "private_data", private_data_commitment(data.x_train, data.y_train), self.commitments,
            evidence="the private data (the data's training split)")
        g = generator or torch.Generator().manual_seed(0)
        public_x = torch.cat([data.x_val, data.x_test])
        public_y = torch.cat([data.y_val, data.y_test])
        need = self.fit_samples + self.samples * self.repeats
        if len(data.x_train) < need or len(public_x) < need:
            raise ValueError(f"dataset inference needs {need} private and {need} public samples (fit_samples + "
                             f"samples x repeats); the data has {len(data.x_train)} training and "
                             f"{len(public_x)} val+test")
        priv = torch.randperm(len(data.x_train), generator=g)
        pub = torch.randperm(len(public_x), generator=g)
        f = self.fit_samples
        self._pools = {"private": (data.x_train[priv[f:]], data.y_train[priv[f:]]),
                       "public": (public_x[pub[f:]], public_y[pub[f:]])}
        x_fit = torch.cat([data.x_train[priv[:f]], public_x[pub[:f]]])
        y_fit = torch.cat([data.y_train[priv[:f]], public_y[pub[:f]]])
        box = victim if not isinstance(victim, nn.Module) else PredictionAPI(victim)
        feats, _ = self._embed(victim if isinstance(victim, nn.Module) else None, box, x_fit, y_fit,
                               generator=torch.Generator().manual_seed(int(torch.randint(2**31, (1,), generator=g))))
        member = np.r_[np.ones(f), np.zeros(f)]
        self.regressor = _fit_regressor(feats.numpy(), member)

    def _embed(self, model: nn.Module | None, box: BlackBox | None, x: Tensor, y: Tensor, *,
               generator: torch.Generator) -> tuple[Tensor, int]:
        if self.embedding == "mingd":
            assert model is not None
            return mingd_embedding(model, x, y, num_classes=int(self.num_classes or 0), norms=self.norms,
                                   steps=self.mingd_steps), 0
        assert box is not None
        return blind_walk_embedding(box, x, y, directions=self.directions, steps=self.steps,
                                    step_size=self.step_size, generator=generator)

    def min_queries(self) -> int:
        """Blind Walk's worst case, ``2·m·D·steps`` rows (refused before any query when the budget is smaller:
        a walk cut short would bias the margins); MinGD sends no queries."""
        return 1 if self.embedding == "mingd" else 2 * self.repeats * self.samples * self.directions * self.steps

    def budget_breakdown(self) -> str:
        if self.embedding == "mingd":
            return "MinGD sends no queries"
        rep = f"repeats={self.repeats} x " if self.repeats > 1 else ""
        return (f"Blind Walk's worst case: 2 groups (private, public) x {rep}samples={self.samples} x "
                f"directions={self.directions} x steps={self.steps} label queries")

    @property
    def null_shift(self) -> float:
        """``δ0`` of the test: 0, or the reference models' bound after :meth:`calibrate`."""
        return 0.0 if self.reference_null is None else self.reference_null.value

    def calibrate(self, references: Sequence[BlackBox | nn.Module], *, seeds: Sequence[int] = (0,)) -> float:
        """Set ``δ0`` from independent reference models: each is tested like a suspect at every seed of
        ``seeds`` (the same samples a suspect gets at that seed; every block with ``repeats``) and ``δ0`` is the
        largest mean difference ``μ̂ − μ̂₀``, floored at 0. Reference queries are not budgeted (the owner's own
        models). Returns ``δ0``."""
        self._require_fitted()
        if not references:
            raise ValueError("dataset inference: calibrate needs at least one independent reference model")
        self.reference_null = None
        shifts = []
        for r in references:
            for s in seeds:
                priv, pub, _ = self._test(r, seed=s)
                m = self.samples
                shifts += [float(priv[b * m:(b + 1) * m].mean() - pub[b * m:(b + 1) * m].mean())
                           for b in range(self.repeats)]
        self.reference_null = null_shift_upper_bound(shifts)
        return self.reference_null.value

    # -- the test --------------------------------------------------------------------------------------
    def scores(self, features: Tensor) -> Tensor:
        """The regressor's score (logit of "private") for each embedding row."""
        if self.regressor is None:
            raise NotFittedError("dataset inference has no confidence regressor: call fit(victim, data=splits)")
        return torch.as_tensor(self.regressor(features.numpy()), dtype=torch.float64)

    def verify(self, suspect: BlackBox | nn.Module, *, budget: int, seed: int = 0) -> Verdict:
        """Embed ``m`` private and ``m`` public samples (drawn with ``seed``) on the suspect, score them with the
        victim's regressor and run the one-sided Welch t-test of ``H0: μ − μ₀ <= δ0``. With ``repeats`` R > 1,
        R disjoint blocks of ``m`` + ``m`` samples give R independent tests (given the suspect), combined by
        Fisher's method (``scipy.stats.combine_pvalues``); the per-block p-values are the spread."""
        if self.embedding == "mingd" and self.fitted and not model_gradients(suspect):
            raise ValueError("MinGD needs white-box access to the suspect: pass the model (an nn.Module), or use "
                             "embedding=blind-walk for a black box")
        self.check_suspect(suspect)
        budget = self.check_budget(budget)
        priv, pub, used = self._test(suspect, seed=seed, budget=budget)
        saturated = self._saturated
        m = self.samples
        blocks = [(priv[r * m:(r + 1) * m], pub[r * m:(r + 1) * m]) for r in range(self.repeats)]
        tests = [welch_t_test(c - self.null_shift, c0) for c, c0 in blocks]
        if self.repeats == 1:
            t, p = tests[0]
            combined = "one-sided Welch t-test"
        else:
            from scipy.stats import combine_pvalues

            t, p = float("nan"), float(combine_pvalues([q for _, q in tests], method="fisher").pvalue)
            combined = f"Fisher's combination of {self.repeats} one-sided Welch t-tests on disjoint blocks"
        return self.verdict(p_value=min(max(p, 0.0), 1.0), queries=used, evidence=torch.cat([priv, pub]), t=t,
                            delta_mu=float(priv.mean() - pub.mean()),
                            mean_private=float(priv.mean()), mean_public=float(pub.mean()), m=m,
                            repeats=self.repeats, block_p_values=[q for _, q in tests],
                            null_shift=self.null_shift, embedding=self.embedding, saturated=saturated,
                            null_hypothesis=self.null_hypothesis,
                            reference_shifts=None if self.reference_null is None else
                            list(self.reference_null.per_reference),
                            test=f"{combined}, H0: mu_private - mu_public <= null_shift")

    def _test(self, suspect: BlackBox | nn.Module, *, seed: int, budget: int | None = None
              ) -> tuple[Tensor, Tensor, int]:
        """``(scores of the repeats·m private samples, of the repeats·m public ones, queries)``, drawn with
        ``seed`` (block ``r`` is rows ``r·m … (r+1)·m``)."""
        box = self.check_suspect(suspect)
        g = torch.Generator().manual_seed(seed)
        n = self.samples * self.repeats
        xs, ys = [], []
        for group in ("private", "public"):
            px, py = self._pools[group]
            idx = torch.randperm(len(px), generator=g)[:n]
            xs.append(px[idx])
            ys.append(py[idx])
        counted = self.budgeted(box, budget=budget if budget is not None else 2**62)
        model = suspect if isinstance(suspect, nn.Module) else None
        feats, _ = self._embed(model, counted, torch.cat(xs), torch.cat(ys), generator=g)
        # Blind Walk: the fraction of walks that never left the class within steps x step_size (a feature stuck
        # at the cap carries no margin; many of them mean the walk is too short for this model)
        cap = self.steps * self.step_size
        self._saturated = float((feats >= cap - 1e-6).float().mean()) if self.embedding == "blind-walk" else 0.0
        s = self.scores(feats)
        return s[:n], s[n:], counted.used


def _fit_regressor(features: np.ndarray, member: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Standardised logistic regression ``embedding -> logit P(private)`` (fitted on the victim's embeddings)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    pipe.fit(features, member)
    return pipe.decision_function
