"""Maximum softmax probability (Hendrycks & Gimpel, *A baseline for detecting misclassified and
out-of-distribution examples in neural networks*, ICLR 2017): the "Baseline" column of Atli et al.'s Table 4,
and the gate of Adaptive Misinformation (Kariyappa & Qureshi, CVPR 2020, Eq. 5).

In-distribution inputs get confident answers, so the suspicion score is the negated top probability of the
victim's undefended posterior ``p = softmax(f(x))``:

    score(x) = − max_i p_i                         (higher = more suspicious; in [−1, −1/K])

It needs no training beyond the victim and no extra forward pass: it reads the posteriors the API computes
anyway. Numerics: a confident victim's float32 top probability rounds to exactly 1 for most benign inputs, and
tied scores make a TNR target unreachable (a threshold at −1 passes them all). The score is therefore computed in
float64 as ``Σ_{i≠ŷ} p_i − 1``, which equals ``−max_i p_i`` on the simplex but keeps the mass of the other
classes down to about 1e-16 instead of 6e-8.
"""

from __future__ import annotations

from torch import Tensor

from modelsteal.detectors.base import Detector, register_detector


@register_detector("msp")
class MSP(Detector):
    """Negated maximum softmax probability of the victim's posteriors ``probs`` (float64 scores).

    Example::

        det = make_detector("msp").fit(victim, data)
        det.calibrate(data.x_val, tnr=0.95)
        det.score(x, det.posteriors(x))            # (N,) = −max_i p_i
    """

    def score(self, x: Tensor, probs: Tensor, *, client: str = "default") -> Tensor:
        self._require_fitted()
        if probs.ndim != 2 or probs.shape[0] != len(x):
            raise ValueError(f"msp needs (N, K) posteriors for N={len(x)} queries, got shape {tuple(probs.shape)}")
        return minus_top(probs)


def minus_top(probs: Tensor) -> Tensor:
    """``−max_i p_i`` per row of ``probs`` (N, K), as ``Σ_{i≠ŷ} p_i − 1`` in float64 (ties broken as far as
    float64 allows; equal to ``−max_i p_i`` for rows that sum to one)."""
    p = probs.double()
    others = p.scatter(1, p.argmax(dim=1, keepdim=True), 0.0).sum(dim=1)
    return others - 1.0
