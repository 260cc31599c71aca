"""Equation-solving extraction (Tramèr et al., USENIX Security 2016, Sec. 4.1, Table 4).

A prediction API that returns class probabilities gives, for every query ``x``, equations in the model's
unknown parameters. Two ways of solving them:

- ``method="exact"`` (logistic models). For binary logistic regression ``σ⁻¹(f(x)) = w·x + β``: ``d + 1``
  queries in general position give a linear system with the exact solution (the paper's Sec. 4.1.1). For
  multinomial (softmax) regression the same holds for the *log-ratios* ``log(p_k / p_0) = (w_k − w_0)·x +
  (β_k − β_0)`` (beyond the paper, which fits softmax models by optimisation): ``d + 1`` queries recover
  every logit difference exactly. Softmax is invariant to adding one vector to every ``w_k``, so only
  the differences are identifiable; they are reported centred (``Σ_k w_k = 0``), which is scikit-learn's
  own layout for an L2-regularised multinomial model.
  *Saturated answers.* A log-ratio needs every probability to be positive, and a steep model queried over
  the raw feature ranges (e.g. trained on standardised features) answers exact zeros far from its data.
  Like an attacker would, the attack then picks queries that do not saturate: each saturated query is
  pulled toward an *anchor* whose answer is interior — the most interior of the ``d + 1`` answers, else
  the centre of the domain, else a point found by bisecting between two answers of different classes —
  halving its distance until the answer is interior (the log-ratios are linear along the segment, so a
  few halvings suffice). With more than two classes a class boundary can still saturate a third class;
  if no interior answer is found the attack says so. The probes are spent from the budget and counted
  in ``StealResult.queries``; where no answer saturates exactly ``d + 1`` queries are spent.
  Every answer received (probes included) must then agree with the solved model, which catches rounded
  answers.
- ``method="optimize"`` (all models, the paper's Sec. 4.1.2). Minimise the cross-entropy between the
  returned probabilities and the model's own on random uniform queries, plus a small L2 penalty that makes
  the softmax and one-vs-rest problems strongly convex (so L-BFGS finds the global minimum); for a
  multilayer perceptron the problem is not convex and ``restarts`` random initialisations are tried.

The clone is a PyTorch equivalent of the victim (:class:`~modelsteal.tabular.TabularLinear`
or :class:`~modelsteal.tabular.TabularMLP`) with raw-unit inputs. ``info`` reports the
paper's Table 4 columns: ``unknowns``, the queries (``StealResult.queries``) and the solver's ``time_s``,
plus ``weights``/``bias`` (linear models, in the raw input space, scikit-learn's layout); ``exact`` adds
``saturated`` (design queries that had to be moved) and ``probes`` (the extra queries that moved them).

Example::

    api = PredictionAPI(SklearnVictim(LogisticRegression().fit(x, y)))
    result = EquationSolving(space=data.space, method="exact")(api, budget=data.space.dim + 1)
    result.info["weights"], result.info["bias"]      # == coef_, intercept_ (to ~1e-10)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelsteal.attacks.base import Attack, StealResult, register_attack
from modelsteal.blackbox import QueryBudget
from modelsteal.data.tabular import FeatureSpace
from modelsteal.models import build_seeded
from modelsteal.tabular import TabularLinear, TabularMLP
from modelsteal.training import soft_cross_entropy

__all__ = ["EquationSolving", "logistic_unknowns", "mlp_unknowns"]

MODELS = ("logistic", "ovr", "mlp")
METHODS = ("auto", "exact", "optimize")
DESIGNS = ("random", "axis")


def logistic_unknowns(d: int, k: int) -> int:
    """Parameters of (multinomial or one-vs-rest) logistic regression: ``d + 1``, or ``k (d + 1)``."""
    return d + 1 if k == 2 else k * (d + 1)


def mlp_unknowns(d: int, k: int, hidden: Sequence[int]) -> int:
    """Parameters of an MLP ``d → hidden… → k`` (one output unit when ``k == 2``)."""
    sizes = [d, *hidden, 1 if k == 2 else k]
    return sum(sizes[i] * sizes[i + 1] + sizes[i + 1] for i in range(len(sizes) - 1))


@register_attack("equation-solving")
class EquationSolving(Attack):
    """Equation-solving attack on models that return probabilities (Tramèr et al., Sec. 4.1).

    Options (keyword-only):
    ``space``: the input domain (ranges; e.g. ``load_tabular(name).space``);
    ``model``: ``"logistic"`` (binary or multinomial), ``"ovr"`` (one-vs-rest) or ``"mlp"``;
    ``method``: ``"exact"`` (logistic only; ``d + 1`` queries), ``"optimize"``, or ``"auto"`` (exact for
    logistic, else optimize);
    ``num_queries``: random queries for ``optimize`` (default: the whole budget);
    ``design``: ``"random"`` uniform queries (the paper) or ``"axis"`` (the centre of the domain and one
    step along each feature) for ``exact``;
    ``hidden``/``activation``: the MLP's architecture, known to the attacker as in the paper;
    ``regularization``: the L2 weight ``λ`` of ``optimize`` (on standardised inputs);
    ``max_iter``: L-BFGS iterations; ``restarts``: random initialisations for the MLP;
    ``widen``: half-width of the query range of a feature that is constant in the data (so that its weight
    is identifiable too);
    ``min_probability``: answers with a probability below it count as saturated for ``exact`` (default: the
    smallest normal number of the answers' dtype, i.e. zeros and underflows; raise it for an API whose small
    probabilities are computed as ``1 − p`` and so lose their relative precision).
    """

    modality = "tabular"

    def __init__(self, *, space: FeatureSpace, model: str = "logistic", method: str = "auto",
                 num_queries: int | None = None, design: str = "random", hidden: Sequence[int] = (20,),
                 activation: str = "tanh", regularization: float = 1e-12, max_iter: int = 2000,
                 restarts: int = 1, widen: float = 1.0, min_probability: float | None = None,
                 device: str | torch.device | None = None) -> None:
        super().__init__(device=device)
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        if method == "exact" and model != "logistic":
            raise ValueError(f"exact equation solving needs a logistic model (log-ratios linear in x), not {model!r}")
        if design not in DESIGNS:
            raise ValueError(f"unknown design {design!r}; known: {', '.join(DESIGNS)}")
        if num_queries is not None and num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        if regularization < 0 or max_iter < 1 or restarts < 1 or widen <= 0:
            raise ValueError("regularization >= 0, max_iter >= 1, restarts >= 1 and widen > 0 are required")
        if min_probability is not None and not 0 < min_probability < 1:
            raise ValueError(f"min_probability must lie in (0, 1), got {min_probability}")
        self.space = space
        self.model = model
        self.method = ("exact" if model == "logistic" else "optimize") if method == "auto" else method
        self.num_queries = num_queries
        self.design = design
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.regularization = float(regularization)
        self.max_iter = int(max_iter)
        self.restarts = int(restarts)
        self.widen = float(widen)
        self.min_probability = min_probability

    def describe(self) -> dict[str, Any]:
        return {"attack": self.name, "model": self.model, "method": self.method, "design": self.design,
                "regularization": self.regularization}

    def unknowns(self, k: int) -> int:
        """The number of unknown parameters (the paper's Table 4 column)."""
        d = self.space.dim
        if self.model == "mlp":
            return mlp_unknowns(d, k, self.hidden)
        return logistic_unknowns(d, k)

    def min_queries(self) -> int:
        """The fewest queries the method can work with: ``d + 1`` for ``exact`` (more when answers saturate,
        see the module docstring), ``num_queries`` (or 1) for ``optimize``."""
        if self.method == "exact":
            return self.space.dim + 1
        return self.num_queries or 1

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        d, k = self.space.dim, victim.num_classes
        if tuple(victim.input_shape) != (d,):
            raise ValueError(f"victim takes inputs {tuple(victim.input_shape)} but the feature space has {d} columns")
        model = "logistic" if self.model == "ovr" and k == 2 else self.model  # binary one-vs-rest is logistic
        if self.method == "exact":
            return self._exact(victim, generator=generator, k=k)
        return self._optimize(victim, generator=generator, k=k, model=model)

    # -- exact: the log-ratio equations ---------------------------------------------------------------
    def _exact(self, victim: QueryBudget, *, generator: torch.Generator, k: int) -> StealResult:
        d = self.space.dim
        c, h = self.space.box(widen=self.widen)
        if self.design == "axis":
            u = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)])
        else:
            u = 2.0 * torch.rand(d + 1, d, generator=generator, dtype=torch.float64) - 1.0
        shrink = _Shrink(self, victim, center=c, half=h)
        p = shrink.ask(u, probe=False)
        saturated = ~shrink.interior(p)
        if bool(saturated.any()):
            u, p = shrink.unsaturate(u, p, saturated)
        start = time.perf_counter()
        log_p = p.log()
        ratios = log_p[:, 1:] - log_p[:, :1]  # (d+1, K-1): log(p_k / p_0) = Δw_k·x + Δβ_k
        a = torch.cat([u, torch.ones(d + 1, 1, dtype=torch.float64)], dim=1)
        try:
            theta = torch.linalg.solve(a, ratios)  # (d+1, K-1), in standardised coordinates
        except RuntimeError as e:
            raise ValueError(f"the {d + 1} queries are not in general position: {e}") from e
        dw = theta[:d].T / h  # (K-1, d), raw units
        db = theta[d] - dw @ c
        if k == 2:
            weight, bias = dw, db
        else:
            weight = torch.cat([torch.zeros(1, d, dtype=torch.float64), dw])
            bias = torch.cat([torch.zeros(1, dtype=torch.float64), db])
            weight, bias = weight - weight.mean(dim=0), bias - bias.mean()
        elapsed = time.perf_counter() - start
        clone = TabularLinear(d, k, mode="binary" if k == 2 else "softmax").set_raw_parameters(weight, bias)
        x_all, p_all = shrink.asked()
        shrink.check_consistent(clone, x_all, p_all)
        info = {"method": "exact", "unknowns": logistic_unknowns(d, k), "time_s": elapsed, "weights": weight,
                "bias": bias, "residual": float((a @ theta - ratios).abs().max()),
                "saturated": int(saturated.sum()), "probes": len(x_all) - (d + 1)}
        return StealResult(clone=clone, queries=victim.used, transfer_x=x_all, transfer_y=p_all, info=info)

    # -- optimize: regularised loss minimisation --------------------------------------------------------
    def _make(self, model: str, k: int, seed: int) -> nn.Module:
        d = self.space.dim
        c, h = self.space.box(widen=self.widen)

        def make() -> nn.Module:
            if model == "mlp":
                return TabularMLP(d, k, hidden=self.hidden, activation=self.activation, center=c, scale=h)
            mode = "binary" if k == 2 else ("ovr" if model == "ovr" else "softmax")
            net = TabularLinear(d, k, mode=mode, center=c, scale=h)
            nn.init.zeros_(net.linear.weight)
            nn.init.zeros_(net.linear.bias)
            return net

        return build_seeded(make, seed=seed).to(self.device)

    def _optimize(self, victim: QueryBudget, *, generator: torch.Generator, k: int, model: str) -> StealResult:
        n = self.num_queries if self.num_queries is not None else victim.remaining
        if n > victim.remaining:
            raise ValueError(f"num_queries={n} exceeds the budget left ({victim.remaining})")
        x = self.space.sample(n, generator=generator, widen=self.widen)
        p = self.query_all(victim, x).to(torch.float64)
        xs, ps = x.to(self.device), p.to(self.device)
        seeds = torch.randint(0, 2**31 - 1, (self.restarts,), generator=generator).tolist()
        start = time.perf_counter()
        fits = []
        for seed in seeds if model == "mlp" else seeds[:1]:  # a convex problem needs one start
            net = self._make(model, k, int(seed))
            fits.append((self._fit(net, xs, ps), net))
        elapsed = time.perf_counter() - start
        loss, clone = min(fits, key=lambda fit: fit[0])
        clone = clone.cpu().eval()
        entropy = float(-(p * p.clamp_min(1e-300).log()).sum(dim=1).mean())
        info: dict[str, Any] = {"method": "optimize", "unknowns": self.unknowns(k), "time_s": elapsed,
                                "loss": loss, "kl": loss - entropy}
        if isinstance(clone, TabularLinear):
            weight, bias = clone.raw_parameters()
            if clone.mode == "softmax":
                weight, bias = weight - weight.mean(dim=0), bias - bias.mean()
            info.update(weights=weight, bias=bias)
        return StealResult(clone=clone, queries=victim.used, transfer_x=x, transfer_y=p, info=info)

    def _fit(self, net: nn.Module, x: Tensor, p: Tensor) -> float:
        """Minimise ``CE(p, f(x)) + λ/2 Σ ||W||²``; returns the final data loss.

        Logistic models (convex) use a damped Newton method on the exact Hessian, which reaches the
        global minimum to machine precision in a few dozen steps; the MLP uses full-batch L-BFGS.
        """
        net.train()
        if isinstance(net, TabularLinear):
            self._newton(net, x, p)
        else:
            weights = [m.weight for m in net.modules() if isinstance(m, nn.Linear)]
            opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=self.max_iter, tolerance_grad=1e-12,
                                    tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

            def closure() -> Tensor:
                opt.zero_grad(set_to_none=True)
                loss = soft_cross_entropy(net(x), p) + 0.5 * self.regularization * sum(w.pow(2).sum() for w in weights)
                loss.backward()
                return loss

            opt.step(closure)
        net.eval()
        with torch.no_grad():
            data_loss = float(soft_cross_entropy(net(x), p))
        return data_loss if math.isfinite(data_loss) else math.inf

    def _newton(self, net: TabularLinear, x: Tensor, p: Tensor) -> None:
        """Levenberg-Marquardt-damped Newton steps on ``θ = [W, b]`` (standardised inputs)."""
        lin = net.linear
        u = net.normalize(x.to(torch.float64))
        u = torch.cat([u, torch.ones(len(u), 1, dtype=u.dtype, device=u.device)], dim=1)  # (N, D+1)
        n, dd = u.shape
        kout = lin.weight.shape[0]
        penalty = torch.ones(kout, dd, dtype=torch.float64, device=u.device)
        penalty[:, -1] = 0.0  # biases are not penalised
        lam = self.regularization
        eye = torch.eye(kout * dd, dtype=torch.float64, device=u.device)

        def objective(theta: Tensor) -> Tensor:
            return soft_cross_entropy(net.link(u @ theta.T), p) + 0.5 * lam * (penalty * theta * theta).sum()

        with torch.no_grad():
            theta = torch.cat([lin.weight, lin.bias[:, None]], dim=1).clone()
            value = objective(theta)
            mu = 1e-6
            for _ in range(self.max_iter):
                gz, hz = _score_derivatives(u @ theta.T, p, net.mode)  # (N, K), (N, K, K)
                g = (gz.T @ u) / n + lam * penalty * theta  # (K, D+1)
                if float(g.abs().max()) < 1e-13:
                    break
                h = torch.einsum("nab,ni,nj->aibj", hz, u, u).reshape(kout * dd, kout * dd) / n
                h = h + torch.diag((lam * penalty).flatten())
                improved = False
                while mu < 1e12:
                    step = torch.linalg.solve(h + mu * eye, -g.flatten()).reshape(kout, dd)
                    new_value = objective(theta + step)
                    if new_value <= value:
                        improved = bool(new_value < value)
                        theta, value, mu = theta + step, new_value, max(mu / 10.0, 1e-15)
                        break
                    mu *= 10.0
                if not improved:
                    break
            lin.weight.copy_(theta[:, :-1])
            lin.bias.copy_(theta[:, -1])


def _score_derivatives(z: Tensor, p: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Gradient ``(N, K)`` and Hessian ``(N, K, K)`` of ``−Σ_k p_k log softmax(link(z))_k`` in the scores ``z``.

    With ``s = Σ_k p_k`` (1 unless the answers were rounded) and ``q = softmax(l)``, the loss has gradient
    ``s q − p`` and Hessian ``s (diag q − q qᵀ)`` in the logits ``l``; the chain rule through the link
    (``l = [0, z]``, ``l = z`` or ``l = log σ(z)``) gives them in ``z``.
    """
    s = p.sum(dim=1, keepdim=True)
    if mode == "binary":
        q1 = torch.sigmoid(z)  # (N, 1)
        return s * q1 - p[:, 1:], (s * q1 * (1 - q1))[:, :, None]
    logits = F.logsigmoid(z) if mode == "ovr" else z
    q = torch.softmax(logits, dim=1)
    g_l = s * q - p
    h_l = s[:, :, None] * (torch.diag_embed(q) - q[:, :, None] * q[:, None, :])
    if mode != "ovr":
        return g_l, h_l
    r = torch.sigmoid(-z)  # d log σ(z) / dz
    curvature = -torch.sigmoid(z) * r  # d² log σ(z) / dz²
    return g_l * r, r[:, :, None] * h_l * r[:, None, :] + torch.diag_embed(g_l * curvature)


class _Shrink:
    """The queries of exact solving, and the search for answers that do not saturate.

    Works in standardised coordinates ``u`` (``x = centre + u · half``) and records every query it makes,
    so that the result reports them all and the solution can be checked against every answer.
    """

    max_steps = 64  # halvings of a segment: float64 has a 53-bit mantissa, so 64 reach the anchor itself

    def __init__(self, attack: EquationSolving, victim: QueryBudget, *, center: Tensor, half: Tensor) -> None:
        self.attack, self.victim, self.center, self.half = attack, victim, center, half
        self.floor: float | None = attack.min_probability
        self.xs: list[Tensor] = []
        self.ps: list[Tensor] = []
        self.saturated = 0
        self.eps = float(torch.finfo(torch.float64).eps)  # the answers' precision, set by the first query

    def ask(self, u: Tensor, *, probe: bool = True) -> Tensor:
        """Query the points ``u`` (standardised); returns float64 answers. A probe that the budget cannot
        pay for is a ``ValueError`` saying why it was needed (the design itself is the budget's to refuse)."""
        if probe and len(u) > self.victim.remaining:
            raise self._budget_error(len(u))
        x = self.center + u * self.half
        answers = self.attack.query_all(self.victim, x)
        if answers.is_floating_point():
            self.eps = float(torch.finfo(answers.dtype).eps)
        if self.floor is None:
            self.floor = float(torch.finfo(answers.dtype).tiny) if answers.is_floating_point() else 1.0
        self.xs.append(x)
        self.ps.append(answers.to(torch.float64))
        return self.ps[-1]

    def asked(self) -> tuple[Tensor, Tensor]:
        """Every point queried so far and its answer, in order."""
        return torch.cat(self.xs), torch.cat(self.ps)

    def interior(self, p: Tensor) -> Tensor:
        """``(N,)`` whether each answer is interior: every probability at least the floor."""
        return (p >= self.floor).all(dim=1)

    def unsaturate(self, u: Tensor, p: Tensor, saturated: Tensor) -> tuple[Tensor, Tensor]:
        """Move each saturated query toward an interior anchor, halving its distance until its answer is
        interior; returns the new design and answers (interior rows unchanged)."""
        self.saturated = int(saturated.sum())
        anchor = self._anchor(u, p, saturated)
        u, p = u.clone(), p.clone()
        todo = saturated.nonzero().flatten()
        t = 1.0
        for _ in range(self.max_steps):
            t /= 2.0
            v = anchor + t * (u[todo] - anchor)  # u[todo] is still the original query: rows move once
            q = self.ask(v)
            good = self.interior(q)
            u[todo[good]], p[todo[good]] = v[good], q[good]
            todo = todo[~good]
            if len(todo) == 0:
                return u, p
        raise ValueError(f"{len(todo)} queries still saturate {self.max_steps} halvings away toward an interior "
                         "answer (label-only or rounded answers?); use method='optimize'")

    def _anchor(self, u: Tensor, p: Tensor, saturated: Tensor) -> Tensor:
        """An interior point: the most interior answer, else the domain's centre, else a bisection."""
        if not bool(saturated.all()):
            margin = p.clamp_min(1e-300).log().amin(dim=1).masked_fill(saturated, -math.inf)
            return u[int(margin.argmax())]
        centre = torch.zeros(1, u.shape[1], dtype=u.dtype)
        at_centre = (u == 0).all(dim=1)
        q = p[at_centre][:1] if bool(at_centre.any()) else self.ask(centre)
        if bool(self.interior(q).all()):
            return centre[0]
        return self._bisect(centre[0], q[0], u, p)

    def _bisect(self, lo: Tensor, p_lo: Tensor, u: Tensor, p: Tensor) -> Tensor:
        """Bisect from ``lo`` toward a query of another class until an answer is interior.

        The class boundary between two classes lies on the segment; next to it their probabilities are
        equal, which is interior for two classes (for more it may not be: then this raises).
        """
        other = (p.argmax(dim=1) != p_lo.argmax()).nonzero().flatten()
        if len(other) == 0:
            raise ValueError(f"all {len(u)} answers saturate on class {int(p_lo.argmax())}, so no query points "
                             "toward an interior answer (a boundary outside the queried range, or a constant or "
                             "label-only API?); use method='optimize'")
        hi = u[int(other[0])]
        for _ in range(self.max_steps):
            mid = 0.5 * (lo + hi)
            q = self.ask(mid[None])[0]
            if bool(self.interior(q[None]).all()):
                return mid
            if int(q.argmax()) == int(p_lo.argmax()):
                lo = mid
            else:
                hi = mid
        raise ValueError("no interior answer between two classes after bisecting to machine precision "
                         "(label-only answers, or a multi-class boundary where other classes saturate?); "
                         "use method='optimize'")

    def check_consistent(self, clone: TabularLinear, x: Tensor, p: Tensor) -> None:
        """Every answer, probes included, must match the solved model to ``max(1e-6, 100 ε)`` of the answers'
        dtype (rounded answers do not)."""
        tol = max(1e-6, 100.0 * self.eps)
        with torch.no_grad():
            fitted = torch.softmax(clone(x), dim=1)
        gap = float((fitted - p).abs().max())
        if gap > tol:
            raise ValueError(f"the answers do not fit one logistic model (max |Δp| = {gap:.2g} over {len(x)} "
                             "queries): rounded or perturbed answers? use method='optimize'")

    def _budget_error(self, need: int) -> ValueError:
        v, queries = self.victim, "query" if need == 1 else "queries"
        return ValueError(f"exact equation solving needs strictly positive probabilities: {self.saturated} of the "
                          f"{self.attack.space.dim + 1} answers saturated (a probability below {self.floor:.3g}), "
                          f"and moving them toward an interior answer needs {need} more {queries}, with "
                          f"{v.remaining} of the budget ({v.budget}) left ({v.used} spent); for rounded or label-only "
                          "answers use method='optimize' (zeros there come from rounding, not from the model), "
                          "otherwise raise the budget")
