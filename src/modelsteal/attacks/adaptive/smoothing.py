"""Query smoothing (multi-query): each transfer input is sent as ``k`` augmented copies, the answers combined.

The attacker's countermeasure against posterior perturbation studied by Orekondy, Schiele and Fritz,
"Prediction Poisoning: Towards Defenses Against DNN Model Stealing Attacks", ICLR 2020, Sec. 5.2.3 ("nquery":
the same image queried ``n`` times, answers averaged), and as the "smoothing" adaptive attacker of Tang, Zhang,
Chen, Zhang and Xu, "ModelGuard: Information-Theoretic Defense Against Model Extraction Attacks", USENIX
Security 2024, Sec. 6 (each query sent as several randomly augmented copies; a perturbation that is not a
function of the image alone, or that a small change of the image moves, averages out while the victim's
posterior, locally smooth, survives).

For an image ``x`` with copies ``x^(1..k) = A_j(x)`` the clone's target is

    ŷ(x) = C( F̃_V(x^(1)), …, F̃_V(x^(k)) )

with ``C`` one of ``mean`` (the arithmetic mean of the ``k`` posteriors), ``median`` (the coordinate-wise
median, renormalised onto the simplex) or ``vote`` (the empirical distribution of the ``k`` top-1 labels:
the argmax vote, a soft label whose largest entry is the majority class). The clone trains on the original
``x`` with ``ŷ(x)``. Every copy is a query: ``B`` queries buy ``⌊B / k⌋`` images. With ``augment=None``
(``k`` identical copies) and ``combine="mean"`` this is exactly Knockoff's ``queries_per_image=k`` (the
"nquery" countermeasure); a test checks the two give the same answers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modelsteal import training
from modelsteal.attacks.augment import QUERY_AUGMENTATIONS
from modelsteal.attacks.base import CloneJob, StealResult, register_attack
from modelsteal.attacks.knockoff import KnockoffNets
from modelsteal.blackbox import QueryBudget

COMBINE = ("mean", "median", "vote")


def combine_answers(answers: Tensor, how: str) -> Tensor:
    """Combine the answers ``(N, k, K)`` of ``k`` copies of each of ``N`` inputs into ``(N, K)`` rows on the
    simplex: ``mean``, ``median`` (coordinate-wise, renormalised; the lower median for even ``k``) or
    ``vote`` (the fraction of copies whose top-1 label is each class)."""
    if answers.ndim != 3:
        raise ValueError(f"answers must have shape (N, k, K), got {tuple(answers.shape)}")
    if how == "mean":
        return answers.mean(dim=1)
    if how == "median":
        med = answers.median(dim=1).values
        total = med.sum(dim=1, keepdim=True)
        uniform = torch.full_like(med, 1.0 / med.shape[1])
        return torch.where(total > 0, med / total.clamp_min(torch.finfo(med.dtype).tiny), uniform)
    if how == "vote":
        k, classes = answers.shape[1], answers.shape[2]
        onehot = torch.nn.functional.one_hot(answers.argmax(dim=2), classes).to(answers.dtype)
        return onehot.sum(dim=1) / k
    raise ValueError(f"unknown combine {how!r}; known: {', '.join(COMBINE)}")


@register_attack("smoothing")
class QuerySmoothing(KnockoffNets):
    """Knockoff's random sampling with every image sent as ``copies`` augmented copies, answers combined.

    Example::

        attack = QuerySmoothing(transfer_set=x_pool, copies=5, augment="noise", combine="median")
        result = attack(api, budget=10_000)   # 2,000 images, 10,000 queries

    Args:
        transfer_set: pool of query images ``(M, *input_shape)``.
        copies: ``k``, queries per image (>= 1).
        augment: ``None`` (identical copies), ``"crop-flip"`` or ``"noise"`` (:mod:`~modelsteal.attacks.augment`),
            a fresh draw for every copy.
        combine: ``"mean"``, ``"median"`` or ``"vote"`` (see :func:`combine_answers`).
        **base: options of :class:`~modelsteal.attacks.base.Attack` (``labels="argmax"`` trains on the top-1 of
            the combined answer).
    """

    stackable = True

    def __init__(self, *, transfer_set: Tensor, copies: int = 5, augment: str | None = "noise",
                 combine: str = "mean", **base: object) -> None:
        super().__init__(transfer_set=transfer_set, **base)  # type: ignore[arg-type]
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies must be an integer >= 1, got {copies!r}")
        if augment is not None and str(augment).lower() in ("none", "null", ""):
            augment = None
        if augment is not None and augment not in QUERY_AUGMENTATIONS:
            raise ValueError(f"unknown augment {augment!r}; known: none, {', '.join(QUERY_AUGMENTATIONS)}")
        if combine not in COMBINE:
            raise ValueError(f"unknown combine {combine!r}; known: {', '.join(COMBINE)}")
        self.copies, self.augment, self.combine = copies, augment, combine

    def collect(self, victim: QueryBudget, *, generator: torch.Generator) -> CloneJob:
        k = self.copies
        images, _, raw = self.query_copies(victim, copies=k, augment=self.augment, generator=generator)
        answers = combine_answers(raw.view(len(images), k, -1), self.combine)
        y = self.targets(answers)
        clone = self.make_clone(victim, generator=generator)

        def finish(history: training.TrainHistory | None) -> StealResult:
            info = {"images": len(images), "copies": k, "combine": self.combine, "augment": self.augment,
                    "final_loss": history.loss[-1] if history is not None and history.loss else None}
            return StealResult(clone=clone, queries=victim.used, transfer_x=images, transfer_y=answers, info=info)

        return CloneJob(attack=self, budget=victim, clone=clone, x=images, targets=y, generator=generator,
                        finish=finish)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "copies": self.copies, "augment": self.augment, "combine": self.combine}
