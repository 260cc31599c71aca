"""Data-free model extraction with zeroth-order gradients through the black box: the machinery DFME and MAZE
share (:mod:`modelsteal.attacks.dfme`, :mod:`modelsteal.attacks.maze`).

A generator ``G`` maps noise ``z ∼ N(0, I)`` to pre-activations ``p = G(z)``; the queries are ``x = a(p)``,
``a(p) = (tanh(p) + 1) / 2`` (the victim's [0, 1] input range). ``G`` maximises the disagreement
``L(x) = D(F_V(x), F_A(x))`` between victim and clone, whose gradient through the black box is estimated by
forward differences along ``m`` random unit directions ``u_j`` in pre-activation space (Truong et al., CVPR
2021, Eq. 5; Kariyappa et al., CVPR 2021, Eq. 6):

    ∇_p L ≈ (d / m) Σ_j [L(a(p + ε u_j)) − L(a(p))] / ε · u_j          (d = dimension of p)

so one generator step on a batch of ``B`` costs ``B (m + 1)`` queries — every probe is a query. The clone then
takes ``clone_steps`` steps on fresh generator samples (``B`` queries each) through the one training loop
(:func:`~modelsteal.training.train`, one epoch of one batch with a persistent optimiser), and so does the
generator (its loss object returns ``⟨p, ĝ⟩``, whose gradient in ``G``'s parameters is the estimate pushed
back through ``G``). The budget is spent exactly: after the last full generator step the rest goes to clone
steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelsteal import training
from modelsteal.attacks.base import Attack, StealResult
from modelsteal.blackbox import QueryBudget
from modelsteal.models import build_seeded
from modelsteal.training import Loss, TrainConfig

DISAGREEMENTS = ("l1", "kl")


class Generator(nn.Module):
    """DFME's generator (Truong et al., CVPR 2021, Sec. 4; "GeneratorA" of the authors' ``dfme/network/gan.py``,
    from Fang et al.'s DFAD): ``z`` → linear → ``(128, H/4, W/4)`` → BN → ×2 upsample → conv 3×3 (128) → BN →
    LeakyReLU(0.2) → ×2 upsample → conv 3×3 (64) → BN → LeakyReLU(0.2) → conv 3×3 (C) → BN (no affine): the
    pre-activations ``p``; ``forward`` applies ``a(p) = (tanh(p) + 1) / 2``. ``width`` scales the channels
    (128 and 64 in the paper; smaller ones make CPU runs affordable)."""

    def __init__(self, *, nz: int, shape: tuple[int, int, int], width: int = 128) -> None:
        super().__init__()
        c, h, w = shape
        if h % 4 or w % 4:
            raise ValueError(f"the generator makes images whose height and width are multiples of 4; the target "
                             f"takes {c}x{h}x{w}")
        self.nz, self.shape, self.width = nz, shape, width
        half = max(1, width // 2)
        self.fc = nn.Linear(nz, width * (h // 4) * (w // 4))
        self.body = nn.Sequential(
            nn.BatchNorm2d(width), nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width), nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2), nn.Conv2d(width, half, 3, padding=1),
            nn.BatchNorm2d(half), nn.LeakyReLU(0.2), nn.Conv2d(half, c, 3, padding=1), nn.BatchNorm2d(c, affine=False))

    def pre(self, z: Tensor) -> Tensor:
        c, h, w = self.shape
        return self.body(self.fc(z).view(len(z), self.width, h // 4, w // 4))

    @staticmethod
    def activate(p: Tensor) -> Tensor:
        return (torch.tanh(p) + 1) / 2

    def forward(self, z: Tensor) -> Tensor:
        return self.activate(self.pre(z))


def corrected_logits(probs: Tensor) -> Tensor:
    """DFME's logit recovery from probabilities (Sec. 3.3): ``log p − mean_k log p`` (``p`` clamped at 1e-8)."""
    lp = probs.clamp_min(1e-8).log()
    return lp - lp.mean(dim=1, keepdim=True)


def disagreement(kind: str, victim_probs: Tensor, clone_logits: Tensor) -> Tensor:
    """Per-row disagreement ``(N,)``: ``l1`` mean |clone logits − corrected victim logits| (DFME, Eq. 3),
    ``kl`` KL(victim ‖ clone) (MAZE, Eq. 3)."""
    if kind == "l1":
        return (clone_logits - corrected_logits(victim_probs)).abs().mean(dim=1)
    p = victim_probs.clamp_min(1e-8)
    return (p * (p.log() - F.log_softmax(clone_logits, dim=1))).sum(dim=1)


class L1Logits(Loss):
    """The DFME clone's loss: mean absolute difference between clone logits and the corrected victim logits."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        return F.l1_loss(model(x), y)


class ZerothOrderGeneratorLoss(Loss):
    """The generator's step: forward differences of ``−disagreement`` through the black box (every probe a
    query); returns ``⟨p, ĝ⟩`` so that the loop's backward pass carries the estimate ``ĝ`` into ``G``."""

    def __init__(self, *, victim: QueryBudget, clone: nn.Module, kind: str, directions: int, epsilon: float,
                 generator: torch.Generator, query: Any) -> None:
        self.victim, self.clone, self.kind, self.m, self.eps = victim, clone, kind, directions, epsilon
        self.generator, self.query = generator, query  # query(victim, x) -> answers
        self.queries = 0

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        pre = model.pre(x)  # type: ignore[attr-defined]
        n, dim = len(pre), pre[0].numel()
        with torch.no_grad():
            u = torch.randn(n, self.m, dim, generator=self.generator).to(pre.device)
            u = u / u.norm(dim=2, keepdim=True).clamp_min(1e-12)
            u = torch.cat([u, torch.zeros(n, 1, dim, device=pre.device)], dim=1)  # the last one: p itself
            points = (pre.detach().flatten(1)[:, None] + self.eps * u).view(n * (self.m + 1), *pre.shape[1:])
            images = Generator.activate(points)
            answers = self.query(self.victim, images).to(pre.device)
            self.queries += len(images)
            was = self.clone.training
            self.clone.eval()
            logits = training.predict_logits(self.clone, images)
            self.clone.train(was)
            values = -disagreement(self.kind, answers, logits).view(n, self.m + 1)  # the generator minimises -D
            diff = (values[:, :-1] - values[:, -1:]) / self.eps
            grad = (dim * diff[:, :, None] * u[:, :-1]).mean(dim=1) / n
        return (pre.flatten(1) * grad).sum()


class DataFreeAttack(Attack):
    """Generator against clone with zeroth-order gradients (the shared loop of DFME and MAZE).

    Args:
        disagreement: ``l1`` (DFME) or ``kl`` (MAZE).
        batch_size: ``B``, generator samples per step.
        directions: ``m``, random directions per sample of the gradient estimate.
        epsilon: the finite-difference step ``ε``.
        generator_steps, clone_steps: steps of each per iteration (``n_G``, ``n_C``).
        replay_steps: clone steps on a batch drawn from every earlier query (MAZE's experience replay; 0: none).
        nz: the generator's noise size; ``generator_width``: its channels (paper 128); ``generator_lr``;
            ``generator_optimizer``: ``adam`` or ``sgd``.
        clone_lr, clone_momentum, clone_weight_decay: the clone's SGD (``train``'s settings are not used).
        **base: options of :class:`~modelsteal.attacks.base.Attack`.
    """

    data_free: ClassVar[bool] = True
    reported_info = ("generator_steps", "probe_queries", "clone_queries")

    def __init__(self, *, disagreement: str = "l1", batch_size: int = 64, directions: int = 1, epsilon: float = 1e-3,
                 generator_steps: int = 1, clone_steps: int = 5, replay_steps: int = 0, nz: int = 256,
                 generator_width: int = 128,
                 generator_lr: float = 1e-4, generator_optimizer: str = "adam", clone_lr: float = 0.1,
                 clone_momentum: float = 0.9, clone_weight_decay: float = 5e-4, **base: Any) -> None:
        super().__init__(**base)
        if disagreement not in DISAGREEMENTS:
            raise ValueError(f"unknown disagreement {disagreement!r}; known: {', '.join(DISAGREEMENTS)}")
        ints = {"batch_size": batch_size, "directions": directions, "generator_steps": generator_steps,
                "clone_steps": clone_steps, "nz": nz, "generator_width": generator_width}
        for k, v in ints.items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{k} must be an integer >= 1, got {v!r}")
        if replay_steps < 0:
            raise ValueError(f"replay_steps must be >= 0, got {replay_steps}")
        if not (epsilon > 0 and math.isfinite(epsilon)) or not generator_lr > 0 or not clone_lr > 0:
            raise ValueError("epsilon, generator_lr and clone_lr must be finite numbers > 0")
        if generator_optimizer not in ("adam", "sgd"):
            raise ValueError(f"generator_optimizer must be 'adam' or 'sgd', got {generator_optimizer!r}")
        self.kind, self.batch_size, self.m, self.epsilon = disagreement, batch_size, directions, float(epsilon)
        self.generator_steps, self.clone_steps, self.replay_steps = generator_steps, clone_steps, int(replay_steps)
        self.nz, self.generator_lr, self.generator_optimizer = nz, float(generator_lr), generator_optimizer
        self.generator_width = generator_width
        self.clone_lr, self.clone_momentum = float(clone_lr), float(clone_momentum)
        self.clone_weight_decay = float(clone_weight_decay)

    @property
    def step_queries(self) -> int:
        """Queries of one generator step: ``B (m + 1)``."""
        return self.batch_size * (self.m + 1)

    def check(self, victim: QueryBudget) -> None:
        """Refuse, before any query, a target the generator cannot draw for or a budget below one step."""
        shape = tuple(victim.input_shape)
        if len(shape) != 3:
            raise ValueError(f"{self.name} generates images (C, H, W); the target takes inputs of shape {shape}")
        Generator(nz=self.nz, shape=shape)  # type: ignore[arg-type]  (H, W multiples of 4, else ValueError)
        if victim.remaining < self.step_queries:
            raise ValueError(f"{self.name}: a budget of {victim.remaining} queries is smaller than one generator "
                             f"step's {self.step_queries} (batch_size {self.batch_size} x (directions {self.m} + 1))")

    def _clone_targets(self, answers: Tensor) -> Tensor:
        if self.labels == "argmax":
            return answers.argmax(dim=1)
        return corrected_logits(answers) if self.kind == "l1" else answers

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        self.check(victim)
        clone = self.make_clone(victim, generator=generator)
        gseed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        shape = tuple(victim.input_shape)
        gen = build_seeded(lambda: Generator(nz=self.nz, shape=shape, width=self.generator_width),  # type: ignore[arg-type]
                           seed=gseed).to(self.device)
        opt_g = (torch.optim.Adam(gen.parameters(), lr=self.generator_lr) if self.generator_optimizer == "adam" else
                 torch.optim.SGD(gen.parameters(), lr=self.generator_lr, momentum=0.9, weight_decay=5e-4))
        opt_c = torch.optim.SGD(clone.parameters(), lr=self.clone_lr, momentum=self.clone_momentum,
                                weight_decay=self.clone_weight_decay)
        noise = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        zo = ZerothOrderGeneratorLoss(victim=victim, clone=clone, kind=self.kind, directions=self.m,
                                      epsilon=self.epsilon, generator=noise, query=self.query_all)
        clone_loss = L1Logits() if self.kind == "l1" and self.labels == "soft" else None
        one = TrainConfig(epochs=1, batch_size=self.batch_size)
        replay_x: list[Tensor] = []
        replay_y: list[Tensor] = []
        steps = clone_queries = 0

        def clone_step(x: Tensor, y: Tensor) -> None:
            training.train(clone, x, y, config=TrainConfig(epochs=1, batch_size=len(x)), loss=clone_loss,
                           optimizer=opt_c, generator=noise, device=self.device)

        while victim.remaining > 0:
            for _ in range(self.generator_steps):
                if victim.remaining < self.step_queries:
                    break
                z = torch.randn(self.batch_size, self.nz, generator=noise)
                training.train(gen, z, torch.zeros(len(z)), config=one, loss=zo, optimizer=opt_g, generator=noise,
                               device=self.device)
                steps += 1
            for _ in range(self.clone_steps):
                n = min(self.batch_size, victim.remaining)
                if n == 0:
                    break
                with torch.no_grad():  # batch statistics, as the authors' student steps use G (train mode)
                    gen.train()
                    x = gen(torch.randn(n, self.nz, generator=noise).to(self.device)).cpu()
                answers = self.query_all(victim, x)
                clone_queries += n
                y = self._clone_targets(answers)
                clone_step(x, y)
                if self.replay_steps:
                    replay_x.append(x)
                    replay_y.append(y)
            for _ in range(self.replay_steps if replay_x else 0):
                allx, ally = torch.cat(replay_x), torch.cat(replay_y)
                idx = torch.randint(0, len(allx), (min(self.batch_size, len(allx)),), generator=noise)
                clone_step(allx[idx], ally[idx])
        info = {"generator_steps": steps, "probe_queries": zo.queries, "clone_queries": clone_queries,
                "step_queries": self.step_queries}
        return StealResult(clone=clone.eval(), queries=victim.used, info=info)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "disagreement": self.kind, "batch_size": self.batch_size, "directions": self.m}
