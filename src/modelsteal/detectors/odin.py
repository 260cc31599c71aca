"""ODIN (Liang, Li & Srikant, *Enhancing the reliability of out-of-distribution image detection in neural
networks*, ICLR 2018): temperature scaling plus input pre-processing, the "ODIN" column of Atli et al.'s Table 4.

With logits ``f(x)`` and temperature ``T``, the temperature-scaled softmax (Liang et al., Eq. 1) is

    S_i(x; T) = exp(f_i(x) / T) / Σ_j exp(f_j(x) / T),         S(x; T) = max_i S_i(x; T),

the input is pre-processed by a small step that *raises* the top score (Eq. 2),

    x̃ = x − ε · sign(−∇_x log S_ŷ(x; T)),                       ŷ = argmax_i S_i(x; T),

and the detector thresholds ``S(x̃; T)``; here ``score(x) = −S(x̃; T)`` so higher is more suspicious. The step is
taken on the raw ``[0, 1]`` input the victim receives (its normalisation lives inside the model), which is what
the authors' code does when it divides the gradient by the normalisation's standard deviation; ``x̃`` is not
clipped to ``[0, 1]``, as in the paper.

Choosing ``T`` and ``ε``: Liang et al. tune both on validation data, in- and out-of-distribution. When
:meth:`Detector.fit` gets ``outliers``, ``(T, ε)`` is the pair of the grids ``temperatures × epsilons`` that
maximises the TPR on (up to ``tune_samples`` of) the outliers at ``tune_tnr`` TNR on (up to ``tune_samples`` of)
the victim's validation split, both held out of the victim's training (ties go to the earlier pair in grid
order). Without outliers only in-distribution data is known, so ODIN falls back to the paper's defaults
``T = 1000``, ``ε = 0.0014`` (its CIFAR-10 DenseNet setting). ``temperature=`` / ``epsilon=`` fix either value and
take it out of the search.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from modelsteal.data.registry import DatasetSplits
from modelsteal.detectors._features import batched, check_batch_size, input_gradient, subsample
from modelsteal.detectors.base import Detector, check_rate, register_detector
from modelsteal.detectors.msp import minus_top
from modelsteal.models.builders import model_device

#: the paper's setting when no outlier set is available to tune on
DEFAULT_TEMPERATURE = 1000.0
DEFAULT_EPSILON = 0.0014


def minus_temperature_score(logits: Tensor, temperature: float) -> Tensor:
    """``−S(x; T) = −max_i softmax(f(x) / T)_i`` per row, in float64 (at ``T = 1000`` the scores of different
    inputs differ in the fourth decimal; at ``T = 1`` a confident model's top score rounds to 1, hence the
    tie-breaking form of :func:`~modelsteal.detectors.msp.minus_top`)."""
    return minus_top(torch.softmax(logits.double() / temperature, dim=1))


def preprocess(victim: nn.Module, x: Tensor, *, temperature: float, epsilon: float) -> Tensor:
    """``x̃ = x − ε · sign(−∇_x log S_ŷ(x; T))`` (Liang et al., Eq. 2); ``x`` itself when ``ε = 0``."""
    if epsilon == 0:
        return x

    def neg_log_top(xg: Tensor) -> Tensor:
        log_s = torch.log_softmax(victim(xg) / temperature, dim=1)
        return -log_s.max(dim=1).values  # −log S_ŷ(x; T), ŷ the arg max

    return x - epsilon * torch.sign(input_gradient(neg_log_top, x))


@register_detector("odin")
class ODIN(Detector):
    """ODIN's score ``−S(x̃; T)`` with ``T`` and ``ε`` fixed, tuned on outliers, or the paper's defaults.

    After :meth:`fit`, ``temperature_`` and ``epsilon_`` hold the values in use and ``selection`` the TPR of
    every grid pair tried (empty when nothing was tuned).

    Example::

        det = make_detector("odin").fit(victim, data, outliers=x_outliers)   # tunes (T, ε)
        det.calibrate(data.x_val, tnr=0.95)
    """

    def __init__(
        self,
        *,
        temperature: float | None = None,
        epsilon: float | None = None,
        temperatures: Sequence[float] = (1.0, 10.0, 100.0, 1000.0),
        epsilons: Sequence[float] = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01),
        tune_samples: int = 1000,
        tune_tnr: float = 0.95,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        for t in ([temperature] if temperature is not None else []) + list(temperatures):
            if not t > 0:
                raise ValueError(f"odin temperatures must be > 0, got {t}")
        for e in ([epsilon] if epsilon is not None else []) + list(epsilons):
            if not e >= 0:
                raise ValueError(f"odin epsilons must be >= 0, got {e}")
        if not temperatures or not epsilons:
            raise ValueError("odin needs non-empty temperatures and epsilons grids")
        if isinstance(tune_samples, bool) or not isinstance(tune_samples, int) or tune_samples < 2:
            raise ValueError(f"odin tune_samples must be an integer >= 2, got {tune_samples!r}")
        self.temperature = None if temperature is None else float(temperature)
        self.epsilon = None if epsilon is None else float(epsilon)
        self.temperatures = tuple(float(t) for t in temperatures)
        self.epsilons = tuple(float(e) for e in epsilons)
        self.tune_samples = tune_samples
        self.tune_tnr = check_rate(tune_tnr, name="tune_tnr")
        self.batch_size = check_batch_size(batch_size)
        self.temperature_: float | None = None
        self.epsilon_: float | None = None
        self.selection: dict[tuple[float, float], float] = {}

    # -- fitting -------------------------------------------------------------------------------------
    def check_victim(self, victim: nn.Module) -> None:
        """ODIN's input pre-processing (``ε > 0``: Eq. 2) differentiates the victim in its input."""
        from modelsteal.models.formats import describe_model, model_gradients

        steps = (self.epsilon,) if self.epsilon is not None else (*self.epsilons, DEFAULT_EPSILON)
        if any(e > 0 for e in steps) and not model_gradients(victim):
            raise ValueError(f"detector 'odin' pre-processes inputs with the victim's input gradient (epsilon > 0), "
                             f"which {describe_model(victim)} does not give: serve a torch version of the victim "
                             "(TorchScript, .pt2 or python:module:factory), or pass --detector-option epsilon=0")

    def _fit(self, victim: nn.Module, data: DatasetSplits, *, outliers: Tensor | None,
             generator: torch.Generator | None) -> None:
        self.selection = {}
        temperatures = (self.temperature,) if self.temperature is not None else self.temperatures
        epsilons = (self.epsilon,) if self.epsilon is not None else self.epsilons
        if outliers is None:  # nothing out-of-distribution to tune on: the paper's defaults
            self.temperature_ = self.temperature if self.temperature is not None else DEFAULT_TEMPERATURE
            self.epsilon_ = self.epsilon if self.epsilon is not None else DEFAULT_EPSILON
            return
        if len(temperatures) == 1 and len(epsilons) == 1:  # nothing to choose from
            self.temperature_, self.epsilon_ = temperatures[0], epsilons[0]
            return
        if len(data.x_val) < 2 or len(outliers) < 2:
            raise ValueError(f"odin tunes (T, eps) on the validation split and the outliers: need >= 2 of each, got "
                             f"{len(data.x_val)} and {len(outliers)}")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        x_in = subsample(data.x_val, self.tune_samples, g)
        x_out = subsample(outliers, self.tune_samples, g)
        self.temperature_, self.epsilon_ = self._tune(victim, x_in, x_out, temperatures, epsilons)

    def _tune(self, victim: nn.Module, x_in: Tensor, x_out: Tensor, temperatures: Sequence[float],
              epsilons: Sequence[float]) -> tuple[float, float]:
        best, best_tpr = (temperatures[0], epsilons[0]), -1.0
        for t in temperatures:
            for e in epsilons:
                s_in = self._scores(victim, x_in, temperature=t, epsilon=e).cpu()
                s_out = self._scores(victim, x_out, temperature=t, epsilon=e).cpu()
                threshold = torch.quantile(s_in, self.tune_tnr)
                tpr = float((s_out > threshold).double().mean())
                self.selection[(t, e)] = tpr
                if tpr > best_tpr:
                    best, best_tpr = (t, e), tpr
        return best

    # -- scoring -------------------------------------------------------------------------------------
    def _scores(self, victim: nn.Module, x: Tensor, *, temperature: float, epsilon: float) -> Tensor:
        def one(xb: Tensor) -> Tensor:
            x_tilde = preprocess(victim, xb, temperature=temperature, epsilon=epsilon)
            with torch.no_grad():
                return minus_temperature_score(victim(x_tilde), temperature)

        return batched(one, x, batch_size=self.batch_size, device=model_device(victim))

    def score(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        """``(N,)`` scores ``−S(x̃; T)`` (float64) on the victim's device; ``probs`` is not used (ODIN needs
        the logits at temperature ``T`` and a gradient step on ``x``)."""
        victim = self._require_fitted()
        assert self.temperature_ is not None and self.epsilon_ is not None
        return self._scores(victim, x, temperature=self.temperature_, epsilon=self.epsilon_)

    def __repr__(self) -> str:
        base = super().__repr__()[len(type(self).__name__) + 1:-1]
        return f"ODIN(T={self.temperature_}, epsilon={self.epsilon_}, {base})"

