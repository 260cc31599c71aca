"""Synthetic-query attacks: Jacobian-based dataset augmentation and its PRADA variants.

The three attacks share one loop (Papernot et al., *Practical Black-Box Attacks against Machine
Learning*, AsiaCCS 2017, Algorithm 1; recapped in Orekondy et al., ICLR 2020, Appendix C):

1. label the substitute set ``D_ρ`` (initially the seed set ``D_0``) by querying the victim;
2. train the substitute ``F_A`` on every labelled point so far (:func:`modelsteal.training.train`);
3. augment ``D_{ρ+1} = D_ρ ∪ {clip(x + λ_ρ · sign(∇_x s_c(x))) : x ∈ D_ρ, c ∈ C(x)}``.

They differ only in the classes ``C(x)`` whose score ``s_c`` is differentiated:

- :class:`JBDA` (Papernot et al. 2017): ``C(x) = {ŷ(x)}``, the victim's label ``argmax_k y_k`` for ``x``.
- :class:`JBSelf` (Juuti et al., *PRADA*, EuroS&P 2019; Orekondy et al. 2020, App. C): ``C(x) =
  {argmax_k F_A(x)_k}``, the substitute's own maximum-a-posteriori class.
- :class:`JBTopK` (Juuti et al. 2019, "jb-top-k"): ``C(x)`` = the ``k`` classes ranked 2…k+1 by the
  substitute's posterior (the ``k`` nearest *other* classes), each giving one targeted step, so ``k``
  new points per parent.

The gradients are input Jacobian rows ``∇_x s_{c_i}(x_i)`` computed for a whole batch with one forward
and one backward pass (see :func:`input_jacobian`).
"""

from __future__ import annotations

import copy
import math
from abc import abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from modelsteal import training
from modelsteal.attacks.base import Attack, StealResult, register_attack
from modelsteal.blackbox import QueryBudget
from modelsteal.training import predict_logits

SCORES = ("logit", "log_prob")


def input_jacobian(
    model: nn.Module, x: Tensor, classes: Tensor, *, score: str = "logit", batch_size: int = 512,
) -> Tensor:
    """Rows of the input Jacobian: ``out[i] = ∇_x s_{classes[i]}(x_i)``, shape ``x.shape``.

    ``score="logit"`` differentiates the pre-softmax output ``z_c`` (Papernot et al.'s ``J_F[c]`` as in
    their reference implementation); ``score="log_prob"`` differentiates ``log softmax(z)_c``, i.e. minus
    the cross-entropy towards ``c`` (the targeted fast-gradient-sign step of Juuti et al. 2019).

    Batched: for each chunk of ``batch_size`` rows we take one backward pass of ``Σ_i s_{c_i}(x_i)``.
    The model runs in evaluation mode, so rows do not interact (no batch statistics, no dropout) and the
    gradient of the sum w.r.t. row ``i`` is exactly row ``i``'s own gradient. Parameter gradients are not
    touched (``torch.autograd.grad`` w.r.t. the inputs only). Returned on ``x``'s device.
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; known: {', '.join(SCORES)}")
    if classes.shape != (x.shape[0],):
        raise ValueError(f"classes must have shape ({x.shape[0]},), got {tuple(classes.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for xb, cb in zip(x.split(batch_size), classes.split(batch_size), strict=True):
            xb = xb.detach().to(device).requires_grad_(True)
            z = model(xb)
            if score == "log_prob":
                z = torch.log_softmax(z, dim=1)
            selected = z.gather(1, cb.to(device).long().view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(selected, xb)
            out.append(grad.to(x.device))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty_like(x)


class _JacobianAugmentation(Attack):
    """The shared augmentation loop; subclasses choose the classes ``C(x)`` and the step ``λ_ρ``.

    Budget accounting: the seed queries count. Each round asks for ``g`` new points per parent (``g = 1``
    for JBDA/JB-self, ``k`` for JB-top-k); when the remaining budget cannot pay for every parent, a random
    subset of ``⌊remaining / g⌋`` parents is augmented (whole groups of ``g`` are kept or dropped), and the
    attack stops once no whole group is affordable or ``rounds`` augmentation rounds are done. The
    substitute is then trained a last time on everything labelled.
    """

    group_size_default: ClassVar[int] = 1

    def __init__(
        self,
        *,
        seed_set: Tensor,
        seed_size: int | None = 100,
        rounds: int | None = None,
        step: float = 0.1,
        score: str = "logit",
        clip: tuple[float, float] | None = (0.0, 1.0),
        warm_start: bool = False,
        jacobian_batch_size: int = 512,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(seed_set, Tensor) or seed_set.ndim < 2 or len(seed_set) == 0:
            raise ValueError("seed_set must be a non-empty tensor of inputs (N, *input_shape)")
        if seed_size is not None and seed_size < 1:
            raise ValueError(f"seed_size must be >= 1 or None, got {seed_size}")
        if rounds is not None and rounds < 0:
            raise ValueError(f"rounds must be >= 0 or None, got {rounds}")
        if not step > 0 or not math.isfinite(step):
            raise ValueError(f"step λ must be a positive number, got {step}")
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; known: {', '.join(SCORES)}")
        if clip is not None and not clip[0] < clip[1]:
            raise ValueError(f"clip must be (low, high) with low < high, got {clip}")
        if jacobian_batch_size < 1:
            raise ValueError(f"jacobian_batch_size must be >= 1, got {jacobian_batch_size}")
        self.seed_set = seed_set.detach().float().cpu()
        self.seed_size = seed_size
        self.rounds = rounds
        self.step = float(step)
        self.score = score
        self.clip = clip
        self.warm_start = warm_start
        self.jacobian_batch_size = jacobian_batch_size

    # -- what the variants change ------------------------------------------------------------------
    @property
    def group_size(self) -> int:
        """New points per parent and round."""
        return self.group_size_default

    @abstractmethod
    def step_classes(self, model: nn.Module, x: Tensor, answers: Tensor) -> Tensor:
        """Classes ``(N, group_size)`` whose score is differentiated at each parent ``x``."""

    @abstractmethod
    def step_size(self, rho: int) -> float:
        """Signed step ``λ_ρ`` of augmentation round ``rho`` (0-based)."""

    # -- the shared loop ---------------------------------------------------------------------------
    def augment(self, model: nn.Module, x: Tensor, answers: Tensor, *, rho: int) -> tuple[Tensor, Tensor]:
        """New points for parents ``x`` (with victim answers ``answers``): ``(N·g, ...)`` and their classes.

        Children of parent ``i`` are rows ``i·g … i·g+g−1``; row ``j`` of a group is
        ``clip(x_i + λ_ρ · sign(∇_x s_{c_ij}(x_i)))``.
        """
        classes = self.step_classes(model, x, answers)
        g = classes.shape[1]
        parents = x.repeat_interleave(g, dim=0)
        flat = classes.reshape(-1)
        grad = input_jacobian(model, parents, flat, score=self.score, batch_size=self.jacobian_batch_size)
        new = parents + self.step_size(rho) * grad.sign()
        if self.clip is not None:
            new = new.clamp(self.clip[0], self.clip[1])
        return new.detach(), flat

    def _fit(self, model: nn.Module, init: dict[str, Tensor], x: Tensor, answers: Tensor,
             generator: torch.Generator) -> None:
        if not self.warm_start:
            model.load_state_dict(init)
        training.train(model, x, self.targets(answers), config=self.train_config, generator=generator,
                       device=self.device, progress="substitute" if self.progress else False)

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        if tuple(self.seed_set.shape[1:]) != tuple(victim.input_shape):
            raise ValueError(f"seed_set rows have shape {tuple(self.seed_set.shape[1:])}; the victim takes "
                             f"{tuple(victim.input_shape)}")
        g = self.group_size
        if g > victim.num_classes - 1:
            raise ValueError(f"{g} new points per parent need more than {victim.num_classes} classes")
        n_seed = len(self.seed_set) if self.seed_size is None else min(self.seed_size, len(self.seed_set))
        n_seed = min(n_seed, victim.remaining)
        order = torch.randperm(len(self.seed_set), generator=generator)[:n_seed]
        x = self.seed_set[order]
        answers = self.query_all(victim, x)
        parents = torch.full((n_seed,), -1, dtype=torch.long)
        made_in = torch.zeros(n_seed, dtype=torch.long)
        step_class = torch.full((n_seed,), -1, dtype=torch.long)
        steps: list[float] = []

        model = self.make_clone(victim, generator=generator)
        init = copy.deepcopy(model.state_dict())
        rho = 0
        while True:
            self._fit(model, init, x, answers, generator)
            if self.rounds is not None and rho >= self.rounds:
                break
            n_groups = min(len(x), victim.remaining // g)
            if n_groups == 0:
                break
            chosen = torch.arange(len(x))
            if n_groups < len(x):  # trim to the budget by whole groups of g
                chosen = torch.randperm(len(x), generator=generator)[:n_groups].sort().values
            new, classes = self.augment(model, x[chosen], answers[chosen], rho=rho)
            new_answers = self.query_all(victim, new)
            x = torch.cat([x, new])
            answers = torch.cat([answers, new_answers])
            parents = torch.cat([parents, chosen.repeat_interleave(g)])
            made_in = torch.cat([made_in, torch.full((len(new),), rho + 1, dtype=torch.long)])
            step_class = torch.cat([step_class, classes.cpu().long()])
            steps.append(self.step_size(rho))
            rho += 1

        info = {
            "rounds": rho, "seed_size": n_seed, "group_size": g, "step_sizes": steps,
            "parents": parents, "made_in_round": made_in, "step_classes": step_class,
        }
        return StealResult(clone=model, queries=victim.used, transfer_x=x, transfer_y=answers, info=info)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed_size": self.seed_size, "rounds": self.rounds, "step": self.step,
                "score": self.score}


class _PeriodicStep(_JacobianAugmentation):
    """Papernot et al. (2017, Sec. 6, "periodic step size"): ``λ_ρ = λ · (−1)^⌊ρ/τ⌋`` (JBDA, JB-self)."""

    def __init__(self, *, seed_set: Tensor, seed_size: int | None = 100, rounds: int | None = None,
                 step: float = 0.1, tau: int | None = 3, score: str = "logit", **kwargs: Any) -> None:
        super().__init__(seed_set=seed_set, seed_size=seed_size, rounds=rounds, step=step, score=score,
                         **kwargs)
        if tau is not None and tau < 1:
            raise ValueError(f"tau must be >= 1 or None, got {tau}")
        self.tau = tau

    def step_size(self, rho: int) -> float:
        if self.tau is None:
            return self.step
        return self.step * (-1.0) ** (rho // self.tau)


@register_attack("jbda")
class JBDA(_PeriodicStep):
    """Jacobian-based dataset augmentation (Papernot et al., AsiaCCS 2017, Algorithm 1).

    Round ``ρ`` adds ``x + λ_ρ · sign(∇_x z_ŷ(x))`` for every labelled ``x`` (clipped to ``clip``), with
    ``ŷ = argmax_k y_k`` the victim's label for ``x``, ``z`` the substitute's logits (``score="log_prob"``
    uses ``log softmax(z)``) and the periodic step ``λ_ρ = λ · (−1)^⌊ρ/τ⌋`` (``tau=None``: constant λ).
    The substitute is re-trained after every round on all points labelled so far, from its initial
    weights (``warm_start=True`` continues training instead).

    Options (keyword-only) besides the :class:`Attack` ones (``clone``, ``train``, ``labels``, ``device``):
    ``seed_set`` the attacker's unlabelled seed inputs; ``seed_size`` how many of them to use (100 for
    MNIST/Fashion-MNIST as in Orekondy et al. 2020, App. C; ``None`` = all); ``rounds`` augmentation
    rounds (``None``: until the budget is spent; Papernot used 6); ``step`` λ = 0.1; ``tau`` τ = 3.
    Without trimming a run spends ``|D_0| · 2^rounds`` queries.

    Example::

        attack = JBDA(seed_set=x_seed, clone="lenet", labels="soft")
        result = attack(api, budget=50_000, seed=0)
    """

    def step_classes(self, model: nn.Module, x: Tensor, answers: Tensor) -> Tensor:
        return answers.argmax(dim=1).view(-1, 1)


@register_attack("jb-self")
class JBSelf(_PeriodicStep):
    """JB-self (Juuti et al., PRADA, EuroS&P 2019; Orekondy et al. 2020, App. C).

    Identical to :class:`JBDA` except for the class differentiated: the substitute's own
    maximum-a-posteriori class ``c = argmax_k F_A(x)_k`` instead of the victim's label, i.e. round ``ρ``
    adds ``clip(x + λ_ρ · sign(∇_x z_c(x)))`` with the same periodic ``λ_ρ = λ · (−1)^⌊ρ/τ⌋``. Same
    options as :class:`JBDA`.
    """

    def step_classes(self, model: nn.Module, x: Tensor, answers: Tensor) -> Tensor:
        logits = predict_logits(model, x, batch_size=self.jacobian_batch_size, device=self.device)
        return logits.argmax(dim=1).view(-1, 1).cpu()


@register_attack("jb-top-k")
class JBTopK(_JacobianAugmentation):
    """JB-top-k (Juuti et al., PRADA, EuroS&P 2019; "jbtop3" in Orekondy et al. 2020 with ``k = 3``).

    For each labelled ``x`` let ``c_1`` be the substitute's predicted class and ``t_1 … t_k`` the classes
    ranked 2 … k+1 by its posterior ``F_A(x)`` (the ``k`` nearest other classes). Round ``ρ`` adds ``k``
    targeted points per parent, ``clip(x + λ · sign(∇_x log F_A(x)_{t_j}))`` for ``j = 1 … k`` — a
    targeted fast-gradient-sign step of size ``λ`` towards ``t_j`` (``= x − λ·sign ∇_x CE(F_A(x), t_j)``).
    Targeted steps keep ``λ > 0`` in every round (a periodic sign flip would step *away* from the target).
    Without trimming a run spends ``|D_0| · (1 + k)^rounds`` queries; when the budget runs short whole
    groups of ``k`` siblings are dropped, so up to ``k − 1`` queries may stay unspent.

    Options as :class:`JBDA` without ``tau``, plus ``k`` (default 3, at most ``num_classes − 1``) and
    ``score`` defaulting to ``"log_prob"`` (``"logit"`` steps up the target's logit only).
    """

    def __init__(self, *, seed_set: Tensor, k: int = 3, seed_size: int | None = 100,
                 rounds: int | None = None, step: float = 0.1, score: str = "log_prob",
                 **kwargs: Any) -> None:
        super().__init__(seed_set=seed_set, seed_size=seed_size, rounds=rounds, step=step, score=score,
                         **kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k

    @property
    def group_size(self) -> int:
        return self.k

    def step_size(self, rho: int) -> float:
        return self.step

    def step_classes(self, model: nn.Module, x: Tensor, answers: Tensor) -> Tensor:
        logits = predict_logits(model, x, batch_size=self.jacobian_batch_size, device=self.device)
        return logits.topk(self.k + 1, dim=1).indices[:, 1:].cpu()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "k": self.k}
