"""Prediction Poisoning: Maximizing Angular Deviation (MAD) of the attacker's gradient.

Orekondy, Schiele and Fritz, *Prediction Poisoning: Towards Defenses Against DNN Model Stealing
Attacks*, ICLR 2020, Sec. 4 and Appendix B (Algorithm 1).

An attacker training a model ``F(·; w)`` on answers ``ỹ`` with the cross-entropy loss follows the gradient
``a = Gᵀỹ`` (Eq. 2) instead of ``u = Gᵀy`` (Eq. 1), where ``G = ∇_w log F(x; w)`` is the ``K × D``
Jacobian of the log-likelihoods (Eq. 5). MAD answers the ``ỹ`` that maximises the angular deviation

    max_ỹ || Gᵀỹ / ||Gᵀỹ||₂ − Gᵀy / ||Gᵀy||₂ ||₂²                       (Eq. 3, 4)
    s.t.  ỹ ∈ Δ^K (Eq. 6),   ||ỹ − y||_p ≤ ε (Eq. 7),

with ``G`` estimated on a surrogate model (a fixed, randomly initialised copy of the victim by default,
which the paper found best). The heuristic solver of Algorithm 1:

1. ``y* = argmax`` of Eq. 4 over the extremes of the simplex (the ``K`` one-hot vertices ``e_k``), or, for
   MAD-argmax, over the extremes of the label-preserving region ``Δ_c^K = {y ∈ Δ : y_c ≥ y_j}``;
2. ``ỹ = (1 − α) y + α y*`` with ``α = min(1, ε / ||y* − y||_p)`` (``OptStep``).

Eq. 4 depends on ``G`` only through ``⟨Gᵀa, Gᵀb⟩ = aᵀ M b`` with the ``K × K`` Gram matrix ``M = G Gᵀ``, so
only ``M`` is computed (see :mod:`modelsteal.models.gram`) and every candidate vertex is scored in one
batched operation.

Example::

    from modelsteal import PredictionAPI
    from modelsteal.defenses import MAD

    api = PredictionAPI(victim, defense=MAD(epsilon=0.5, norm="l1"))
    y_tilde = api.query(x)        # ||y_tilde - y||_1 <= 0.5 on every row
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from modelsteal.defenses.base import Defense, as_float, register_defense
from modelsteal.models import model_device, seeded
from modelsteal.models.builders import cpu_fast_layout
from modelsteal.models.formats import describe_model, model_features, model_gradients
from modelsteal.models.gram import LayerwiseGram, last_layer_gram, model_dtype

Norm = Literal["l1", "l2"]
Jacobian = Literal["last_layer", "all"]
Objective = Literal["mad", "identity", "random"]

# Mixed into the surrogate seed (ASCII "mad"), see random_surrogate.
_SURROGATE_SALT = 0x6D6164

# Cap on the elements of the (rows, vertices, K) candidate tensor built per chunk when scoring.
_SCORE_BUDGET = 1 << 22


# ------------------------------------------------------------------------------------------------
# Eq. 4 with the Gram matrix
# ------------------------------------------------------------------------------------------------
def mad_scores(m: Tensor, y: Tensor, vertices: Tensor, *, eps: float | None = None) -> Tensor:
    """Eq. 4 for candidate answers: ``|| Gᵀv/||Gᵀv|| − Gᵀy/||Gᵀy|| ||²`` from ``M = G Gᵀ`` alone.

    ``m`` (N, K, K), ``y`` (N, K), ``vertices`` (C, K) shared by all rows or (N, C, K) per row; returns
    (N, C). With ``q_ab = aᵀ M b`` the score is ``1 + 1 − 2 q_vy / sqrt(q_vv q_yy)``. A zero gradient
    (``q`` below the rounding level ``64·K·eps·max_k M_kk``, ``eps`` the relative precision ``M`` was computed
    with, by default that of its dtype) has no direction: its unit vector is taken as 0, so the score stays
    finite (1 against a non-zero vector, 0 between two zero ones). This happens e.g. when ``y`` equals the
    surrogate's own prediction, where ``Gᵀy = Σ_k y_k ∇ log p_k = ∇ Σ_k p_k = 0``.
    """
    my = (m @ y.unsqueeze(-1)).squeeze(-1)  # (N, K)
    q_yy = (y * my).sum(-1)
    if vertices.ndim == 2:
        q_vv = (torch.einsum("nij,cj->nci", m, vertices) * vertices).sum(-1)
        q_vy = my @ vertices.T
    else:
        q_vv = ((vertices @ m) * vertices).sum(-1)  # M is symmetric: rows of V M are (M v)ᵀ
        q_vy = (vertices @ my.unsqueeze(-1)).squeeze(-1)
    k = m.shape[-1]
    eps = torch.finfo(m.dtype).eps if eps is None else max(float(eps), torch.finfo(m.dtype).eps)
    ref = m.diagonal(dim1=1, dim2=2).abs().amax(dim=1)
    tol = 64 * k * eps * ref  # rounding level of a quadratic form aᵀMa with ||a||₁ = 1
    nz_v = q_vv > tol[:, None]
    nz_y = q_yy > tol
    inv_v = torch.where(nz_v, q_vv.clamp_min(torch.finfo(m.dtype).tiny).rsqrt(), torch.zeros_like(q_vv))
    inv_y = torch.where(nz_y, q_yy.clamp_min(torch.finfo(m.dtype).tiny).rsqrt(), torch.zeros_like(q_yy))
    cos = q_vy * inv_v * inv_y[:, None]
    return nz_v.to(m.dtype) + nz_y.to(m.dtype)[:, None] - 2 * cos


def argmax_region_vertices(num_classes: int, *, dtype: torch.dtype = torch.float32,
                           device: torch.device | str | None = None) -> Tensor:
    """Extremes of every label-preserving region ``Δ_c^K = {y ∈ Δ^K : y_c ≥ y_j ∀j}`` (Sec. 4, MAD-argmax).

    ``Δ_c^K`` is cut from the simplex by ``y_c ≥ y_j``; its vertices are the uniform distributions
    ``y_S = 1_S / |S|`` over the sets ``S ∋ c``. Returns ``(K, 2^(K−1), K)``: entry ``[c]`` lists the
    ``2^(K−1)`` vertices of ``Δ_c^K`` (row 0 is ``e_c``).
    """
    k = int(num_classes)
    codes = torch.arange(1 << (k - 1), device=device)
    bits = ((codes[:, None] >> torch.arange(k - 1, device=device)) & 1).to(dtype)  # (C, K−1) over classes ≠ c
    ones = torch.ones(bits.shape[0], 1, dtype=dtype, device=device)
    table = torch.stack([torch.cat([bits[:, :c], ones, bits[:, c:]], dim=1) for c in range(k)])
    return table / table.sum(dim=-1, keepdim=True)


def opt_step(y: Tensor, y_star: Tensor, epsilon: float, norm: Norm) -> tuple[Tensor, Tensor]:
    """``OptStep`` of Algorithm 1: ``ỹ = (1 − α) y + α y*`` with ``α = min(1, ε / ||y* − y||_p)``.

    The paper prints ``α = max{ε / ||y − y*||_p, 1}``; that is a typo: ``α`` must lie in ``[0, 1]`` for ``ỹ``
    to stay on the segment ``[y, y*] ⊂ Δ^K``, and the largest such step within the budget is the minimum.
    Then ``||ỹ − y||_p = α ||y* − y||_p = ε`` exactly whenever ``α < 1``. Returns ``(ỹ, α)``.
    """
    d = y_star - y
    dist = d.abs().sum(dim=1) if norm == "l1" else d.norm(dim=1)
    alpha = torch.where(
        dist > 0, (epsilon / dist.clamp_min(torch.finfo(d.dtype).tiny)).clamp(max=1.0), torch.zeros_like(dist)
    )
    return y + alpha[:, None] * d, alpha


def keep_argmax(y_tilde: Tensor, labels: Tensor) -> Tensor:
    """Make ``labels`` the (first) argmax of every row of ``y_tilde`` when it ties or loses by rounding.

    In exact arithmetic ``ỹ ∈ Δ_c^K`` already has ``ỹ_c ≥ ỹ_j``; ties occur at vertices ``y_S`` with ``|S| > 1``
    (reached when ``α = 1``) and ``torch.argmax`` returns the first maximal index. Offending rows are mixed
    with ``e_c``: ``(1 − λ) ỹ + λ e_c`` with ``λ = 2·gap + 8·eps`` (``gap = max_j ỹ_j − ỹ_c``), which gives
    ``ỹ_c − ỹ_j ≥ λ(1 + gap) − gap > 0`` and moves the row by at most ``2λ``, a few ulps.
    """
    wrong = y_tilde.argmax(dim=1) != labels
    if not bool(wrong.any()):
        return y_tilde
    rows, c = y_tilde[wrong], labels[wrong]
    gap = rows.amax(dim=1) - rows.gather(1, c[:, None]).squeeze(1)
    lam = (2 * gap + 8 * torch.finfo(rows.dtype).eps).clamp(max=1.0)[:, None]
    onehot = torch.zeros_like(rows).scatter_(1, c[:, None], 1.0)
    out = y_tilde.clone()
    out[wrong] = (1 - lam) * rows + lam * onehot
    return out


# ------------------------------------------------------------------------------------------------
# the defense
# ------------------------------------------------------------------------------------------------
@register_defense("mad")
class MAD(Defense):
    """Prediction Poisoning by Maximizing Angular Deviation (Orekondy et al., ICLR 2020, Sec. 4, Alg. 1).

    Args:
        surrogate: model whose Jacobian ``G`` (Eq. 5) stands in for the attacker's. ``None`` (default):
            a fixed, randomly initialised copy of the victim built in :meth:`bind` by
            :func:`random_surrogate` (``copy.deepcopy`` of the victim, every submodule with
            ``reset_parameters`` re-initialised from ``seed`` without touching the global RNG, buffers such
            as :class:`~modelsteal.models.Normalize` kept; eval mode, on the victim's device; on CPU, models
            with 2-d convolutions are stored channels-last, which oneDNN runs faster). A victim that cannot be
            copied so (an ONNX, scikit-learn, TorchScript or torch.export file: no torch layers to re-initialise)
            gets a randomly initialised architecture instead (:func:`default_surrogate_arch`), and a one-line
            note says so. A string names that architecture (``"lenet"``, randomly initialised from ``seed``:
            the random surrogate the paper found best, Sec. 4, "Estimating G") or a torch model file (any format
            :func:`~modelsteal.models.formats.load_model` reads that has gradients and an ``nn.Linear`` head). A
            given module is used as is (its mode, device and layout are not changed; inputs are moved to it).
        epsilon: utility budget ``ε`` of Eq. 7, ``||ỹ − y||_p ≤ ε`` (at most 2 in L1, √2 in L2).
        norm: ``"l1"`` or ``"l2"``, the ``p`` of Eq. 7 and of ``OptStep``.
        preserve_argmax: MAD-argmax: search the extremes of ``Δ_c^K`` so that ``argmax ỹ = argmax y``.
        jacobian: ``"last_layer"`` (the authors' code: ``G`` over the last linear layer, closed form from one
            forward pass) or ``"all"`` (the paper's text: ``G`` over every surrogate parameter).
        objective: ``"mad"`` (Eq. 4), or the ablations of Fig. 8: ``"identity"`` (``G = I``, the ``K × K``
            identity: maximise the angle between posterior vectors) and ``"random"`` (``y*`` a uniformly
            random extreme of ``Δ^K``, or of ``Δ_c^K`` with ``preserve_argmax``, per query).
        seed: seeds the default surrogate's initialisation and the ``"random"`` objective's generator.
        max_exact_classes: MAD-argmax enumerates all ``2^(K−1)`` vertices of ``Δ_c^K`` when
            ``K ≤ max_exact_classes``; above, it runs the greedy search of :meth:`argmax_target`.

    Shapes: ``perturb(x (N, *input_shape), probs (N, K)) -> (N, K)``; work is done in the dtype of
    ``probs`` (half precision is promoted to float32, float64 stays float64).
    """

    strength_param = "epsilon"
    example_strength = 0.7

    def __init__(
        self,
        *,
        surrogate: nn.Module | str | None = None,
        epsilon: float,
        norm: Norm = "l1",
        preserve_argmax: bool = False,
        jacobian: Jacobian = "last_layer",
        objective: Objective = "mad",
        seed: int = 0,
        max_exact_classes: int = 12,
    ) -> None:
        epsilon = float(epsilon)
        if not epsilon >= 0 or epsilon == float("inf"):
            raise ValueError(f"MAD needs a finite epsilon >= 0, got {epsilon}")
        norm = str(norm).lower()  # type: ignore[assignment]
        if norm not in ("l1", "l2"):
            raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
        jacobian = str(jacobian).lower().replace("-", "_")  # type: ignore[assignment]
        if jacobian not in ("last_layer", "all"):
            raise ValueError(f"jacobian must be 'last_layer' or 'all', got {jacobian!r}")
        objective = str(objective).lower()  # type: ignore[assignment]
        if objective not in ("mad", "identity", "random"):
            raise ValueError(f"objective must be 'mad', 'identity' or 'random', got {objective!r}")
        if surrogate is not None and not isinstance(surrogate, nn.Module | str):
            raise ValueError(f"surrogate must be an nn.Module, an architecture name, a model file or None, got "
                             f"{type(surrogate).__name__}")
        if isinstance(surrogate, str):
            check_surrogate_name(surrogate)
        if int(max_exact_classes) < 1:
            raise ValueError(f"max_exact_classes must be >= 1, got {max_exact_classes}")
        self.epsilon = epsilon
        self.norm: Norm = norm
        self.preserve_argmax = bool(preserve_argmax)
        self.preserves_argmax = self.preserve_argmax  # instance-level answer for MAD(preserve_argmax=True)
        self.uses_input = objective == "mad"  # the surrogate's Jacobian is taken at x; the ablations ignore x
        self.jacobian: Jacobian = jacobian
        self.objective: Objective = objective
        self.seed = int(seed)
        self.max_exact_classes = int(max_exact_classes)
        self.surrogate_spec = surrogate if isinstance(surrogate, str) else None  #: the name or file given
        self.surrogate: nn.Module | None = surrogate if isinstance(surrogate, nn.Module) else None
        self._layerwise: LayerwiseGram | None = None
        self._generator: torch.Generator | None = None
        self._vertex_cache: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}

    @property
    def budget_norm(self) -> str:
        return self.norm

    def __repr__(self) -> str:
        opts = [f"epsilon={self.epsilon}", f"norm={self.norm!r}"]
        if self.objective == "mad":
            opts.append(f"jacobian={self.jacobian!r}")
        if self.preserve_argmax and not type(self).preserves_argmax:
            opts.append("preserve_argmax=True")
        if self.objective != "mad" and type(self) is MAD:
            opts.append(f"objective={self.objective!r}")
        return f"{type(self).__name__}({', '.join(opts)})"

    # -- surrogate ------------------------------------------------------------------------------------
    def bind(self, model: nn.Module, *, input_shape: Sequence[int], num_classes: int) -> None:
        """Build the surrogate: a fixed random re-initialisation of a copy of ``model``; a named architecture or a
        model file when given; a random :func:`default_surrogate_arch` for a victim without torch layers."""
        if self.objective != "mad" or self.surrogate is not None:
            return
        if self.surrogate_spec is not None:
            self.surrogate = named_surrogate(self.surrogate_spec, input_shape=input_shape, num_classes=num_classes,
                                             seed=self.seed, device=model_device(model))
        else:
            self.surrogate = random_copy_or_arch(model, input_shape=input_shape, num_classes=num_classes,
                                                 seed=self.seed, who="MAD's Jacobian is taken on",
                                                 option="--defense-option surrogate=ARCH or surrogate=FILE")
        self.surrogate = cpu_fast_layout(self.surrogate)  # a private copy: layout only
        self._layerwise = None

    def _require_surrogate(self) -> nn.Module:
        if self.surrogate is None:
            raise RuntimeError(
                "MAD has no surrogate: pass surrogate=... or let PredictionAPI call bind(victim, ...) first"
            )
        return self.surrogate

    def gram(self, x: Tensor) -> Tensor:
        """``M = G Gᵀ`` (N, K, K) of the surrogate's log-likelihood Jacobian (Eq. 5) at ``x``.

        ``jacobian="last_layer"``: ``M = (I − 1pᵀ)(I − p1ᵀ)(||h||² + 1)`` in closed form (see
        :func:`~modelsteal.models.gram.last_layer_gram`); ``"all"``: layer by layer over all parameters
        (:class:`~modelsteal.models.gram.LayerwiseGram`). Computed in the surrogate's dtype.
        """
        sur = self._require_surrogate()
        dev = model_device(sur)
        xs = x.detach().to(device=dev, dtype=model_dtype(sur))
        if xs.ndim == 4 and _channels_last(sur):
            xs = xs.contiguous(memory_format=torch.channels_last)
        if self.jacobian == "last_layer":
            return last_layer_gram(sur, xs)[0]
        if self._layerwise is None or self._layerwise.model is not sur:
            self._layerwise = LayerwiseGram(sur)
        return self._layerwise(xs)[0]

    # -- inner maximisation of Eq. 4 --------------------------------------------------------------
    def target(self, x: Tensor, probs: Tensor) -> Tensor:
        """``y*`` of Algorithm 1 (line 3) for each row: the extreme of ``Δ^K`` (or ``Δ_c^K``) maximising Eq. 4."""
        y = as_float(probs.detach())
        n, k = y.shape
        if self.objective == "random":
            return self._random_target(y)
        if self.objective == "identity":
            m = torch.eye(k, dtype=y.dtype, device=y.device).expand(n, k, k)
            eps = torch.finfo(y.dtype).eps
        else:
            m = self.gram(x)
            eps = max(torch.finfo(m.dtype).eps, torch.finfo(y.dtype).eps)  # M is as precise as the surrogate
            m = m.to(device=y.device, dtype=y.dtype)
        if not self.preserve_argmax:
            scores = mad_scores(m, y, torch.eye(k, dtype=y.dtype, device=y.device), eps=eps)
            return torch.nn.functional.one_hot(scores.argmax(dim=1), k).to(y.dtype)
        return self.argmax_target(m, y, eps=eps)

    def argmax_target(self, m: Tensor, y: Tensor, *, eps: float | None = None) -> Tensor:
        """MAD-argmax: maximise Eq. 4 over the extremes ``y_S = 1_S/|S|`` (``S ∋ c``) of ``Δ_c^K``, ``c = argmax y``.

        ``K ≤ max_exact_classes``: all ``2^(K−1)`` vertices are scored at once (rows chunked to bound memory).
        Above, a greedy ascent over the sets ``S``: start from ``S = {c}`` (``y* = e_c``); at each step score
        every ``S ∪ {j}``, ``j ∉ S`` in one batched call, add the best ``j`` if it raises the score, and stop
        (per row) when no single addition improves it. It evaluates at most ``K²`` vertices and its result
        scores at least as high as ``e_c``.
        """
        n, k = y.shape
        c = y.argmax(dim=1)
        if k <= self.max_exact_classes:
            key = (k, y.dtype, y.device)
            if key not in self._vertex_cache:
                self._vertex_cache[key] = argmax_region_vertices(k, dtype=y.dtype, device=y.device)
            table = self._vertex_cache[key]  # (K, C, K)
            step = max(1, _SCORE_BUDGET // (table.shape[1] * k))
            best = torch.cat([
                mad_scores(m[i : i + step], y[i : i + step], table[c[i : i + step]], eps=eps).argmax(dim=1)
                for i in range(0, n, step)
            ])
            return table[c, best]
        in_s = torch.nn.functional.one_hot(c, k).bool()
        current = mad_scores(m, y, in_s.to(y.dtype).unsqueeze(1), eps=eps).squeeze(1)
        active = torch.ones(n, dtype=torch.bool, device=y.device)
        eye = torch.eye(k, dtype=torch.bool, device=y.device)
        for _ in range(k - 1):
            cand = (in_s.unsqueeze(1) | eye).to(y.dtype)  # (N, K, K): row j is S ∪ {j}
            cand = cand / cand.sum(dim=-1, keepdim=True)
            scores = mad_scores(m, y, cand, eps=eps).masked_fill(in_s, float("-inf"))
            top, j = scores.max(dim=1)
            improve = active & (top > current)
            if not bool(improve.any()):
                break
            in_s[improve, j[improve]] = True
            current = torch.where(improve, top, current)
            active = improve
        v = in_s.to(y.dtype)
        return v / v.sum(dim=1, keepdim=True)

    def _random_target(self, y: Tensor) -> Tensor:
        """Fig. 8 ablation ``y* = rand``: a uniform extreme of ``Δ^K`` (or of ``Δ_c^K``), from a seeded generator."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        n, k = y.shape
        if not self.preserve_argmax:
            idx = torch.randint(k, (n,), generator=self._generator).to(y.device)
            return torch.nn.functional.one_hot(idx, k).to(y.dtype)
        # each S ∋ c equally likely: every other class joins S with probability 1/2
        bits = (torch.rand(n, k, generator=self._generator) < 0.5).to(y.device)
        bits[torch.arange(n, device=y.device), y.argmax(dim=1)] = True
        v = bits.to(y.dtype)
        return v / v.sum(dim=1, keepdim=True)

    # -- Algorithm 1 --------------------------------------------------------------------------------
    def perturb(self, x: Tensor, probs: Tensor, *, client: str) -> Tensor:
        """``PerturbedPredict-MAD``: ``y*`` (line 3), then ``ỹ = (1 − α) y + α y*`` (lines 5–7, ``OptStep``)."""
        if probs.shape[0] == 0 or self.epsilon == 0:
            return probs
        y = as_float(probs.detach())
        y_star = self.target(x, y)
        y_tilde, _ = opt_step(y, y_star, self.epsilon, self.norm)
        if self.preserve_argmax:
            y_tilde = keep_argmax(y_tilde, y.argmax(dim=1))
        return y_tilde.to(probs.dtype)


@register_defense("mad-argmax")
class MADArgmax(MAD):
    """MAD-argmax (Sec. 4, "Variant"): Eq. 4 maximised over the extremes of ``Δ_c^K``, so the top-1 label of
    every answer is the victim's (``dist-argmax(y, ỹ) = 0``) while ``||ỹ − y||_p ≤ ε`` still holds."""

    preserves_argmax = True

    def __init__(
        self,
        *,
        surrogate: nn.Module | str | None = None,
        epsilon: float,
        norm: Norm = "l1",
        jacobian: Jacobian = "last_layer",
        objective: Objective = "mad",
        seed: int = 0,
        max_exact_classes: int = 12,
    ) -> None:
        super().__init__(
            surrogate=surrogate, epsilon=epsilon, norm=norm, preserve_argmax=True, jacobian=jacobian,
            objective=objective, seed=seed, max_exact_classes=max_exact_classes,
        )


@register_defense("mad-identity")
class MADIdentity(MAD):
    """Ablation ``G = I`` (Fig. 8 (a)): Eq. 4 with the ``K × K`` identity for ``G``, which picks the extreme
    farthest in angle from ``y`` (for plain MAD, ``e_k`` with the smallest ``y_k``). Needs no surrogate."""

    def __init__(
        self, *, epsilon: float, norm: Norm = "l1", preserve_argmax: bool = False, seed: int = 0,
        max_exact_classes: int = 12,
    ) -> None:
        super().__init__(
            epsilon=epsilon, norm=norm, preserve_argmax=preserve_argmax, objective="identity", seed=seed,
            max_exact_classes=max_exact_classes,
        )


@register_defense("mad-random")
class MADRandom(MAD):
    """Ablation ``y* = rand`` (Fig. 8 (b)): a uniformly random extreme of the simplex (of ``Δ_c^K`` with
    ``preserve_argmax``) per query, drawn from a generator seeded with ``seed``; same ``OptStep``."""

    def __init__(self, *, epsilon: float, norm: Norm = "l1", preserve_argmax: bool = False, seed: int = 0) -> None:
        super().__init__(epsilon=epsilon, norm=norm, preserve_argmax=preserve_argmax, objective="random", seed=seed)


def random_surrogate(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """A fixed, randomly initialised copy of ``model`` (the surrogate the paper found best, Sec. 4).

    ``copy.deepcopy(model)``, then every submodule with ``reset_parameters`` is re-initialised under
    :func:`modelsteal.models.seeded` (a forked global RNG) seeded with ``seed ^ 0x6D6164`` (``"mad"``: so that
    an untrained victim built with ``build_model(..., seed=0)`` does not get itself back as the surrogate, for
    which ``Gᵀy = 0``), so the global RNG is untouched; buffers of modules
    without ``reset_parameters`` (e.g. :class:`~modelsteal.models.Normalize`) are kept. Returned in eval
    mode, on the victim's device, with ``requires_grad`` off (gradients are taken through the input).
    """
    sur = copy.deepcopy(model)
    with seeded(int(seed) ^ _SURROGATE_SALT, device=model_device(sur)):
        with torch.no_grad():
            for mod in sur.modules():
                reset = getattr(mod, "reset_parameters", None)
                if callable(reset):
                    reset()
    return sur.eval().requires_grad_(False)


def random_copy_or_arch(model: nn.Module, *, input_shape: Sequence[int], num_classes: int, seed: int, who: str,
                        option: str) -> nn.Module:
    """:func:`random_surrogate` of ``model`` when it has torch layers to re-initialise; otherwise (an ONNX,
    scikit-learn, TorchScript or torch.export victim) a randomly initialised :func:`default_surrogate_arch`,
    announced in one line on the ``modelsteal`` logger (``who`` uses it, ``option`` chooses another)."""
    if model_features(model) and model_gradients(model):
        return random_surrogate(model, seed=seed)
    arch = default_surrogate_arch(input_shape)
    logging.getLogger("modelsteal").warning(
        f"the victim ({describe_model(model)}) has no torch layers to copy, so {who} a randomly initialised {arch}; "
        f"choose another with {option}")
    return named_surrogate(arch, input_shape=input_shape, num_classes=num_classes, seed=seed,
                           device=model_device(model))


def default_surrogate_arch(input_shape: Sequence[int]) -> str:
    """The architecture of MAD's surrogate for a victim without torch layers: ``lenet`` for images up to 64×64,
    ``resnet18`` above (it pools globally), ``mlp`` for flat inputs."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3:
        return "mlp"
    return "lenet" if max(shape[1:]) <= 64 else "resnet18"


def check_surrogate_name(spec: str) -> str:
    """``spec`` normalised when it names an architecture, as given when it is a model file (or
    ``python:module:factory``); a one-line ``ValueError`` otherwise, raised when MAD is built (before a sweep
    trains anything)."""
    from modelsteal.models import ARCHITECTURES

    key = spec.strip().lower().replace("_", "").replace("-", "")
    if key in ARCHITECTURES:
        return key
    if not spec.startswith("python:") and not Path(spec).is_file():
        raise ValueError(f"MAD surrogate {spec!r} is neither an architecture ({', '.join(ARCHITECTURES)}) nor a "
                         "model file")
    return spec


def named_surrogate(spec: str, *, input_shape: Sequence[int], num_classes: int, seed: int,
                    device: torch.device) -> nn.Module:
    """MAD's surrogate from a string: a registered architecture (randomly initialised from ``seed ^ "mad"``, inputs
    normalised with mean = std = 0.5 per channel) or a torch model file (loaded as it is). One-line
    ``ValueError`` for anything else, or for a file without gradients or an ``nn.Linear`` head."""
    from modelsteal.models import ARCHITECTURES, build_model
    from modelsteal.models.formats import ModelSpec, load_model

    key = check_surrogate_name(spec)
    if key in ARCHITECTURES:
        shape = tuple(int(s) for s in input_shape)
        half = [0.5] * shape[0] if len(shape) == 3 else None
        model = build_model(key, input_shape=shape, num_classes=num_classes, mean=half, std=half,
                            seed=int(seed) ^ _SURROGATE_SALT)
        return model.to(device).eval().requires_grad_(False)
    loaded = load_model(spec, spec=ModelSpec(input_shape=tuple(input_shape)), device=device)
    if not (model_gradients(loaded.model) and model_features(loaded.model)):
        raise ValueError(f"MAD surrogate {spec} is {describe_model(loaded.model)}; MAD's Jacobian needs a torch "
                         "model ending in an nn.Linear (a modelsteal checkpoint or python:module:factory)")
    if loaded.meta["num_classes"] != num_classes:
        raise ValueError(f"MAD surrogate {spec} answers {loaded.meta['num_classes']} classes, the victim {num_classes}")
    return loaded.model.eval().requires_grad_(False)


def _channels_last(model: nn.Module) -> bool:
    """Whether the model's *first* 4-d weight is strictly channels-last (then inputs are given that layout
    too). A first convolution with one input channel reads as not channels-last, so MNIST LeNets get
    contiguous inputs: kept as it is because the committed MAD results were computed so (another input layout
    may change the last bit of the answers); :func:`~modelsteal.models.builders.is_channels_last` checks every
    weight."""
    for t in model.parameters():
        if t.ndim == 4:
            return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return False


__all__ = [
    "MAD", "MADArgmax", "MADIdentity", "MADRandom", "argmax_region_vertices", "default_surrogate_arch", "keep_argmax",
    "mad_scores", "named_surrogate", "opt_step", "random_surrogate",
]
