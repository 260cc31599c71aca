"""The null of an ownership test, estimated conservatively from independent reference models.

Every verifier tests H0: *the suspect is independent of the victim*. What an independent model does on the
verifier's evidence (EWE's triggers, DAWN's recorded queries, dataset inference's private and public samples) is
estimated from *reference models* the owner trains himself — several seeds and architectures, on data disjoint
from the victim's private data (:mod:`modelsteal.ownership.references`) — and each verifier turns their
statistics into the null parameter of its test by a rule that errs on the side of "not stolen":

- a rate (EWE: the fraction of triggers answered with the target class; DAWN: the fraction of recorded queries
  answered with the keyed wrong label) becomes the one-sided Clopper-Pearson upper confidence bound on the
  *largest* reference count, :func:`null_rate_upper_bound` (Clopper & Pearson, *The use of confidence or fiducial
  limits illustrated in the case of the binomial*, Biometrika 1934): with ``k_max`` of ``n`` hits, the rate
  ``p`` for which ``P(Bin(n, p) <= k_max) = 1 − confidence``, i.e. the ``confidence`` quantile of
  ``Beta(k_max + 1, n − k_max)``. A mean over references would let every reference above the mean — an
  independent model that happens to confuse the trigger's source class with its target — be accused;
- a difference of means (dataset inference: the regressor's mean score on private minus public samples) becomes
  the largest reference difference, floored at 0, :func:`null_shift_upper_bound`; the test is then
  ``H0: μ_private − μ_public <= δ0``.

:func:`clopper_pearson_interval` is also what the false-claim measurements report (the two-sided exact interval
of a count of false "stolen" verdicts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def clopper_pearson_upper(k: int, n: int, *, confidence: float = 0.95) -> float:
    """The one-sided Clopper-Pearson upper bound on a binomial rate after ``k`` successes in ``n`` trials: the
    ``confidence`` quantile of ``Beta(k + 1, n − k)`` (1 when ``k == n``)."""
    from scipy.stats import beta

    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return 1.0 if k == n else float(beta.ppf(confidence, k + 1, n - k))


def clopper_pearson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided exact (Clopper-Pearson) interval of a binomial rate after ``k`` of ``n``."""
    from scipy.stats import beta

    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    a = (1.0 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class ReferenceNull:
    """A null parameter estimated from reference models: ``value`` (the rate or shift the test uses),
    ``rule`` (how it was made), ``per_reference`` (each reference's statistic) and ``trials`` (the evidence
    size each reference answered; 0 where it does not apply)."""

    value: float
    rule: str
    per_reference: tuple[float, ...]
    trials: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"value": self.value, "rule": self.rule, "references": len(self.per_reference),
                "per_reference": list(self.per_reference), "trials": self.trials}


def null_rate_upper_bound(hits: Sequence[int], n: int, *, confidence: float = 0.95,
                          floor: float = 0.0) -> ReferenceNull:
    """The null rate from reference models that each answered ``n`` trials with ``hits[i]`` successes: the
    Clopper-Pearson upper bound at ``confidence`` on the *largest* count, at least ``floor``."""
    if not hits:
        raise ValueError("the null needs at least one reference model")
    k_max = max(int(h) for h in hits)
    bound = clopper_pearson_upper(k_max, n, confidence=confidence)
    value = max(bound, floor)
    rule = (f"Clopper-Pearson {confidence:g} upper bound on the largest of {len(hits)} reference counts "
            f"({k_max}/{n})" + (f", floored at {floor:.3g}" if value == floor and floor > bound else ""))
    return ReferenceNull(value=min(value, 1.0 - 1e-9), rule=rule, per_reference=tuple(h / n for h in hits),
                         trials=n)


def null_shift_upper_bound(shifts: Sequence[float]) -> ReferenceNull:
    """The null shift of a difference of means from reference models: the largest reference difference,
    floored at 0 (a reference with larger scores on public samples does not lower the bar below the plain
    test's)."""
    if not shifts:
        raise ValueError("the null needs at least one reference model")
    finite = [float(s) for s in shifts if math.isfinite(float(s))]
    if not finite:
        raise ValueError("every reference model gave a non-finite statistic")
    value = max(0.0, max(finite))
    return ReferenceNull(value=value, rule=f"largest of {len(finite)} reference mean differences, floored at 0",
                         per_reference=tuple(finite))
