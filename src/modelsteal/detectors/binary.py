"""Atli et al.'s binary in/out classifier (*Extraction of Complex DNN Models: Real Threat or Boogeyman?*, AAAI-20
EDSMLS workshop, Sec. 4.2 "Training binary classifier", models ``RN…*LR``; "Ours" in Table 4).

A frozen feature extractor ``φ`` (Atli et al.: an ImageNet-pre-trained ResNet without its last layer; here the
victim's own penultimate features by default, or any ``nn.Module`` passed as ``features=``) followed by a binary
logistic regression trained with L-BFGS and an L2 penalty whose strength is chosen by 10-fold cross-validation
(scikit-learn's ``LogisticRegressionCV``), on the victim's training set (label 0, "in") against an outlier set
(label 1, "out"):

    score(x) = P(out | x) = σ(wᵀ φ̃(x) + b),        φ̃ = (φ − mean) / std  (``standardize=True``)

Its own decision rule is ``score > 0.5`` (the "Ours" TPR/TNR columns of Table 4): :meth:`fit` sets that
threshold (``tnr`` stays ``None``); :meth:`Detector.calibrate` replaces it by one chosen for a target TNR, as for
the other detectors. The fitted ``w``, ``b`` (and the standardisation) are kept as tensors on the victim's
device, so scoring is one batched forward pass with no NumPy round trip; ``estimator`` keeps the fitted
scikit-learn model. Atli et al. feed the features unscaled; ``standardize`` (default on) helps
L-BFGS converge on unnormalised ReLU features and makes the L2 penalty weigh every feature alike (the decision
boundaries it can express are the same).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from modelsteal.data.registry import DatasetSplits
from modelsteal.detectors._features import (
    FeatureMap,
    batched,
    check_batch_size,
    feature_map,
    require_features,
    subsample,
)
from modelsteal.detectors.base import Detector, register_detector
from modelsteal.models.builders import model_device


def check_outliers(outliers: Tensor, x_train: Tensor, *, folds: int) -> None:
    """One-line ``ValueError`` for an outlier set the binary classifier cannot learn from: empty or too small
    for ``folds``-fold CV, shaped unlike the training inputs, or made only of the victim's training images."""
    if outliers.ndim < 1 or len(outliers) < folds:
        raise ValueError(f"binary needs at least {folds} outliers for {folds}-fold cross-validation, got "
                         f"{len(outliers) if outliers.ndim else 0}")
    if tuple(outliers.shape[1:]) != tuple(x_train.shape[1:]):
        raise ValueError(f"binary outliers must be shaped like the training inputs {tuple(x_train.shape[1:])}, got "
                         f"{tuple(outliers.shape[1:])}")
    if outliers.shape == x_train.shape and torch.equal(outliers.cpu(), x_train.cpu()):
        raise ValueError("binary outliers equal the victim's training data; pass an out-of-distribution set")
    train_rows = {row.tobytes() for row in x_train.detach().cpu().flatten(1).numpy()}
    if all(row.tobytes() in train_rows for row in outliers.detach().cpu().flatten(1).numpy()):
        raise ValueError("binary outliers are all images of the victim's training data; pass an out-of-distribution "
                         "set")


def _logistic_cv(*, Cs: int | Sequence[float], folds: int, max_iter: int, class_weight: str | None,
                 scoring: str) -> Any:
    """``LogisticRegressionCV`` with an L2 penalty and L-BFGS, spelled for the installed scikit-learn (1.8
    replaced ``penalty='l2'`` by ``l1_ratios=(0,)``)."""
    from sklearn.linear_model import LogisticRegressionCV

    params = inspect.signature(LogisticRegressionCV).parameters
    l2: dict[str, Any] = {"penalty": "l2"}
    if params["penalty"].default == "deprecated":
        l2 = {"l1_ratios": (0.0,)}
    if "use_legacy_attributes" in params:
        l2["use_legacy_attributes"] = False
    cs = Cs if isinstance(Cs, int) else list(Cs)
    return LogisticRegressionCV(Cs=cs, cv=folds, solver="lbfgs", max_iter=max_iter, class_weight=class_weight,
                                scoring=scoring, n_jobs=1, **l2)


@register_detector("binary")
class BinaryClassifier(Detector):
    """Atli et al.'s in/out logistic regression on frozen features; score = predicted probability of "out".

    Options: ``features`` (an ``nn.Module`` or callable ``x ↦ (N, d)``; default the victim's penultimate
    features), ``Cs`` (the inverse L2 strengths tried: a count for a log grid over [1e-4, 1e4], or a list),
    ``folds`` (cross-validation folds, 10 in the paper), ``class_weight`` (``None`` as in the paper, or
    ``"balanced"``), ``max_samples`` (use at most this many training images and as many outliers, drawn with the
    fit's generator; ``None``: all), ``standardize``, ``max_iter``, ``scoring`` (the CV criterion).

    Example::

        det = make_detector("binary").fit(victim, data, outliers=x_outliers)
        det.flag(x, probs)                          # P(out | x) > 0.5, the classifier's own rule
        det.calibrate(data.x_val, tnr=0.95)        # or a threshold for 95% TNR
    """

    needs_outliers = True

    def __init__(
        self,
        *,
        features: nn.Module | Callable[[Tensor], Tensor] | str | None = None,
        Cs: int | Sequence[float] = 10,  # noqa: N803 - scikit-learn's name
        folds: int = 10,
        class_weight: str | None = None,
        max_samples: int | None = None,
        standardize: bool = True,
        max_iter: int = 1000,
        scoring: str = "accuracy",
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ValueError(f"binary folds must be an integer >= 2, got {folds!r}")
        if isinstance(Cs, int) and (isinstance(Cs, bool) or Cs < 1):
            raise ValueError(f"binary Cs must be a positive count or a list of positive numbers, got {Cs!r}")
        if not isinstance(Cs, int) and (len(Cs) == 0 or any(not c > 0 for c in Cs)):
            raise ValueError(f"binary Cs must be a positive count or a list of positive numbers, got {Cs!r}")
        if class_weight not in (None, "balanced"):
            raise ValueError(f"binary class_weight must be none or 'balanced', got {class_weight!r}")
        if max_samples is not None and (isinstance(max_samples, bool) or max_samples < folds):
            raise ValueError(f"binary max_samples must be at least folds={folds}, got {max_samples!r}")
        self.features = features
        self.Cs = Cs
        self.folds = folds
        self.class_weight = class_weight
        self.max_samples = max_samples
        self.standardize = bool(standardize)
        self.max_iter = int(max_iter)
        self.scoring = scoring
        self.batch_size = check_batch_size(batch_size)
        self.estimator: Any = None
        self._map: FeatureMap | None = None
        self._w: Tensor | None = None
        self._b: Tensor | None = None
        self._mean: Tensor | None = None
        self._std: Tensor | None = None

    # -- fitting -------------------------------------------------------------------------------------
    def check_victim(self, victim: nn.Module) -> None:
        require_features(victim, self.features, detector=self.name or 'binary')

    def _fit(self, victim: nn.Module, data: DatasetSplits, *, outliers: Tensor | None,
             generator: torch.Generator | None) -> None:
        assert outliers is not None  # Detector.fit checks needs_outliers
        check_outliers(outliers, data.x_train, folds=self.folds)
        if len(data.x_train) < self.folds:
            raise ValueError(f"binary needs at least {self.folds} training images for {self.folds}-fold "
                             f"cross-validation, got {len(data.x_train)}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        x_in, x_out = subsample(data.x_train, self.max_samples, g), subsample(outliers, self.max_samples, g)
        self._map = feature_map(victim, self.features)
        device = model_device(victim)
        with torch.no_grad():
            h = torch.cat([batched(self._map, x, batch_size=self.batch_size, device=device) for x in (x_in, x_out)])
        labels = np.r_[np.zeros(len(x_in), dtype=np.int64), np.ones(len(x_out), dtype=np.int64)]
        h64 = h.double()
        mean = h64.mean(dim=0) if self.standardize else torch.zeros(h.shape[1], dtype=h64.dtype, device=h.device)
        std = h64.std(dim=0, correction=0).clamp_min(1e-12) if self.standardize else torch.ones_like(mean)
        self.estimator = _logistic_cv(Cs=self.Cs, folds=self.folds, max_iter=self.max_iter,
                                  class_weight=self.class_weight, scoring=self.scoring)
        self.estimator.fit(((h64 - mean) / std).cpu().numpy(), labels)
        self._w = torch.as_tensor(self.estimator.coef_[0], dtype=h.dtype, device=h.device)
        self._b = torch.as_tensor(float(self.estimator.intercept_[0]), dtype=h.dtype, device=h.device)
        self._mean, self._std = mean.to(h.dtype), std.to(h.dtype)
        self.threshold, self.tnr = 0.5, None

    # -- scoring -------------------------------------------------------------------------------------
    def _one(self, x: Tensor) -> Tensor:
        assert self._map is not None and self._w is not None
        return torch.sigmoid(((self._map(x) - self._mean) / self._std) @ self._w + self._b)

    def score(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        """``(N,)`` probabilities of "out" on the victim's device; ``probs`` is not used."""
        victim = self._require_fitted()
        with torch.no_grad():
            return batched(self._one, x, batch_size=self.batch_size, device=model_device(victim))

