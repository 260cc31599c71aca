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

The defaults are the algorithms above. Keyword options, all off by default, reproduce what the public code
of Orekondy et al. (github.com/tribhuvanesh/prediction-poisoning, ``defenses/adversary/jacobian.py``; line
numbers below are of commit ``1ddff8b``) does instead: ``replace_parents`` (children overwrite their
parents, then the set is joined with itself), ``store_parent`` (JB-top-k stores the parent with its child's
label, the code as first released), ``normalize`` (λ and the clip taken in normalised input space),
``trim="first"``, ``period_rounding="round"``, ``score="cross_entropy"``, JB-self's ``step_class`` and
``query_mirror``, JB-top-k's ``exclude``, ``tau`` and ``iterations`` and ``round_train`` (a different
training for the intermediate substitutes). See ``docs/reproduction.md`` ("the JB gap").
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

SCORES = ("logit", "log_prob", "cross_entropy")
TRIMS = ("random", "first")
PERIOD_ROUNDINGS = ("floor", "round")


def input_jacobian(
    model: nn.Module, x: Tensor, classes: Tensor, *, score: str = "logit", batch_size: int = 512,
) -> Tensor:
    """Rows of the input Jacobian: ``out[i] = ∇_x s_{classes[i]}(x_i)``, shape ``x.shape``.

    ``score="logit"`` differentiates the pre-softmax output ``z_c`` (Papernot et al.'s ``J_F[c]`` as in
    their reference implementation); ``score="log_prob"`` differentiates ``log softmax(z)_c``, i.e. minus
    the cross-entropy towards ``c`` (the targeted fast-gradient-sign step of Juuti et al. 2019);
    ``score="cross_entropy"`` differentiates ``−log softmax(z)_c`` (the untargeted fast-gradient-sign loss
    the JBDA/JB-self of Orekondy et al.'s code steps along, ``jacobian.py:219``, ``:311-314``).

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
            elif score == "cross_entropy":
                z = -torch.log_softmax(z, dim=1)
            selected = z.gather(1, cb.to(device).long().view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(selected, xb)
            out.append(grad.to(x.device))
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty_like(x)


def _parse_normalize(normalize: Any) -> tuple[Tensor, Tensor] | None:
    """``(mean, std)`` (scalars or one value per channel) as two 1-D float tensors; ``None`` stays ``None``."""
    if normalize is None:
        return None
    if len(normalize) != 2:
        raise ValueError(f"normalize must be (mean, std), got {normalize!r}")
    mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in normalize)
    if len(mean) == 0 or len(std) == 0 or not bool(torch.isfinite(mean).all()) or not bool((std > 0).all()):
        raise ValueError(f"normalize needs finite means and positive stds, got {normalize!r}")
    return mean, std


def _per_channel(v: Tensor, like: Tensor) -> Tensor:
    """``v`` (one value, or one per channel) shaped to broadcast against the batch ``like`` ``(N, C, ...)``."""
    if len(v) == 1:
        return v.reshape([1] * like.ndim).to(like.device)
    return v.reshape(1, -1, *([1] * (like.ndim - 2))).to(like.device)


def _period_exponent(rho: int, tau: int, rounding: str) -> int:
    """``⌊ρ/τ⌋`` (Papernot et al.) or Python's ``round(ρ/τ)`` (the authors' ``jacobian.py:199``, ``:262``)."""
    return rho // tau if rounding == "floor" else round(rho / tau)


class _JacobianAugmentation(Attack):
    """The shared augmentation loop; subclasses choose the classes ``C(x)`` and the step ``λ_ρ``.

    Budget accounting: the seed queries count. Each round asks for ``g`` new points per parent (``g = 1``
    for JBDA/JB-self, ``k`` for JB-top-k); when the remaining budget cannot pay for every parent, a random
    subset of ``⌊remaining / g⌋`` parents is augmented (whole groups of ``g`` are kept or dropped), and the
    attack stops once no whole group is affordable or ``rounds`` augmentation rounds are done. The
    substitute is then trained a last time on everything labelled.

    Options reproducing the public code of Orekondy et al. (``defenses/adversary/jacobian.py`` at commit
    ``1ddff8b`` of github.com/tribhuvanesh/prediction-poisoning), all off by default:

    - ``trim="first"``: the round that meets the budget augments the *first* parents in order rather than
      a random subset, and its last parent may get fewer than ``g`` children so that every query is spent
      (``jacobian.py:189-196``; for JB-top-k ``:249-258`` take ``⌈remaining / 3⌉`` parents, query them one
      at a time until the budget is met, ``:289-290``, and cut the set to the budget, ``:295-296``).
    - ``normalize=(mean, std)``: the authors' inputs are normalised, ``(x − mean) / std`` with MNIST's
      ``(0.1307, 0.3081)`` for MNIST and Fashion-MNIST alike (knockoffnets ``knockoff/datasets/__init__.py:
      82-92``), before the step and the clip (``jacobian.py:302-317``). With this option ``step`` (and
      JB-top-k's ``iteration_step``) and ``clip`` are in those normalised units: the raw step is
      ``λ · std`` and the clip ``[0, 1]`` becomes raw ``[mean, mean + std]``. Scalars or one value per
      channel. Inputs and queries stay raw; only the geometry of the step changes.
    - ``round_train``: a :class:`~modelsteal.training.TrainConfig` (or a mapping of its fields) for the
      substitutes trained between rounds; ``train`` is then used only for the final one. The authors' code
      trains each round's substitute 20 epochs at lr 0.1 and the final one 100 epochs at lr 0.01, both SGD
      momentum 0.9, weight decay 5e-4, lr ÷10 every 30 epochs (``jacobian.py:131-135``, ``:158-163``;
      knockoffnets ``knockoff/utils/model.py:155-195``).
    - ``score="cross_entropy"``: differentiate ``−log softmax(z)_c`` (see :func:`input_jacobian`).
    """

    group_size_default: ClassVar[int] = 1
    #: whether children overwrite their parents (set by :class:`_PeriodicStep`'s ``replace_parents``)
    replace_parents: bool = False

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
        trim: str = "random",
        normalize: tuple[Any, Any] | None = None,
        round_train: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if trim not in TRIMS:
            raise ValueError(f"unknown trim {trim!r}; known: {', '.join(TRIMS)}")
        self.trim = trim
        self.normalize = _parse_normalize(normalize)
        if isinstance(round_train, dict):
            round_train = type(self.train_config)(**round_train)
        self.round_train = round_train
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

    def stored_and_queried(self, parents: Tensor, children: Tensor) -> tuple[Tensor, Tensor]:
        """For children aligned row by row with their ``parents``: ``(rows added to the training set, rows
        sent to the victim)``. Both are the children unless an option of the variant says otherwise."""
        return children, children

    # -- the shared loop ---------------------------------------------------------------------------
    def _scale(self, like: Tensor) -> Tensor | float:
        """Raw-space length of one normalised unit: ``std`` (broadcast to ``like``) or 1."""
        return 1.0 if self.normalize is None else _per_channel(self.normalize[1], like)

    def _clip(self, new: Tensor) -> Tensor:
        if self.clip is None:
            return new
        if self.normalize is None:
            return new.clamp(self.clip[0], self.clip[1])
        mean, std = (_per_channel(v, new) for v in self.normalize)
        return new.clamp(mean + self.clip[0] * std, mean + self.clip[1] * std)

    def _delta(self, model: nn.Module, parents: Tensor, classes: Tensor, rho: int) -> Tensor:
        """The raw-space step ``λ_ρ · sign(∇_x s_c(x))`` (``λ_ρ · std · sign(…)`` with ``normalize``)."""
        grad = input_jacobian(model, parents, classes, score=self.score, batch_size=self.jacobian_batch_size)
        return self.step_size(rho) * self._scale(parents) * grad.sign()

    def augment(self, model: nn.Module, x: Tensor, answers: Tensor, *, rho: int) -> tuple[Tensor, Tensor]:
        """New points for parents ``x`` (with victim answers ``answers``): ``(N·g, ...)`` and their classes.

        Children of parent ``i`` are rows ``i·g … i·g+g−1``; row ``j`` of a group is
        ``clip(x_i + λ_ρ · sign(∇_x s_{c_ij}(x_i)))`` (with ``normalize``: step and clip in normalised units).
        """
        classes = self.step_classes(model, x, answers)
        g = classes.shape[1]
        parents = x.repeat_interleave(g, dim=0)
        flat = classes.reshape(-1)
        new = self._clip(parents + self._delta(model, parents, flat, rho))
        return new.detach(), flat

    def _fit(self, model: nn.Module, init: dict[str, Tensor], x: Tensor, answers: Tensor,
             generator: torch.Generator, *, final: bool = True) -> None:
        if not self.warm_start:
            model.load_state_dict(init)
        config = self.train_config if final or self.round_train is None else self.round_train
        training.train(model, x, self.targets(answers), config=config, generator=generator,
                       device=self.device, progress="substitute" if self.progress else False)

    def _affordable(self, n_parents: int, remaining: int, g: int) -> int:
        """How many parents this round augments: whole groups only, or (``trim="first"``) every query spent."""
        if self.trim == "first":
            return min(n_parents, -(-remaining // g))
        return min(n_parents, remaining // g)

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
            n_groups = 0
            if self.rounds is None or rho < self.rounds:
                n_groups = self._affordable(len(x), victim.remaining, g)
            self._fit(model, init, x, answers, generator, final=n_groups == 0)
            if n_groups == 0:
                break
            chosen = torch.arange(len(x))
            if n_groups < len(x):  # trim to the budget: the first parents, or a random subset of whole groups
                chosen = chosen[:n_groups] if self.trim == "first" else \
                    torch.randperm(len(x), generator=generator)[:n_groups].sort().values
            new, classes = self.augment(model, x[chosen], answers[chosen], rho=rho)
            rows = chosen.repeat_interleave(g)
            take = min(len(new), victim.remaining)  # < len(new) only with trim="first": a partial last group
            new, classes, rows = new[:take], classes[:take], rows[:take]
            stored, queried = self.stored_and_queried(x[rows], new)
            new_answers = self.query_all(victim, queried)
            if self.replace_parents:  # jacobian.py:233-238: children overwrite their parents in place ...
                x, answers = x.clone(), answers.clone()
                x[rows], answers[rows] = stored, new_answers
                parents[rows], made_in[rows], step_class[rows] = rows, rho + 1, classes.cpu().long()
            # ... and the (overwritten) set is joined with the children; by default D ∪ children
            x = torch.cat([x, stored])
            answers = torch.cat([answers, new_answers])
            parents = torch.cat([parents, rows])
            made_in = torch.cat([made_in, torch.full((len(stored),), rho + 1, dtype=torch.long)])
            step_class = torch.cat([step_class, classes.cpu().long()])
            steps.append(self.step_size(rho))
            rho += 1

        info = {
            "rounds": rho, "seed_size": n_seed, "group_size": g, "step_sizes": steps,
            "parents": parents, "made_in_round": made_in, "step_classes": step_class,
        }
        return StealResult(clone=model, queries=victim.used, transfer_x=x, transfer_y=answers, info=info)

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "seed_size": self.seed_size, "rounds": self.rounds, "step": self.step,
               "score": self.score}
        if self.trim != "random":
            out["trim"] = self.trim
        if self.normalize is not None:
            out["normalize"] = [v.tolist() for v in self.normalize]
        if self.replace_parents:
            out["replace_parents"] = True
        return out


class _PeriodicStep(_JacobianAugmentation):
    """Papernot et al. (2017, Sec. 6, "periodic step size"): ``λ_ρ = λ · (−1)^⌊ρ/τ⌋`` (JBDA, JB-self).

    ``period_rounding="round"`` uses ``(−1)^round(ρ/τ)`` (Python's rounding) as the authors' code does
    (``jacobian.py:198-199``): with its τ = 5 the sign is + for ρ = 0…2, − for 3…7, + for 8…12.
    ``replace_parents=True`` reproduces its in-place augmentation (``jacobian.py:183-241`` with the default
    ``kappa=None``: the set to augment *is* ``D``, or a view of its first rows when trimmed, line 195): each
    child overwrites its parent's row, and ``D`` is then joined with the children, ``:237-238``. So no
    parent survives a round; ``D_ρ`` holds the ``|D_0|`` images of generation ``ρ``, each ``2^ρ`` times,
    and every copy is queried again. The query count is unchanged (``|D_0| · 2^rounds``, or the budget),
    but a run ends with at most ``2 · |D_0|`` distinct images: generation ``ρ+1`` in the first
    ``remaining`` rows and the twice-copied children, generation ``ρ`` in the rows the budget did not
    reach. In ``info``, ``parents[i]`` is then the row the parent of row ``i`` occupied before it was
    overwritten.
    """

    def __init__(self, *, seed_set: Tensor, seed_size: int | None = 100, rounds: int | None = None,
                 step: float = 0.1, tau: int | None = 3, score: str = "logit", period_rounding: str = "floor",
                 replace_parents: bool = False, **kwargs: Any) -> None:
        super().__init__(seed_set=seed_set, seed_size=seed_size, rounds=rounds, step=step, score=score,
                         **kwargs)
        if tau is not None and tau < 1:
            raise ValueError(f"tau must be >= 1 or None, got {tau}")
        if period_rounding not in PERIOD_ROUNDINGS:
            raise ValueError(f"unknown period_rounding {period_rounding!r}; known: {', '.join(PERIOD_ROUNDINGS)}")
        self.tau = tau
        self.period_rounding = period_rounding
        self.replace_parents = bool(replace_parents)

    def step_size(self, rho: int) -> float:
        if self.tau is None:
            return self.step
        return self.step * (-1.0) ** _period_exponent(rho, self.tau, self.period_rounding)


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

    The JBDA of Orekondy et al.'s code (``jacobian.py:219-222``, ``:302-319``; CLI defaults τ = 5,
    ``:362-363``, λ = 0.1, ``:183``) steps ``+λ_ρ · sign ∇_x CE(F_A(x), ŷ)`` in normalised space, i.e.
    *away* from the victim's label while λ_ρ > 0, then clips to normalised ``[0, 1]`` (``:316-317``):
    ``score="cross_entropy", tau=5, period_rounding="round", normalize=(0.1307, 0.3081),
    replace_parents=True, trim="first"`` (see :class:`_PeriodicStep` and :class:`_JacobianAugmentation`).

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
    options as :class:`JBDA`, plus two that reproduce the "jbself" of Orekondy et al.'s code:

    - ``step_class="victim"``: differentiate the victim's label ``argmax_k y_k`` as JBDA does — the
      authors' code passes the stored victim answer to both strategies (``jacobian.py:219``);
    - ``query_mirror=True``: with ``δ = clip(x + λ_ρ·sign ∇s) − x`` (JBDA's step, clipped), query the
      victim at ``x − δ`` (``jacobian.py:223-224``; not clipped) but store ``x + δ`` with that answer
      (``:234-235``), so the stored inputs are JBDA's points and their labels come from the mirror points.

    With ``score="cross_entropy"`` the query ``x − δ`` steps *towards* the victim's label while λ_ρ > 0.
    """

    def __init__(self, *, seed_set: Tensor, step_class: str = "substitute", query_mirror: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(seed_set=seed_set, **kwargs)
        if step_class not in ("substitute", "victim"):
            raise ValueError(f"step_class must be 'substitute' or 'victim', got {step_class!r}")
        self.step_class = step_class
        self.query_mirror = bool(query_mirror)

    def step_classes(self, model: nn.Module, x: Tensor, answers: Tensor) -> Tensor:
        if self.step_class == "victim":
            return answers.argmax(dim=1).view(-1, 1)
        logits = predict_logits(model, x, batch_size=self.jacobian_batch_size, device=self.device)
        return logits.argmax(dim=1).view(-1, 1).cpu()

    def stored_and_queried(self, parents: Tensor, children: Tensor) -> tuple[Tensor, Tensor]:
        if self.query_mirror:
            return children, 2 * parents - children
        return children, children


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

    Options as :class:`JBDA` without ``replace_parents``, plus ``k`` (default 3, at most ``num_classes − 1``)
    and ``score`` defaulting to ``"log_prob"`` (``"logit"`` steps up the target's logit only). ``tau``
    defaults to ``None`` (constant λ). Options reproducing the "jbtop<k>" of Orekondy et al.'s code
    (``jacobian.py:243-299``, ``:321-337``), all off by default:

    - ``store_parent=True``: store each *parent* with its child's answer — the code as first released
      (commit ``ce04149``, ``X_aug.append(X…)`` at line 286; fixed to ``X + delta_i`` in ``1ddff8b``, Nov
      2020). Then only the seed images are ever trained on, each with many labels.
    - ``exclude="label"``: the targets are the substitute's top ``k`` classes once the stored label
      ``argmax_k y_k`` is removed (``:272-276``), not ranks 2…k+1 of the substitute.
    - ``iterations=8, iteration_step=0.01`` (with ``score="logit"``): the step is ``iterations`` signed
      steps of ``iteration_step`` up the target's logit, each from the current point, with the total kept
      in ``[−λ_ρ, λ_ρ]`` per pixel (``:321-337``; 8 × 0.01 never reaches λ = 0.1). Like ``torch.clamp`` in
      the authors' code, a negative ``λ_ρ`` (from ``tau``) makes the lower bound exceed the upper one and
      the step becomes ``λ_ρ`` on every pixel.
    - ``tau``/``period_rounding`` as for JBDA: the authors' code flips this step's sign too (``:261-262``,
      τ = 5: rounds 3…7 get λ_ρ = −0.1).

    The authors' code does not clip these points (pass ``clip=None``) and trims with ``trim="first"``.
    """

    def __init__(self, *, seed_set: Tensor, k: int = 3, seed_size: int | None = 100,
                 rounds: int | None = None, step: float = 0.1, score: str = "log_prob",
                 tau: int | None = None, period_rounding: str = "floor", store_parent: bool = False,
                 exclude: str = "predicted", iterations: int = 1, iteration_step: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(seed_set=seed_set, seed_size=seed_size, rounds=rounds, step=step, score=score,
                         **kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if tau is not None and tau < 1:
            raise ValueError(f"tau must be >= 1 or None, got {tau}")
        if period_rounding not in PERIOD_ROUNDINGS:
            raise ValueError(f"unknown period_rounding {period_rounding!r}; known: {', '.join(PERIOD_ROUNDINGS)}")
        if exclude not in ("predicted", "label"):
            raise ValueError(f"exclude must be 'predicted' or 'label', got {exclude!r}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if iteration_step is not None and not (iteration_step > 0 and math.isfinite(iteration_step)):
            raise ValueError(f"iteration_step must be a positive number or None, got {iteration_step}")
        if iterations > 1 and iteration_step is None:
            raise ValueError("iterations > 1 needs an iteration_step")
        self.k = k
        self.tau = tau
        self.period_rounding = period_rounding
        self.store_parent = bool(store_parent)
        self.exclude = exclude
        self.iterations = iterations
        self.iteration_step = None if iteration_step is None else float(iteration_step)

    @property
    def group_size(self) -> int:
        return self.k

    def step_size(self, rho: int) -> float:
        if self.tau is None:
            return self.step
        return self.step * (-1.0) ** _period_exponent(rho, self.tau, self.period_rounding)

    def step_classes(self, model: nn.Module, x: Tensor, answers: Tensor) -> Tensor:
        logits = predict_logits(model, x, batch_size=self.jacobian_batch_size, device=self.device)
        if self.exclude == "label":
            label = answers.argmax(dim=1).view(-1, 1).to(logits.device)
            return logits.scatter(1, label, -math.inf).topk(self.k, dim=1).indices.cpu()
        return logits.topk(self.k + 1, dim=1).indices[:, 1:].cpu()

    def _delta(self, model: nn.Module, parents: Tensor, classes: Tensor, rho: int) -> Tensor:
        if self.iteration_step is None:
            return super()._delta(model, parents, classes, rho)
        scale = self._scale(parents)
        bound, alpha = self.step_size(rho) * scale, self.iteration_step * scale
        delta = torch.zeros_like(parents)
        for _ in range(self.iterations):
            grad = input_jacobian(model, parents + delta, classes, score=self.score,
                                  batch_size=self.jacobian_batch_size)
            delta = (delta + alpha * grad.sign()).clamp(-bound, bound)  # bound < 0: every pixel = bound
        return delta

    def stored_and_queried(self, parents: Tensor, children: Tensor) -> tuple[Tensor, Tensor]:
        return (parents if self.store_parent else children), children

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "k": self.k}
        if self.store_parent:
            out["store_parent"] = True
        return out
