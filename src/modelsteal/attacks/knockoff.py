"""Knockoff Nets, random strategy (Orekondy, Schiele, Fritz, CVPR 2019, Sec. 4.1.1).

The attacker samples ``B`` images uniformly without replacement from a transfer pool drawn from a
distribution independent of the victim's training data, queries the black box for their posteriors
``ỹ = F_V(x)`` and trains the clone ``F_A`` to minimise ``-Σ_k ỹ_k log F_A(x)_k`` over the transfer set.

The attacker's countermeasures of the Prediction Poisoning paper (Orekondy et al., ICLR 2020, Sec. 5.2.3)
are options: ``labels="argmax"`` (train on top-1 labels only), ``queries_per_image=n`` ("nquery": every
image is queried ``n`` times and the answers averaged), ``query_augment="crop-flip"`` ("nquery+aug": each
of the ``n`` queries is a random crop and flip, every answer kept), another ``clone`` architecture, and
``train=TrainConfig(optimizer="adam")``. The budget counts every query, repeated ones included.
"""

from __future__ import annotations

import torch
from torch import Tensor

from modelsteal import training
from modelsteal.attacks.augment import QUERY_AUGMENTATIONS
from modelsteal.attacks.base import Attack, CloneJob, StealResult, register_attack
from modelsteal.blackbox import QueryBudget


@register_attack("knockoff")
class KnockoffNets(Attack):
    """Random-strategy Knockoff Nets.

    Example::

        attack = KnockoffNets(transfer_set=x_pool, clone="lenet", train=TrainConfig(epochs=30))
        result = attack(api, budget=50_000, seed=0)
        result.clone  # the stolen model

    Args:
        transfer_set: pool of query images ``(M, *input_shape)`` in the victim's input range.
        queries_per_image: queries spent on each sampled image (1 = the plain attack).
        query_augment: ``None``, ``"crop-flip"`` or ``"noise"``: transform applied to every query.
        **base: options of :class:`~modelsteal.attacks.base.Attack` (clone, train, labels, device, ...).
    """

    stackable = True  # the queries depend on the pool, budget and seed only

    def __init__(
        self, *, transfer_set: Tensor, queries_per_image: int = 1, query_augment: str | None = None, **base: object
    ) -> None:
        super().__init__(**base)  # type: ignore[arg-type]
        if not isinstance(transfer_set, Tensor) or transfer_set.ndim < 2 or len(transfer_set) == 0:
            raise ValueError("transfer_set must be a non-empty tensor of query inputs (M, *input_shape)")
        if queries_per_image < 1:
            raise ValueError(f"queries_per_image must be >= 1, got {queries_per_image}")
        if query_augment is not None and query_augment not in QUERY_AUGMENTATIONS:
            raise ValueError(f"unknown query_augment {query_augment!r}; known: {', '.join(QUERY_AUGMENTATIONS)}")
        self.transfer_set = transfer_set
        self.queries_per_image = int(queries_per_image)
        self.query_augment = query_augment

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` pool indices drawn uniformly without replacement (the whole pool if it is smaller)."""
        return torch.randperm(len(self.transfer_set), generator=generator)[:n]

    def select(self, x: Tensor, answers: Tensor) -> tuple[Tensor, Tensor, dict[str, object]]:
        """The answered rows the clone trains on, and what to report about the choice: every row here;
        variants that drop answers (:mod:`modelsteal.attacks.evasion`) override it."""
        return x, answers, {}

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        job = self.collect(victim, generator=generator)
        return job.result(job.train_alone())

    def query_copies(self, victim: QueryBudget, *, copies: int, augment: str | None,
                     generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Sample ``remaining // copies`` images, query each ``copies`` times (each copy transformed by
        ``augment`` when given): ``(images, queries, answers)``, the copies of one image consecutive."""
        if tuple(self.transfer_set.shape[1:]) != tuple(victim.input_shape):
            raise ValueError(
                f"transfer set images have shape {tuple(self.transfer_set.shape[1:])}, the victim "
                f"expects {tuple(victim.input_shape)}"
            )
        idx = self.sample(victim.remaining // copies, generator)
        if len(idx) == 0:
            raise ValueError(f"a budget of {victim.budget} is too small for {copies} copies (queries) per image")
        images = self.transfer_set[idx]
        queries = images.repeat_interleave(copies, dim=0)
        if augment is not None:
            queries = QUERY_AUGMENTATIONS[augment](queries, generator)
        return images, queries, self.query_all(victim, queries)

    def collect(self, victim: QueryBudget, *, generator: torch.Generator) -> CloneJob:
        """Sample, query and select; the clone is built (seeded) but not trained."""
        q = self.queries_per_image
        images, queries, answers = self.query_copies(victim, copies=q, augment=self.query_augment,
                                                     generator=generator)
        if self.query_augment is None and q > 1:
            x, answers = images, answers.view(len(images), q, -1).mean(dim=1)  # nquery: average the n answers
        else:
            x = queries
        x, answers, selected = self.select(x, answers)
        y = self.targets(answers)
        clone = self.make_clone(victim, generator=generator)

        def finish(history: training.TrainHistory | None) -> StealResult:  # an empty selection: untrained clone
            info = {
                "images": len(images),
                "pool_size": len(self.transfer_set),
                "pool_exhausted": len(images) < victim.budget // q,
                "final_loss": history.loss[-1] if history is not None and history.loss else None,
                **selected,
            }
            return StealResult(clone=clone, queries=victim.used, transfer_x=x, transfer_y=answers, info=info)

        return CloneJob(attack=self, budget=victim, clone=clone, x=x, targets=y, generator=generator, finish=finish)
