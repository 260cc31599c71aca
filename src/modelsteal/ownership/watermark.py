"""The watermark verifier (EWE, Jia et al., USENIX Security 2021, Sec. on ownership verification): does the
suspect label the victim's triggers as the watermark's target class far more often than an independent model?

The victim was trained by the ``ewe`` recipe (:mod:`modelsteal.training.ewe`, or its plain-watermark baseline
``snnl_weight=0``), which recorded its triggers ``X_w`` (source-class images stamped with the pattern), the
target class ``c_T`` and an estimate of the null rate in ``model.watermark`` and in the checkpoint
(``meta["watermark"]``). The verifier queries the suspect on ``n`` triggers (``n = min(budget, |X_w|)``, drawn
without replacement on ``seed``) and counts ``k``, the answers whose top-1 class is ``c_T``.

The test. H0: the suspect is independent of the victim, so it labels each trigger ``c_T`` with probability at
most ``p0``, the *null rate* (an independent model's watermark success rate). The p-value is the exact
one-sided binomial tail ``P(Binomial(n, p0) >= k)``. Exact binomial rather than a t-test: each answer is one
Bernoulli outcome, budgets are small (tens of queries) and rates sit near 0 or 1, where a t-test's normal
approximation is poor; the binomial needs no variance estimate and no second sample. Its assumption is that
the triggers are independent trials for a given independent model, with rate at most ``p0``. Triggers of one
model are in fact correlated (a model that confuses the stamped ``c_S`` with ``c_T`` does so on many of
them), so ``p0`` must be an upper estimate of the rate of *any* independent model, not an average:

- ``null_rate`` given, or else, from independent reference models (:meth:`calibrate`), the one-sided
  Clopper-Pearson upper bound (``null_confidence``, default 0.95) on the *largest* reference count of target
  answers over all the triggers (:func:`~modelsteal.ownership.null.null_rate_upper_bound`), or else the recorded
  estimate (the victim's own warm-up model before the watermark was trained, the model the trigger position was
  chosen on: a single model, so a weak null — ``modelsteal verify --references N`` trains references);
- floored at ``min_null_rate`` (default ``1/K``, chance, without references; none with references, whose bound
  is the estimate).

``queries_for_95`` in the verdict is the fewest queries with which a suspect answering ``c_T`` at the observed
rate would reach 95% confidence (:func:`queries_for_confidence`); the lecture's claim is "under 100".

Example::

    v = EWEVerifier.from_checkpoint("victim-ewe.pt", alpha=0.01)      # triggers from the checkpoint
    verdict = v.verify(suspect, budget=100, seed=0)
    verdict.p_value, verdict.stolen, verdict.details["success_rate"], verdict.details["queries_for_95"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal.blackbox import BlackBox
from modelsteal.data.registry import DatasetSplits
from modelsteal.ownership.base import (
    NotFittedError,
    Verdict,
    Verifier,
    binomial_min_queries,
    register_verifier,
)
from modelsteal.ownership.null import ReferenceNull, null_rate_upper_bound
from modelsteal.training.ewe import watermark_record


def binomial_tail(k: int, n: int, p0: float) -> float:
    """``P(Binomial(n, p0) >= k)`` (1 for ``k <= 0``)."""
    from scipy.stats import binom

    return float(binom.sf(k - 1, n, p0)) if k > 0 else 1.0


def queries_for_confidence(rate: float, p0: float, *, confidence: float = 0.95,
                           max_queries: int = 100_000) -> int | None:
    """The fewest queries ``n`` for which ``k = ⌊rate·n⌋`` answers ``c_T`` out of ``n`` give a binomial p-value
    below ``1 − confidence`` under the null rate ``p0``; ``None`` when ``rate <= p0`` or no ``n`` up to
    ``max_queries`` does (evaluated for all ``n`` at once)."""
    import numpy as np
    from scipy.stats import binom

    if not rate > p0:
        return None
    n = np.arange(1, max_queries + 1)
    k = np.floor(rate * n + 1e-9)
    p = np.where(k > 0, binom.sf(k - 1, n, p0), 1.0)
    hits = np.nonzero(p < 1.0 - confidence)[0]
    return int(n[hits[0]]) if len(hits) else None


def _check_rate(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ValueError(f"ewe verifier: {name} must be a number in (0, 1), got {value!r}")
    return float(value)


@register_verifier("ewe")
class EWEVerifier(Verifier):
    """Exact one-sided binomial test of the suspect's watermark success rate against the null rate ``p0``
    (module docstring).

    ``watermark``: the victim's watermark record (a checkpoint's ``meta["watermark"]``; default: the fitted
    victim's ``model.watermark``); ``null_rate``: ``p0`` given; ``min_null_rate``: its floor (default ``1/K``
    without reference models); ``null_confidence``: the confidence of the Clopper-Pearson bound
    :meth:`calibrate` puts on the largest reference count.
    """

    null_hypothesis = ("the suspect is independent of the victim: it answers each trigger with the target class "
                       "at a rate no higher than an independent reference model's")

    example_options = {"alpha": 0.05}

    def __init__(self, *, alpha: float = 0.05, watermark: Mapping[str, Any] | None = None,
                 null_rate: float | None = None, min_null_rate: float | None = None,
                 null_confidence: float = 0.95) -> None:
        super().__init__(alpha=alpha)
        if watermark is not None and not isinstance(watermark, Mapping):
            raise ValueError(f"ewe verifier: watermark must be a watermark record (a mapping), got "
                             f"{type(watermark).__name__}")
        self.watermark = dict(watermark) if watermark is not None else None
        self.null_rate = _check_rate("null_rate", null_rate)
        self.min_null_rate = _check_rate("min_null_rate", min_null_rate)
        self.null_confidence = _check_rate("null_confidence", null_confidence)
        self.calibrated: float | None = None
        self.reference_null: ReferenceNull | None = None
        self.triggers: Tensor | None = None
        self.target_class: int | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: torch.device | str | None = None,
                        **options: Any) -> EWEVerifier:
        """The verifier of the victim checkpoint at ``path`` (its triggers from ``meta["watermark"]``), fitted."""
        from modelsteal.models import load_checkpoint

        victim, meta = load_checkpoint(path, device=device)
        record = watermark_record(meta)
        if record is None:
            raise ValueError(f"checkpoint {path} has no watermark record: train the victim with --recipe ewe")
        return cls(watermark=record, **options).commit(meta.get("commitments")).fit(victim)

    # -- fitting -------------------------------------------------------------------------------------
    def _fit(self, victim: nn.Module | BlackBox, *, data: DatasetSplits | None,
             generator: torch.Generator | None) -> None:
        record = self.watermark
        if record is None and isinstance(victim, nn.Module):
            record = watermark_record(victim)
        if record is None:
            raise NotFittedError("ewe verifier: the victim has no watermark (train it with the ewe recipe, or pass "
                                 "watermark=meta['watermark'] from its checkpoint)")
        triggers = torch.as_tensor(record["triggers"]).float()
        target = int(record["target_class"])
        if tuple(triggers.shape[1:]) != self.input_shape or not len(triggers):
            raise ValueError(f"ewe verifier: the watermark's triggers {tuple(triggers.shape)} do not fit the victim's "
                             f"inputs {self.input_shape}")
        if not 0 <= target < self.num_classes:
            raise ValueError(f"ewe verifier: target class {target} is not one of the victim's {self.num_classes}")
        from modelsteal.ownership.commitments import check_commitment, trigger_commitment

        self.commitment_checked = check_commitment("ewe_triggers", trigger_commitment(triggers, target),
                                                   self.commitments, evidence="the EWE trigger set")
        self.watermark, self.triggers, self.target_class = dict(record), triggers, target

    def calibrate(self, references: Sequence[BlackBox | nn.Module]) -> float:
        """Set the null rate from independent reference models: each answers all ``|X_w|`` triggers, and the
        null is the Clopper-Pearson upper bound at ``null_confidence`` on the largest count of target answers
        (:func:`~modelsteal.ownership.null.null_rate_upper_bound`). Returns it."""
        self._require_fitted()
        if not references:
            raise ValueError("ewe verifier: calibrate needs at least one independent reference model")
        hits = [int(self.success(self.check_suspect(r), self.triggers).sum()) for r in references]
        self.reference_null = null_rate_upper_bound(hits, len(self.triggers), confidence=self.null_confidence)
        self.calibrated = self.reference_null.value
        return self.calibrated

    # -- the test ------------------------------------------------------------------------------------
    def null(self) -> tuple[float, str]:
        """``(p0, where it came from)``: given, calibrated or recorded, floored at ``min_null_rate``."""
        self._require_fitted()
        if self.null_rate is not None:
            rate, source = self.null_rate, "given"
        elif self.calibrated is not None:
            rate = self.calibrated
            source = self.reference_null.rule if self.reference_null else "independent reference models"
            if self.min_null_rate is None:
                return min(rate, 1.0 - 1e-9), source
        else:
            rate = float(self.watermark.get("null_rate_estimate", 0.0))
            source = str(self.watermark.get("null_rate_source", "recorded"))
        floor = self.min_null_rate if self.min_null_rate is not None else 1.0 / self.num_classes
        if rate < floor:
            return floor, f"floor (min_null_rate; {source} gave {rate:.3g})"
        return min(rate, 1.0 - 1e-9), source

    def min_queries(self) -> int:
        self._require_fitted()
        return binomial_min_queries(self.null()[0], alpha=self.alpha)

    def success(self, box: BlackBox, x: Tensor) -> Tensor:
        """1 where ``box``'s top-1 answer on a row of ``x`` is the target class, else 0 (``(N,)``)."""
        answers = box.query(x)
        return (answers.argmax(1).cpu() == self.target_class).float()

    def verify(self, suspect: BlackBox | nn.Module, *, budget: int, seed: int = 0) -> Verdict:
        suspect = self.check_suspect(suspect)
        budget = self.check_budget(budget)
        p0, source = self.null()
        need = self.min_queries()
        if len(self.triggers) < need:
            raise ValueError(f"ewe verifier: the watermark has {len(self.triggers)} triggers but the test needs at "
                             f"least {need} queries to reach alpha={self.alpha:g} at null rate {p0:.3g}")
        n = min(budget, len(self.triggers))
        order = torch.randperm(len(self.triggers), generator=torch.Generator().manual_seed(int(seed)))[:n]
        box = self.budgeted(suspect, budget=budget)
        hits = self.success(box, self.triggers[order])
        k = int(hits.sum())
        rate = k / n
        return self.verdict(p_value=binomial_tail(k, n, p0), queries=box.used, evidence=hits,
                            success_rate=rate, hits=k, trials=n, null_rate=p0, null_source=source,
                            target_class=self.target_class, test="exact one-sided binomial",
                            queries_for_95=queries_for_confidence(rate, p0),
                            victim_rate=self.watermark.get("victim_rate"), null_hypothesis=self.null_hypothesis,
                            reference_rates=None if self.reference_null is None else
                            list(self.reference_null.per_reference))
