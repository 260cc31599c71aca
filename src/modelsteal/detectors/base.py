"""The detector contract: score each query (higher = more suspicious), fitted on the victim's training data,
thresholded for a target true-negative rate on held-out benign data.

Atli et al., *Extraction of Complex DNN Models: Real Threat or Boogeyman?* (Table 4) compare out-of-distribution
detectors by their true-positive rate on attack queries at a threshold that keeps a fixed true-negative rate
(95%) on the victim's own validation data; :meth:`Detector.calibrate` sets that threshold, :meth:`Detector.flag`
applies it. Stateful detectors (PRADA) keep per-client state behind :meth:`state_dict` /
:meth:`load_state_dict`, which the server's store persists.

Class attributes tell the rest of the toolkit about a detector:

- ``name``: registry name (``--detector msp``);
- ``needs_outliers``: whether :meth:`fit` needs an outlier set (Atli et al.'s binary classifier does);
- ``stateful``: whether scores depend on the client's earlier queries (then ``state_dict`` is not empty).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from modelsteal._registry import Registry
from modelsteal.data.registry import DatasetSplits
from modelsteal.models.builders import model_device


class NotFittedError(ValueError):
    """A detector was asked to score or flag before :meth:`Detector.fit` (or :meth:`Detector.calibrate`)."""


def check_rate(value: float, *, name: str = "tnr") -> float:
    """``value`` as a float in the open interval (0, 1); a one-line ``ValueError`` naming ``name`` otherwise."""
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return v


class Detector(ABC):
    """Scores queries; higher means more suspicious (out of distribution, or part of an attack).

    Subclasses implement :meth:`_fit` (what they learn from the victim and its data) and :meth:`score`.
    The base class keeps the victim, the fitted flag and the threshold.

    Example::

        det = make_detector("msp").fit(victim, data)
        det.calibrate(data.x_val, tnr=0.95)        # threshold: 95% of validation queries pass
        flags = det.flag(x, probs)                 # (N,) bool
    """

    name: ClassVar[str] = ""
    needs_outliers: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self) -> None:
        self.victim: nn.Module | None = None
        self.threshold: float | None = None
        self.tnr: float | None = None

    # -- fitting -------------------------------------------------------------------------------------
    def fit(self, victim: nn.Module, data: DatasetSplits, *, outliers: Tensor | None = None,
            generator: torch.Generator | None = None) -> Detector:
        """Learn what the detector needs from the victim and its training data (``outliers``: an outlier
        set, for detectors with ``needs_outliers``); returns ``self``."""
        if self.needs_outliers and outliers is None:
            raise ValueError(f"detector {self.name!r} is trained against an outlier set: pass outliers=")
        self.check_victim(victim)  # a victim that cannot give what the detector reads: one line, before any work
        self.victim = victim.eval()
        try:
            self._fit(victim, data, outliers=outliers, generator=generator)
        except BaseException:
            self.victim = None  # a failed fit leaves the detector unfitted, not half-fitted
            raise
        return self

    def _fit(self, victim: nn.Module, data: DatasetSplits, *, outliers: Tensor | None,  # noqa: B027
             generator: torch.Generator | None) -> None:
        """What the subclass learns; the default learns nothing (MSP needs only the victim)."""

    def check_victim(self, victim: nn.Module) -> None:  # noqa: B027
        """A one-line ``ValueError`` when ``victim`` cannot give what this detector reads (input gradients, penultimate
        features: an ONNX or scikit-learn victim gives neither); the default reads only posteriors."""

    @property
    def fitted(self) -> bool:
        return self.victim is not None

    def _require_fitted(self) -> nn.Module:
        if self.victim is None:
            raise NotFittedError(f"detector {self.name!r} is used before it was fitted: call fit(victim, data)")
        return self.victim

    # -- scoring -------------------------------------------------------------------------------------
    def posteriors(self, x: Tensor) -> Tensor:
        """The victim's undefended posteriors for ``x`` (what :meth:`score` sees as ``probs`` in an API)."""
        victim = self._require_fitted()
        device = model_device(victim)
        with torch.no_grad():
            return torch.softmax(victim(x.to(device)), dim=1)

    @abstractmethod
    def score(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        """``(N,)`` suspicion scores for the queries ``x`` with the victim's posteriors ``probs``."""

    def calibrate(self, x_benign: Tensor, *, tnr: float = 0.95) -> float:
        """Set the threshold so that a fraction ``tnr`` of the benign queries ``x_benign`` (the victim's
        validation split) is not flagged: the ``tnr``-quantile of their scores (scored as client
        ``"__calibration__"`` so no real client's state moves). Returns the threshold."""
        tnr = check_rate(tnr)
        self._require_fitted()
        scores = self.score(x_benign, self.posteriors(x_benign), client="__calibration__").detach().double()
        self.reset("__calibration__")
        self.threshold = float(torch.quantile(scores.cpu(), tnr))
        self.tnr = tnr
        return self.threshold

    def calibrate_benign(self, x_benign: Tensor, *, tnr: float = 0.95, clients: int = 20, seed: int = 0,
                         length: int | None = None) -> float:
        """Calibrate on benign queries for a true-negative rate ``tnr`` the way this detector decides: per query
        here (:meth:`calibrate`, returns the threshold); a detector that flags *clients* (PRADA) overrides it to
        calibrate over ``clients`` benign streams of ``length`` queries of ``x_benign`` (default all) in random
        orders seeded from ``seed``. What sweeps and ``modelsteal serve`` call."""
        return self.calibrate(x_benign, tnr=tnr)

    def flag(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        """``(N,)`` booleans: which queries score above the calibrated threshold."""
        if self.threshold is None:
            raise NotFittedError(f"detector {self.name!r} has no threshold: call calibrate(x_val, tnr=...)")
        return self.score(x, probs, client=client) > self.threshold

    def rates(self, x_benign: Tensor, x_attack: Tensor) -> dict[str, float]:
        """Atli et al.'s Table 4 numbers at the calibrated threshold: ``tpr`` on the attack queries
        ``x_attack``, ``tnr`` on the benign ``x_benign`` (with ``fpr``, ``fnr``), and the threshold-free
        ``auc`` of the scores (attack = positive). Scored as client ``"__evaluation__"``, whose state is
        reset afterwards, so no real client's state moves."""
        from sklearn.metrics import roc_auc_score

        from modelsteal.metrics.posterior import detection_rates

        if self.threshold is None:
            raise NotFittedError(f"detector {self.name!r} has no threshold: call calibrate(x_val, tnr=...)")
        x = torch.cat([x_benign, x_attack])
        scores = self.score(x, self.posteriors(x), client="__evaluation__").detach().double().cpu()
        self.reset("__evaluation__")
        is_attack = torch.cat([torch.zeros(len(x_benign)), torch.ones(len(x_attack))]).bool()
        out = detection_rates(scores > self.threshold, is_attack)
        both = len(x_benign) > 0 and len(x_attack) > 0
        out["auc"] = float(roc_auc_score(is_attack.numpy(), scores.numpy())) if both else float("nan")
        return out

    # -- per-client state ----------------------------------------------------------------------------
    def state_dict(self, client: str) -> dict[str, Any]:
        """``client``'s state (what the server's store persists); empty for stateless detectors."""
        return {}

    def load_state_dict(self, client: str, state: dict[str, Any]) -> None:  # noqa: B027
        """Restore ``client``'s state from :meth:`state_dict`; stateless detectors ignore it."""

    def reset(self, client: str) -> None:  # noqa: B027
        """Forget ``client``'s state; stateless detectors have none."""

    def reset_all(self) -> None:  # noqa: B027
        """Forget every client's state (a fresh detector with the same fit and threshold)."""

    def __repr__(self) -> str:
        t = "uncalibrated" if self.threshold is None else f"threshold={self.threshold:.4g} at tnr={self.tnr}"
        return f"{type(self).__name__}({t})"


_DETECTORS: Registry[type[Detector]] = Registry("detector", package="modelsteal.detectors")


def register_detector(name: str) -> Callable[[type[Detector]], type[Detector]]:
    """Class decorator adding a detector to the registry under ``name``."""
    return _DETECTORS.register(name)


def available_detectors() -> list[str]:
    """Names of every registered detector."""
    return _DETECTORS.names()


def detector_class(name: str) -> type[Detector]:
    """The detector class registered under ``name`` (``ValueError`` naming the known ones otherwise)."""
    return _DETECTORS.get(name)


def make_detector(name: str, **options: Any) -> Detector:
    """Build the detector ``name`` with ``options`` (checked against its constructor: a wrong one is a
    one-line ``ValueError`` listing the valid ones)."""
    return _DETECTORS.build(name, **options)
