"""Knockoff Nets with the adaptive sampling strategy (Orekondy, Schiele and Fritz, CVPR 2019, Sec. 4.1.2).

The attacker holds a labelled transfer set whose classes form a coarse→fine hierarchy (a tree whose
leaves are the transfer-set classes). Querying is a bandit problem: at step ``t`` an action — a path from
the root to a leaf class — is sampled from per-node softmax policies ``π = softmax(H)``, an image of the
leaf class is drawn (without replacement) and sent to the victim, the knockoff ``F_A`` is updated online
with the answer ``y_t``, and the reward ``r_t`` updates every preference on the path by the gradient-bandit
rule (Sutton and Barto, *Reinforcement Learning*, 2nd ed., Sec. 2.8; the policy is
:class:`~modelsteal.attacks.bandit.ActionTree`)::

    H_a ← H_a + α (r_t − r̄_t) (1[a = a_t] − π_a)        for every child a of each node on the path

with ``r̄_t`` the mean of the rewards before ``t``. The rewards of the paper are

- certainty ``R^cert = y_{t,k1} − y_{t,k2}``, the margin of the top-2 victim probabilities;
- diversity ``R^div = Σ_k max(0, y_{t,k} − ȳ_k)`` with ``ȳ`` the mean of the last ``Δ`` answers;
- loss ``R^L = −Σ_k y_{t,k} log F_A(x_t)_k``, the cross-entropy of the knockoff's prediction (before its
  update) against the answer;

each standardised by its running mean and standard deviation before they are summed.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from modelsteal import training
from modelsteal.attacks.bandit import ROOT, ActionTree, RunningStats
from modelsteal.attacks.base import Attack, StealResult, register_attack
from modelsteal.blackbox import QueryBudget
from modelsteal.training import predict_logits

REWARDS = ("all", "certainty", "diversity", "loss")
_RunningStats = RunningStats  # its name here before the bandit moved to modelsteal.attacks.bandit


@register_attack("knockoff-adaptive")
class AdaptiveKnockoff(Attack):
    """Knockoff Nets, adaptive strategy (Orekondy et al., CVPR 2019, Sec. 4.1.2).

    Options (keyword-only) besides the :class:`Attack` ones (``clone``, ``train``, ``labels``, ``device``):

    - ``transfer_set``: the attacker's images ``(N, *input_shape)``; ``transfer_labels``: their classes
      ``(N,)`` (the leaves of the action tree; required);
    - ``hierarchy``: optional mapping ``node → parent`` (e.g. fine class → coarse class); default flat;
    - ``reward``: ``"all"`` (sum of the three standardised rewards), ``"certainty"``, ``"diversity"`` or
      ``"loss"``;
    - ``policy_lr``: α of the gradient-bandit update (default 0.1);
    - ``policy_batch_size``: B actions sampled per step (default 32). The paper takes one action per step;
      here the policy is held fixed for B draws, the B answers are queried in one batch, the knockoff takes
      one online training pass over them, and ``H`` is updated once with the batch mean of the per-action
      gradient-bandit terms. The baseline ``r̄`` is the mean of all earlier rewards (of the batch itself
      for the first step);
    - ``diversity_window``: Δ, how many previous answers ``ȳ`` averages (default 256);
    - ``online_epochs``: passes of :func:`modelsteal.training.train` over each answered batch (default 1).

    Images are drawn without replacement; a class with no images left leaves the policy. The run stops
    when the budget or the transfer set is spent. Finally a fresh clone — the same initial weights the
    online knockoff started from — is trained on the whole collected transfer set with ``train`` (as the
    random strategy does), so the strategies are compared at equal budget and training.

    ``info`` holds the final class probabilities ``policy`` (ordered as ``classes``; from ``H`` alone,
    ignoring exhausted classes), the preferences (the root's under ``"<root>"``),
    the per-class action counts, the queried indices and the mean reward per step.

    Example::

        attack = AdaptiveKnockoff(transfer_set=x_pool, transfer_labels=y_pool, reward="all")
        result = attack(api, budget=50_000)
    """

    #: what a sweep's record keeps of ``info`` (in the point's JSON, not in ``results.csv``): where the queries went
    reported_info: ClassVar[tuple[str, ...]] = ("classes", "policy", "action_counts")

    def __init__(
        self,
        *,
        transfer_set: Tensor,
        transfer_labels: Tensor,
        hierarchy: Mapping[Hashable, Hashable] | None = None,
        reward: str = "all",
        policy_lr: float = 0.1,
        policy_batch_size: int = 32,
        diversity_window: int = 256,
        online_epochs: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(transfer_set, Tensor) or transfer_set.ndim < 2 or len(transfer_set) == 0:
            raise ValueError("transfer_set must be a non-empty tensor of inputs (N, *input_shape)")
        labels = torch.as_tensor(transfer_labels)
        if labels.shape != (len(transfer_set),):
            raise ValueError(f"transfer_labels must have shape ({len(transfer_set)},), "
                             f"got {tuple(labels.shape)}")
        if labels.is_floating_point():
            raise ValueError("transfer_labels must hold integer class ids")
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; known: {', '.join(REWARDS)}")
        if not policy_lr > 0:
            raise ValueError(f"policy_lr must be > 0, got {policy_lr}")
        if policy_batch_size < 1 or diversity_window < 1 or online_epochs < 0:
            raise ValueError("policy_batch_size and diversity_window must be >= 1, online_epochs >= 0")
        self.transfer_set = transfer_set.detach().float().cpu()
        self.transfer_labels = labels.long().cpu()
        self.hierarchy = dict(hierarchy) if hierarchy is not None else None
        self.classes = sorted(int(c) for c in self.transfer_labels.unique())
        ActionTree(self.classes, self.hierarchy)  # validate the hierarchy now, not after queries
        self.reward = reward
        self.policy_lr = float(policy_lr)
        self.policy_batch_size = policy_batch_size
        self.diversity_window = diversity_window
        self.online_epochs = online_epochs

    def _draw(self, tree: ActionTree, pools: list[Tensor], cursor: list[int], n: int,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Sample ``n`` leaves from the current policy and take the next unqueried image of each.

        Classes leave the policy as they run out of images. Returns ``(leaves, transfer-set indices)``.
        """
        leaves: list[Tensor] = []
        indices: list[Tensor] = []
        while n > 0 and bool(tree.available.any()):
            probs = tree.leaf_probabilities()
            draw = torch.multinomial(probs, n, replacement=True, generator=generator)
            counts = torch.bincount(draw, minlength=len(tree.classes))
            for leaf in counts.nonzero().flatten().tolist():
                left = len(pools[leaf]) - cursor[leaf]
                take = min(int(counts[leaf]), left)
                leaves.append(torch.full((take,), leaf, dtype=torch.long))
                indices.append(pools[leaf][cursor[leaf]:cursor[leaf] + take])
                cursor[leaf] += take
                n -= take
                if take == left:
                    tree.available[leaf] = False
        if not leaves:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        drawn, images = torch.cat(leaves), torch.cat(indices)
        shuffled = drawn[torch.randperm(len(drawn), generator=generator)]
        # the k-th draw of a class in the shuffled batch gets that class's k-th image (cursor order)
        out = torch.empty_like(images)
        out[torch.sort(shuffled, stable=True).indices] = images[torch.sort(drawn, stable=True).indices]
        return shuffled, out

    def _rewards(self, y: Tensor, logits: Tensor, history: Tensor,
                 stats: dict[str, RunningStats]) -> Tensor:
        top2 = y.topk(2, dim=1).values
        ybar = history.mean(dim=0) if len(history) else y.mean(dim=0)
        raw = {
            "certainty": top2[:, 0] - top2[:, 1],
            "diversity": (y - ybar).clamp_min(0).sum(dim=1),
            "loss": -(y * torch.log_softmax(logits, dim=1)).sum(dim=1),
        }
        names = ("certainty", "diversity", "loss") if self.reward == "all" else (self.reward,)
        total = torch.zeros(len(y), dtype=torch.float64)
        for name in names:
            stats[name].add(raw[name])
            total += stats[name].standardize(raw[name])
        return total

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        if tuple(self.transfer_set.shape[1:]) != tuple(victim.input_shape):
            raise ValueError(f"transfer_set rows have shape {tuple(self.transfer_set.shape[1:])}; the victim "
                             f"takes {tuple(victim.input_shape)}")
        tree = ActionTree(self.classes, self.hierarchy)
        pools = [idx[torch.randperm(len(idx), generator=generator)]
                 for idx in ((self.transfer_labels == c).nonzero().flatten() for c in self.classes)]
        cursor = [0] * len(pools)
        clone = self.make_clone(victim, generator=generator)
        online = copy.deepcopy(clone)
        online_cfg = dataclasses.replace(self.train_config, epochs=self.online_epochs, lr_step=None)
        stats = {name: RunningStats() for name in ("certainty", "diversity", "loss")}
        reward_sum, reward_n = 0.0, 0
        history = torch.empty(0, victim.num_classes)
        queried: list[Tensor] = []
        answers: list[Tensor] = []
        mean_rewards: list[float] = []
        action_counts = torch.zeros(len(self.classes), dtype=torch.long)

        while victim.remaining > 0 and bool(tree.available.any()):
            b = min(self.policy_batch_size, victim.remaining)
            policies = tree.policies()
            leaves, idx_t = self._draw(tree, pools, cursor, b, generator)
            xb = self.transfer_set[idx_t]
            y = self.query_all(victim, xb).float()
            logits = predict_logits(online, xb, device=self.device).cpu().float()
            r = self._rewards(y, logits, history, stats)
            baseline = reward_sum / reward_n if reward_n else float(r.mean())
            tree.update(leaves, r - baseline, policies, lr=self.policy_lr)
            reward_sum += float(r.sum())
            reward_n += len(r)
            history = torch.cat([history, y])[-self.diversity_window:]
            if self.online_epochs > 0:
                cfg = dataclasses.replace(online_cfg, batch_size=len(xb))
                training.train(online, xb, self.targets(y), config=cfg, generator=generator,
                                 device=self.device)
            queried.append(idx_t)
            answers.append(y)
            mean_rewards.append(float(r.mean()))
            action_counts += torch.bincount(leaves, minlength=len(self.classes))

        indices = torch.cat(queried)
        x = self.transfer_set[indices]
        y = torch.cat(answers)
        training.train(clone, x, self.targets(y), config=self.train_config, generator=generator,
                         device=self.device, progress="knockoff" if self.progress else False)
        info = {
            "classes": list(self.classes),
            "policy": tree.leaf_probabilities(tree.policies(masked=False)),
            "preferences": {("<root>" if n is ROOT else n): h.clone() for n, h in tree.H.items()},
            "action_counts": action_counts,
            "indices": indices,
            "mean_reward": mean_rewards,
        }
        return StealResult(clone=clone, queries=victim.used, transfer_x=x, transfer_y=y, info=info)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "reward": self.reward, "policy_lr": self.policy_lr,
                "policy_batch_size": self.policy_batch_size, "hierarchical": self.hierarchy is not None}
