"""Mahalanobis distance to the closest class-conditional Gaussian (Lee, Lee, Lee & Shin, *A simple unified
framework for detecting out-of-distribution samples and adversarial attacks*, NeurIPS 2018): the "Mahal." column
of Atli et al.'s Table 4.

On the penultimate features ``f(x)`` of the victim's training set ``{(x_i, y_i)}`` (N samples, ``N_c`` of class
``c``), Lee et al. fit class-conditional Gaussians with one shared covariance (their Eq. 1):

    μ̂_c = (1 / N_c) Σ_{i: y_i = c} f(x_i),        Σ̂ = (1 / N) Σ_c Σ_{i: y_i = c} (f(x_i) − μ̂_c)(f(x_i) − μ̂_c)ᵀ,

and score an input by its confidence (Eq. 2)

    M(x) = max_c −(f(x) − μ̂_c)ᵀ Σ̂⁻¹ (f(x) − μ̂_c);

here ``score(x) = −M(x)``, the squared Mahalanobis distance to the closest class mean (higher = more
suspicious). Optional input pre-processing (Eq. 3), with ``ĉ`` the closest class,

    x̂ = x + ε · sign(∇_x M(x)) = x − ε · sign(∇_x (f(x) − μ̂_ĉ)ᵀ Σ̂⁻¹ (f(x) − μ̂_ĉ)),

then scores ``−M(x̂)``; ``epsilon=0`` (the default) skips it. Only the penultimate layer is used (the paper's
feature ensemble over several layers, weighted by a logistic regression trained on outliers, is not
implemented). ``Σ̂⁻¹`` is the pseudo-inverse of ``Σ̂ + ridge·I``, computed in float64 from its
eigendecomposition (``ridge=0`` by default: the pseudo-inverse alone is what the authors' code uses, through
scikit-learn's ``EmpiricalCovariance``), so dead ReLU units (zero variance) do not blow the distances up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from modelsteal.data.registry import DatasetSplits
from modelsteal.detectors._features import (
    FeatureMap,
    batched,
    check_batch_size,
    feature_map,
    input_gradient,
    require_features,
)
from modelsteal.detectors.base import Detector, register_detector
from modelsteal.models.builders import model_device


def class_gaussians(h: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Class means ``(K, d)`` and the shared (pooled, biased) covariance ``(d, d)`` of features ``h`` with
    labels ``y`` (Lee et al., Eq. 1), in float64. Two passes: the covariance is built from centred features."""
    h = h.double()
    counts = torch.bincount(y, minlength=num_classes).to(h)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"mahalanobis needs training samples of every class; none of class(es) {missing}")
    means = torch.zeros(num_classes, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, y, h)
    means /= counts[:, None]
    centred = h - means[y]
    return means, centred.T @ centred / len(h)


def whitening(cov: Tensor, *, ridge: float = 0.0) -> Tensor:
    """``W`` ``(d, r)`` with ``W Wᵀ = pinv(Σ + ridge·I)``: the eigenvectors of ``Σ + ridge·I`` scaled by
    ``λ^{-1/2}``, keeping eigenvalues above ``d · eps · λ_max`` (the pseudo-inverse's default cut-off), so
    ``(h − μ)ᵀ Σ⁻¹ (h − μ) = ||(h − μ) W||²``. Float64."""
    cov = cov.double()
    if ridge > 0:
        cov = cov + ridge * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
    lam, vec = torch.linalg.eigh(cov)
    keep = lam > lam.max().clamp_min(0) * len(cov) * torch.finfo(lam.dtype).eps
    return vec[:, keep] / lam[keep].sqrt()


def min_distances(h: Tensor, means_w: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``min_c (h − μ_c)ᵀ W Wᵀ (h − μ_c)`` per row of ``h`` ``(N, d)`` and the minimising class ``ĉ``, from the
    whitened means ``means_w = μ W`` ``(K, r)``: squared Euclidean distances in the whitened space."""
    d2 = torch.cdist(h @ w, means_w, compute_mode="donot_use_mm_for_euclid_dist").square()   # (N, K)
    return d2.min(dim=1)


@register_detector("mahalanobis")
class Mahalanobis(Detector):
    """Squared Mahalanobis distance of the penultimate features to the closest class mean (shared covariance).

    ``features``: the feature map (an ``nn.Module`` or a callable ``x ↦ (N, d)``); default the input of the
    victim's last ``nn.Linear``. ``epsilon``: input pre-processing magnitude (raw ``[0, 1]`` pixel units).
    After :meth:`fit`, ``means`` ``(K, d)``, ``covariance`` and ``precision`` ``(d, d)`` hold the fitted Gaussians;
    distances are computed as Euclidean distances after whitening (``W Wᵀ = Σ̂⁻¹``), one ``(N, d)·(d, r)`` product
    per batch instead of one ``d × d`` quadratic form per class.

    Example::

        det = make_detector("mahalanobis").fit(victim, data)
        det.calibrate(data.x_val, tnr=0.95)
    """

    def __init__(
        self,
        *,
        epsilon: float = 0.0,
        ridge: float = 0.0,
        features: nn.Module | Callable[[Tensor], Tensor] | str | None = None,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        if not epsilon >= 0:
            raise ValueError(f"mahalanobis epsilon must be >= 0, got {epsilon}")
        if not ridge >= 0:
            raise ValueError(f"mahalanobis ridge must be >= 0, got {ridge}")
        self.epsilon = float(epsilon)
        self.ridge = float(ridge)
        self.features = features
        self.batch_size = check_batch_size(batch_size)
        self.means: Tensor | None = None
        self.covariance: Tensor | None = None
        self._w: Tensor | None = None
        self._means_w: Tensor | None = None
        self._map: FeatureMap | None = None

    def check_victim(self, victim: nn.Module) -> None:
        require_features(victim, self.features, detector=self.name or 'mahalanobis')

    def _fit(self, victim: nn.Module, data: DatasetSplits, *, outliers: Tensor | None,
             generator: torch.Generator | None) -> None:
        self._map = feature_map(victim, self.features)
        device = model_device(victim)
        with torch.no_grad():
            h = batched(self._map, data.x_train, batch_size=self.batch_size, device=device)
        means, cov = class_gaussians(h, data.y_train.to(h.device).long(), data.num_classes)
        w = whitening(cov, ridge=self.ridge)
        self.means, self.covariance = means.to(h.dtype), cov.to(h.dtype)
        self._w, self._means_w = w.to(h.dtype), (means @ w).to(h.dtype)

    @property
    def precision(self) -> Tensor | None:
        """``Σ̂⁻¹`` as used: ``pinv(Σ̂ + ridge·I)`` ``(d, d)``."""
        return None if self._w is None else self._w @ self._w.T

    def _distance(self, x: Tensor) -> Tensor:
        assert self._map is not None and self._w is not None and self._means_w is not None
        return min_distances(self._map(x), self._means_w, self._w)[0]

    def _one(self, x: Tensor) -> Tensor:
        if self.epsilon > 0:  # x̂ = x − ε sign(∇_x min_c distance): the step towards the closest class
            x = x - self.epsilon * torch.sign(input_gradient(self._distance, x))
        with torch.no_grad():
            return self._distance(x)

    def score(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        """``(N,)`` scores ``−M(x̂)`` (``x̂ = x`` when ``epsilon=0``) on the victim's device; ``probs`` is not
        used."""
        victim = self._require_fitted()
        return batched(self._one, x, batch_size=self.batch_size, device=model_device(victim))
