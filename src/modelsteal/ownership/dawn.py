"""DAWN's verifier: does the suspect repeat the wrong labels the API gave on its watermarked queries?

Szyller et al., *DAWN: Dynamic Adversarial Watermarking of Neural Networks* (2019). The defense
(:class:`modelsteal.defenses.dawn.DAWN`) answered a keyed fraction of an API client's queries with keyed wrong
labels and recorded them; a clone trained on those answers tends to reproduce them. The verifier queries the
suspect on ``n`` recorded inputs and counts ``A``, the suspect's top-1 answers equal to the recorded wrong label.

The null and its p-value. Under H0 the suspect is *independent of the key* (it was not trained on this API's
watermarked answers). The wrong label of a recorded input is ``(y + s) mod K`` with the shift ``s`` uniform on
``{1, …, K−1}`` and drawn per input by HMAC-SHA256 of the key (a pseudo-random function: shifts of distinct inputs
are independent). Whatever the suspect answers on an input, it hits the wrong label with probability exactly
``1/(K−1)`` when its answer differs from ``y`` and 0 when it equals ``y``; so, input by input and independently,
``P(agree) <= 1/(K−1)``, and ``A`` is stochastically smaller than ``Binomial(n, 1/(K−1))``. The exact tail
``P(Binomial(n, 1/(K−1)) >= A)`` (``scipy.stats.binom.sf``) is therefore a valid p-value and an upper bound on the
false-positive probability for *any* independent model, however its errors are distributed (an accurate
independent model agrees far less often: only where it errs, so the test is conservative for it).

Caveats: the bound needs the recorded inputs to be distinct after quantisation (the records are deduplicated)
and the suspect independent of the key — a model trained on this API's answers by anyone is "derived" by this
test's definition, and a suspect that saw the records file (the key-selected inputs with their wrong labels) is
not independent. The randomness is the key's: were the wrong label a fixed function of ``y`` only (one
permutation for all inputs), a suspect's systematic confusion (4 → 9) would correlate the agreements and the
binomial would not hold. The test cannot reach ``alpha`` with fewer than ``n_min`` queries, the smallest ``n``
with ``(1/(K−1))**n < alpha`` (2 for ten classes at ``alpha = 0.05``): a smaller budget is refused.

Example::

    v = make_verifier("dawn", records="wm.jsonl", key="my secret", alpha=0.01).fit(victim)
    verdict = v.verify(suspect, budget=200)      # p-value, stolen, queries spent, agreement per query
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from modelsteal.blackbox import BlackBox
from modelsteal.data.registry import DatasetSplits
from modelsteal.defenses.dawn import DAWN, DAWNRecords, key_fingerprint, load_records
from modelsteal.ownership.base import NotFittedError, Verdict, Verifier, binomial_min_queries, register_verifier
from modelsteal.ownership.null import ReferenceNull, null_rate_upper_bound


def binomial_p_value(agreements: int, n: int, *, chance: float) -> float:
    """``P(Binomial(n, chance) >= agreements)``: the exact one-sided tail (1 for no agreement)."""
    from scipy.stats import binom

    return float(binom.sf(agreements - 1, n, chance)) if agreements > 0 else 1.0


def critical_agreements(n: int, *, chance: float, alpha: float) -> int | None:
    """The fewest agreements out of ``n`` whose p-value is below ``alpha`` (``None`` when even ``n`` is not)."""
    from scipy.stats import binom

    c = int(binom.isf(alpha, n, chance)) + 1  # binom.sf(c - 1) <= alpha; step to strict < where needed
    while c <= n and binomial_p_value(c, n, chance=chance) >= alpha:
        c += 1
    while c > 1 and binomial_p_value(c - 1, n, chance=chance) < alpha:
        c -= 1
    return c if c <= n else None


@register_verifier("dawn")
class DAWNVerifier(Verifier):
    """Exact binomial test of a suspect's agreement with DAWN's recorded wrong labels (module docstring).

    ``records``: the records file (:func:`~modelsteal.defenses.dawn.load_records`) or a loaded
    :class:`~modelsteal.defenses.dawn.DAWNRecords`; ``key``: the defense's key, to check the file was made with
    it (recommended); ``clients``: keep only these clients' queries (default: all).
    """

    example_options = {"alpha": 0.05}
    null_hypothesis = ("the suspect is independent of the DAWN key: on each recorded query it gives the keyed wrong "
                       "label with probability at most 1/(K-1)")

    def __init__(self, *, records: str | DAWNRecords | None = None, key: str | None = None,
                 clients: Sequence[str] | None = None, alpha: float = 0.05, null_confidence: float = 0.95) -> None:
        super().__init__(alpha=alpha)
        if key is not None and (not isinstance(key, str) or not key):
            raise ValueError("dawn's key must be a non-empty string")
        self.source = records
        self.key = key
        self.clients = None if clients is None else [str(c) for c in clients]
        self.records: DAWNRecords | None = None
        if isinstance(null_confidence, bool) or not isinstance(null_confidence, int | float) \
                or not 0 < null_confidence < 1:
            raise ValueError(f"dawn's null_confidence must be in (0, 1), got {null_confidence!r}")
        self.null_confidence = float(null_confidence)
        self.reference_null: ReferenceNull | None = None

    @classmethod
    def from_defense(cls, defense: DAWN, *, clients: Sequence[str] | None = None, alpha: float = 0.05) -> DAWNVerifier:
        """A verifier over the records a live :class:`DAWN` defense holds in memory (all clients by default)."""
        states = [defense.state_dict(c) for c in (defense.clients() if clients is None else clients)]
        inputs = [row for st in states for row in st["inputs"]]
        labels = [w for st in states for w in st["labels"]]
        shape = defense.input_shape or ()
        q = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), *shape) if inputs else np.zeros((0, *shape))
        recs = DAWNRecords(inputs=torch.as_tensor(q * defense.quantum, dtype=torch.float32),
                           labels=torch.as_tensor(labels, dtype=torch.int64), quantum=defense.quantum,
                           rate=defense.rate, num_classes=int(defense.num_classes or 0),
                           key_fingerprint=key_fingerprint(defense.key))
        return cls(records=recs, alpha=alpha)

    @property
    def chance(self) -> float:
        """The null's agreement bound: ``1/(K−1)``, or, after :meth:`calibrate`, the larger of that and the
        reference models' bound."""
        if not self.num_classes:
            raise NotFittedError("verifier 'dawn' is used before it was fitted: call fit(victim)")
        if self.num_classes < 3:
            raise ValueError("dawn's test needs at least 3 classes: with 2, the wrong label is the only other one "
                             "and chance agreement is 1")
        analytic = 1.0 / (self.num_classes - 1)
        return analytic if self.reference_null is None else max(analytic, self.reference_null.value)

    def calibrate(self, references: Sequence[BlackBox | nn.Module]) -> float:
        """Check the analytic null on independent reference models: each answers every recorded query, and the
        null rate becomes the larger of ``1/(K−1)`` and the Clopper-Pearson upper bound (``null_confidence``)
        on the largest reference agreement count (it stays ``1/(K−1)`` unless a reference agrees with the keyed
        labels far more than the proof allows, which would mean it saw the key's answers). Returns it."""
        self._require_fitted()
        if not references:
            raise ValueError("dawn verifier: calibrate needs at least one independent reference model")
        recs = self.records
        assert recs is not None
        hits = [int((_top1(self.check_suspect(r), recs.inputs) == recs.labels).sum()) for r in references]
        self.reference_null = null_rate_upper_bound(hits, len(recs.labels), confidence=self.null_confidence)
        return self.chance

    def _fit(self, victim: nn.Module | BlackBox, *, data: DatasetSplits | None,
             generator: torch.Generator | None) -> None:
        self.chance  # noqa: B018 - refuses two classes
        if self.source is None:
            raise NotFittedError("verifier 'dawn' needs the watermarked queries the defense recorded: pass "
                                 "records=PATH (written by the dawn defense's records= option)")
        recs = self.source if isinstance(self.source, DAWNRecords) else load_records(
            self.source, key=self.key, clients=self.clients)
        if recs.num_classes != self.num_classes or tuple(recs.inputs.shape[1:]) != self.input_shape:
            raise ValueError(f"the DAWN records are for {recs.num_classes} classes and inputs "
                             f"{tuple(recs.inputs.shape[1:])}, but the victim has {self.num_classes} classes and "
                             f"inputs {self.input_shape}")
        from modelsteal.ownership.commitments import check_commitment

        self.commitment_checked = check_commitment("dawn_key", recs.key_fingerprint, self.commitments,
                                                   evidence="the DAWN records' key")
        need = self.min_queries()
        if len(recs.labels) < need:
            raise ValueError(f"the DAWN records hold {len(recs.labels)} watermarked queries; the test needs at least "
                             f"{need} to reach alpha={self.alpha:g}")
        self.records = recs

    def min_queries(self) -> int:
        return binomial_min_queries(self.chance, alpha=self.alpha)

    def verify(self, suspect: BlackBox | nn.Module, *, budget: int, seed: int = 0) -> Verdict:
        """Query ``suspect`` on ``min(budget, records)`` recorded inputs (a seeded random subset when the budget
        is smaller) and test its agreement with the wrong labels."""
        box = self.check_suspect(suspect)
        budget = self.check_budget(budget)
        recs = self.records
        assert recs is not None  # check_suspect refuses an unfitted verifier
        n = min(budget, len(recs.labels))
        idx = torch.randperm(len(recs.labels), generator=torch.Generator().manual_seed(seed))[:n]
        x, wrong = recs.inputs[idx], recs.labels[idx]
        counted = self.budgeted(box, budget=n)
        answers = _top1(counted, x)
        agree = (answers == wrong).float()
        a = int(agree.sum())
        chance = self.chance
        return self.verdict(
            p_value=binomial_p_value(a, n, chance=chance), queries=counted.used, evidence=agree,
            agreements=a, n=n, agreement_rate=a / n, chance=chance, records=len(recs.labels),
            critical_agreements=critical_agreements(n, chance=chance, alpha=self.alpha),
            test="exact binomial tail P(Bin(n, p0) >= agreements), p0 = max(1/(K-1), reference bound)",
            null_hypothesis=self.null_hypothesis,
            reference_rates=None if self.reference_null is None else list(self.reference_null.per_reference))


def _top1(box: BlackBox, x: Tensor, *, batch_size: int = 512) -> Tensor:
    """The suspect's top-1 label for each row of ``x``, on the CPU."""
    return torch.cat([box.query(xb).argmax(dim=1).cpu() for xb in x.split(batch_size)]) if len(x) else \
        torch.zeros(0, dtype=torch.int64)
