"""ActiveThief: model extraction with active learning from unannotated public data.

Pal, Gupta, Shukla, Kanade, Shevade and Ganapathy, "ActiveThief: Model Extraction Using Active Learning and
Unannotated Public Data", AAAI 2020 (Sec. 3, Algorithm 1). The attacker holds an unlabelled pool ``X`` (the
thief dataset). Round 0 queries a random seed set ``S_0`` and trains the substitute on it; every later round
``i`` scores the still-unqueried pool with the current substitute ``F̃``, queries the ``k`` inputs the
selection strategy picks, adds them to the labelled set and retrains the substitute on everything answered so
far. The strategies of Sec. 3.2:

- ``random``: ``k`` uniformly random inputs (the Knockoff baseline inside the same rounds);
- ``uncertainty``: the ``k`` inputs of largest entropy ``H(F̃(x)) = −Σ_j F̃(x)_j log F̃(x)_j``;
- ``k-center``: the core-set greedy of Sener and Savarese ("Active Learning for Convolutional Neural
  Networks: A Core-Set Approach", ICLR 2018) on the substitute's probability vectors: repeatedly take the
  input farthest (Euclidean) from its nearest centre, the centres being the labelled set and the inputs
  already taken;
- ``dfal``: DeepFool-based active learning (Ducoffe and Precioso, "Adversarial Active Learning for Deep
  Networks: a Margin Based Approach", 2018): the ``k`` inputs whose DeepFool perturbation (Moosavi-Dezfooli,
  Fawzi and Frossard, "DeepFool", CVPR 2016, Alg. 2) against the substitute is smallest in L2 — the inputs
  nearest the substitute's decision boundary;
- ``dfal+k-center``: DFAL keeps the ``ρ`` inputs nearest the boundary (``ρ = dfal_keep · k``), k-center picks
  ``k`` of them (the paper's combination, Sec. 3.2).

The budget splits exactly: ``seed_fraction · B`` queries in round 0 (at least one), the rest in ``rounds``
equal steps (the last one takes the remainder), so ``B`` queries are spent unless the pool runs out. The
authors retrain the substitute from scratch in each round; here each round's substitute starts from the same
initial weights (``round_epochs`` epochs; the final clone gets the full ``train`` schedule on every answer).
``candidates`` scores a random subset of the unqueried pool per round instead of all of it (CPU scale; the
paper scores the whole pool).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal import training
from modelsteal.attacks.base import Attack, StealResult, register_attack
from modelsteal.blackbox import QueryBudget
from modelsteal.training import predict_logits

STRATEGIES = ("random", "uncertainty", "k-center", "dfal", "dfal+k-center")
INDEXES = ("auto", "torch", "faiss")


def entropy(probs: Tensor) -> Tensor:
    """``H(p) = −Σ_j p_j log p_j`` per row of ``probs`` (N, K), with ``0 log 0 = 0``."""
    return -(probs * probs.clamp_min(torch.finfo(probs.dtype).tiny).log()).sum(dim=1)


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def nearest_distance(points: Tensor, centers: Tensor, *, index: str = "auto", chunk: int = 4096) -> Tensor:
    """Euclidean distance from each row of ``points`` (N, D) to its nearest row of ``centers`` (M, D):
    a ``faiss.IndexFlatL2`` (``pip install 'modelsteal[faiss]'``) or chunked ``torch.cdist``; ``auto`` takes
    faiss when it is installed."""
    if index not in INDEXES:
        raise ValueError(f"unknown index {index!r}; known: {', '.join(INDEXES)}")
    if len(centers) == 0:
        return torch.full((len(points),), math.inf)
    if index == "faiss" or (index == "auto" and _faiss_available()):
        import faiss

        idx = faiss.IndexFlatL2(points.shape[1])
        idx.add(centers.detach().cpu().float().contiguous().numpy())
        d2, _ = idx.search(points.detach().cpu().float().contiguous().numpy(), 1)
        return torch.from_numpy(d2[:, 0]).clamp_min(0).sqrt().to(points.dtype)
    out = [torch.cdist(p, centers).amin(dim=1) for p in points.split(chunk)]
    return torch.cat(out)


def k_center_greedy(points: Tensor, centers: Tensor, k: int, *, index: str = "auto") -> Tensor:
    """Indices of ``k`` rows of ``points`` chosen by the core-set greedy (Sener and Savarese, ICLR 2018, Alg. 1):
    each pick is ``argmax_i min_c ||points_i − c||`` over the centres so far (``centers`` and the earlier picks).
    With no centres the first pick is the row farthest from the points' mean."""
    k = min(k, len(points))
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    if len(centers):
        dist = nearest_distance(points, centers, index=index)
    else:
        dist = (points - points.mean(dim=0)).norm(dim=1)
    picks = []
    for _ in range(k):
        i = int(dist.argmax())
        picks.append(i)
        dist = torch.minimum(dist, (points - points[i]).norm(dim=1))
        dist[i] = -1.0  # never picked twice (its distance to itself is 0 anyway)
    return torch.tensor(picks, dtype=torch.long)


def deepfool_norms(model: nn.Module, x: Tensor, *, max_iter: int = 20, overshoot: float = 0.02,
                   batch_size: int = 256) -> Tensor:
    """L2 norm of the DeepFool perturbation (Moosavi-Dezfooli et al., CVPR 2016, Alg. 2) that changes
    ``model``'s label on each row of ``x``; inputs it cannot flip in ``max_iter`` steps get ``inf``.

    One step, for the label ``k̂`` of the clean input and every other class ``k``: ``w_k = ∇f_k − ∇f_k̂``,
    ``f_k = z_k − z_k̂``; ``l = argmin_k |f_k| / ||w_k||``; ``r += (|f_l| + 1e-4) / ||w_l||² · w_l`` (Eq. 8–9).
    The Jacobian of all classes comes from one batched ``torch.func.jacrev``."""
    from torch.func import functional_call, jacrev, vmap

    device = training.model_device(model)
    model = model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def logits_one(xi: Tensor) -> Tensor:
        return functional_call(model, (params, buffers), (xi[None],))[0]

    jac = vmap(jacrev(logits_one))
    norms = []
    for xb in x.split(batch_size):
        xb = xb.to(device)
        with torch.no_grad():
            label = model(xb).argmax(dim=1)
        r = torch.zeros_like(xb)
        done = torch.zeros(len(xb), dtype=torch.bool, device=device)
        result = torch.full((len(xb),), math.inf, device=device)
        for _ in range(max_iter):
            xa = xb + (1 + overshoot) * r
            with torch.no_grad():
                z = model(xa)
            flipped = (z.argmax(dim=1) != label) & ~done
            result[flipped] = ((1 + overshoot) * r[flipped]).flatten(1).norm(dim=1)
            done |= flipped
            if bool(done.all()):
                break
            g = jac(xa).flatten(2)  # (B, K, D)
            rows = torch.arange(len(xb), device=device)
            w = g - g[rows, label][:, None]
            f = z - z[rows, label][:, None]
            wn = w.norm(dim=2).clamp_min(1e-12)
            ratio = f.abs() / wn
            ratio[rows, label] = math.inf
            l_ = ratio.argmin(dim=1)
            step = ((f[rows, l_].abs() + 1e-4) / wn[rows, l_] ** 2)[:, None] * w[rows, l_]
            r = r + torch.where(done[:, None], torch.zeros_like(step), step).view_as(r)
        norms.append(result.cpu())
    return torch.cat(norms) if norms else torch.empty(0)


@register_attack("active-thief")
class ActiveThief(Attack):
    """ActiveThief (Pal et al., AAAI 2020, Algorithm 1) with one of its selection strategies.

    Example::

        attack = ActiveThief(transfer_set=x_pool, strategy="k-center", rounds=10)
        result = attack(api, budget=10_000)

    Args:
        transfer_set: the unlabelled thief pool ``(M, *input_shape)``.
        strategy: one of ``random``, ``uncertainty``, ``k-center``, ``dfal``, ``dfal+k-center``.
        rounds: selection rounds after the random seed round (>= 1).
        seed_fraction: the share of the budget spent on the random round 0, in (0, 1).
        round_epochs: epochs of the substitute's training in each round (``None``: ``train.epochs``).
        candidates: score this many random unqueried inputs per round (``None``: the whole pool).
        dfal_keep: for ``dfal+k-center``, DFAL keeps ``dfal_keep · k`` inputs before k-center picks ``k``.
        deepfool_iterations: DeepFool's step limit.
        index: nearest neighbours for k-center: ``auto`` (faiss when installed), ``torch`` or ``faiss``.
        **base: options of :class:`~modelsteal.attacks.base.Attack` (clone, train, labels, device, ...).
    """

    reported_info = ("rounds_run",)

    def __init__(self, *, transfer_set: Tensor, strategy: str = "k-center", rounds: int = 10,
                 seed_fraction: float = 0.1, round_epochs: int | None = None, candidates: int | None = None,
                 dfal_keep: float = 4.0, deepfool_iterations: int = 20, index: str = "auto", **base: Any) -> None:
        super().__init__(**base)
        if not isinstance(transfer_set, Tensor) or transfer_set.ndim < 2 or len(transfer_set) == 0:
            raise ValueError("transfer_set must be a non-empty tensor of query inputs (M, *input_shape)")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        if not 0.0 < seed_fraction < 1.0:
            raise ValueError(f"seed_fraction must be in (0, 1), got {seed_fraction}")
        if round_epochs is not None and round_epochs < 1:
            raise ValueError(f"round_epochs must be >= 1 or none, got {round_epochs}")
        if candidates is not None and candidates < 1:
            raise ValueError(f"candidates must be >= 1 or none, got {candidates}")
        if not dfal_keep >= 1.0:
            raise ValueError(f"dfal_keep must be >= 1, got {dfal_keep}")
        if deepfool_iterations < 1:
            raise ValueError(f"deepfool_iterations must be >= 1, got {deepfool_iterations}")
        if index not in INDEXES:
            raise ValueError(f"unknown index {index!r}; known: {', '.join(INDEXES)}")
        self.transfer_set = transfer_set
        self.strategy, self.rounds, self.seed_fraction = strategy, int(rounds), float(seed_fraction)
        self.round_epochs, self.candidates = round_epochs, candidates
        self.dfal_keep, self.deepfool_iterations, self.index = float(dfal_keep), int(deepfool_iterations), index

    def schedule(self, budget: int) -> list[int]:
        """Queries per round: round 0 then ``rounds`` steps, summing to ``budget`` exactly."""
        first = min(budget, max(1, int(round(self.seed_fraction * budget))))
        rest = budget - first
        step = rest // self.rounds
        steps = [step] * self.rounds
        if steps:
            steps[-1] += rest - step * self.rounds
        return [first, *[s for s in steps if s > 0]]

    def select(self, model: nn.Module, unlabelled: Tensor, labelled_x: Tensor, k: int,
               generator: torch.Generator) -> Tensor:
        """Indices into ``unlabelled`` of the ``k`` inputs the strategy picks (the substitute ``model`` scores)."""
        if self.strategy == "random":
            return torch.randperm(len(unlabelled), generator=generator)[:k]
        dev = self.device
        if self.strategy == "uncertainty":
            probs = predict_logits(model, unlabelled, device=dev).softmax(dim=1).cpu()
            return entropy(probs).topk(min(k, len(unlabelled))).indices
        if self.strategy == "k-center":
            feats = predict_logits(model, unlabelled, device=dev).softmax(dim=1).cpu()
            centers = predict_logits(model, labelled_x, device=dev).softmax(dim=1).cpu()
            return k_center_greedy(feats, centers, k, index=self.index)
        norms = deepfool_norms(model, unlabelled, max_iter=self.deepfool_iterations)
        if self.strategy == "dfal":
            return (-norms).topk(min(k, len(unlabelled))).indices
        keep = (-norms).topk(min(len(unlabelled), math.ceil(self.dfal_keep * k))).indices
        feats = predict_logits(model, unlabelled[keep], device=dev).softmax(dim=1).cpu()
        centers = predict_logits(model, labelled_x, device=dev).softmax(dim=1).cpu()
        return keep[k_center_greedy(feats, centers, k, index=self.index)]

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        pool = self.transfer_set
        if tuple(pool.shape[1:]) != tuple(victim.input_shape):
            raise ValueError(f"transfer set images have shape {tuple(pool.shape[1:])}, the victim expects "
                             f"{tuple(victim.input_shape)}")
        clone = self.make_clone(victim, generator=generator)
        init = copy.deepcopy(clone.state_dict())
        round_cfg = self.train_config if self.round_epochs is None else dataclasses.replace(
            self.train_config, epochs=self.round_epochs)
        queried = torch.zeros(len(pool), dtype=torch.bool)
        xs: list[Tensor] = []
        ys: list[Tensor] = []
        per_round: list[int] = []
        for r, k in enumerate(self.schedule(victim.remaining)):
            free = (~queried).nonzero().flatten()
            if len(free) == 0:
                break
            if r == 0:
                pick = free[torch.randperm(len(free), generator=generator)[:k]]
            else:
                cand = free
                if self.candidates is not None and len(free) > self.candidates:
                    cand = free[torch.randperm(len(free), generator=generator)[: self.candidates]]
                sub = copy.deepcopy(clone)
                sub.load_state_dict(init)
                training.train(sub, torch.cat(xs), self.targets(torch.cat(ys)), config=round_cfg,
                               generator=generator, device=self.device)
                pick = cand[self.select(sub, pool[cand], torch.cat(xs), k, generator)]
            queried[pick] = True
            xs.append(pool[pick])
            ys.append(self.query_all(victim, pool[pick]))
            per_round.append(len(pick))
        x, answers = torch.cat(xs), torch.cat(ys)
        history = training.train(clone, x, self.targets(answers), config=self.train_config, generator=generator,
                                 device=self.device, progress="train clone" if self.progress else False)
        info = {"strategy": self.strategy, "rounds_run": len(per_round) - 1, "queries_per_round": per_round,
                "pool_size": len(pool), "final_loss": history.loss[-1] if history.loss else None}
        return StealResult(clone=clone, queries=victim.used, transfer_x=x, transfer_y=answers, info=info)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "strategy": self.strategy, "rounds": self.rounds}
