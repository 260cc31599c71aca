"""Semi-supervised clone: the attacker also learns from transfer inputs it never paid to have answered.

The idea of S4L (Zhai, Oliver, Kolesnikov and Beyer, "S4L: Self-Supervised Semi-Supervised Learning", ICCV
2019): a classifier trained on few labelled examples gains from an unsupervised term on the unlabelled ones.
ModelGuard (Tang, Zhang, Chen, Zhang and Xu, "ModelGuard: Information-Theoretic Defense Against Model
Extraction Attacks", USENIX Security 2024, Sec. 6) uses such an attacker against perturbation defenses: the
perturbed answers are few and noisy, the unlabelled pool is free.

Here the unsupervised term is a consistency loss (the Π-model of Laine and Aila, "Temporal Ensembling for
Semi-Supervised Learning", ICLR 2017, Eq. 1, in the KL form of Miyato et al.'s VAT, TPAMI 2019), plus
S4L-MOAM's entropy minimisation (Grandvalet and Bengio, NeurIPS 2004) when ``entropy_weight > 0``. For a
labelled batch ``(x, ỹ)`` and an unlabelled batch ``u``:

    L = CE(ỹ, F_A(x)) + λ · KL( F_A(a₁(u)) ‖ F_A(a₂(u)) ) + μ · H(F_A(u))

with ``a₁, a₂`` two independent random augmentations (shift by up to ``shift`` pixels, Gaussian noise σ)
and the first prediction held fixed (no gradient through it), ramped up with ``λ(t) = λ·exp(−5(1 − t)²)``
over the first ``rampup`` fraction of the steps (Laine and Aila, Sec. 3.1, Appendix A). The labelled part is
Knockoff's random sample; the unlabelled part is the rest of the transfer pool (never queried). Training
runs through the one loop with the pool as an extra batch stream.

``self_supervised="rotation"`` is S4L-Rotation instead (Zhai et al., Sec. 3.1, following Gidaris, Singh and
Komodakis, "Unsupervised Representation Learning by Predicting Image Rotations", ICLR 2018): every unlabelled
image is rotated by 0°, 90°, 180° and 270°, and an extra linear head on the clone's penultimate features
predicts which rotation it got,

    L = CE(ỹ, F_A(x)) + w · (1/4) Σ_r CE(r, R(h(rot_r(u)))) + μ · H(F_A(u))

with ``h`` the clone's penultimate features and ``R`` the rotation head (trained jointly, then discarded; S4L
also rotates the labelled images, here only the unqueried pool is). Square inputs only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelsteal import training
from modelsteal.attacks.augment import gaussian_noise, random_crop_flip
from modelsteal.attacks.base import CloneJob, StealResult, register_attack
from modelsteal.attacks.knockoff import KnockoffNets
from modelsteal.blackbox import QueryBudget
from modelsteal.training import Loss, make_optimizer, soft_cross_entropy, unwrap

ROTATIONS = 4  # 0, 90, 180, 270 degrees
SELF_SUPERVISED = ("consistency", "rotation")


def rotation_batch(u: Tensor) -> tuple[Tensor, Tensor]:
    """Every image of ``u`` (N, C, H, H) rotated by k·90° for k = 0..3: ``(images (4N, C, H, H), k (4N,))``,
    the N rotations by k·90° in block k (``images[k·N + i] = rot90(u[i], k)``, counter-clockwise)."""
    images = torch.cat([torch.rot90(u, k, dims=(-2, -1)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=u.device).repeat_interleave(len(u))
    return images, labels


class RotationLoss(Loss):
    """S4L-Rotation: ``CE(y, f(x)) + w · CE(k, R(h(rot_k(u)))) + μ · H(f(u))`` over the four rotations ``k`` of an
    unlabelled stream batch, ``h`` the model's penultimate features and ``R`` the rotation ``head``."""

    streams = ("unlabelled",)

    def __init__(self, *, head: nn.Linear, weight: float, entropy_weight: float) -> None:
        self.head, self.weight, self.entropy_weight = head, weight, entropy_weight

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        net = unwrap(model)
        u = extra["unlabelled"]
        n = len(x)
        rotated, k = rotation_batch(u)
        h = net.penultimate(torch.cat([x, rotated]))
        logits = net.head(h)
        total = soft_cross_entropy(logits[:n], y)
        total = total + self.weight * F.cross_entropy(self.head(h[n:]), k)
        if self.entropy_weight > 0:
            z = logits[n:n + len(u)]  # the unrotated unlabelled block
            total = total - self.entropy_weight * (F.softmax(z, dim=1) * F.log_softmax(z, dim=1)).sum(1).mean()
        return total

    def __repr__(self) -> str:
        return f"RotationLoss(weight={self.weight:g}, entropy_weight={self.entropy_weight:g})"


class ConsistencyLoss(Loss):
    """``CE(y, f(x)) + λ(t) · KL(f(a₁(u)) ‖ f(a₂(u))) + μ · H(f(u))`` on a batch and an unlabelled stream batch."""

    streams = ("unlabelled",)

    def __init__(self, *, weight: float, entropy_weight: float, shift: int, noise: float, rampup_steps: int,
                 generator: torch.Generator) -> None:
        self.weight, self.entropy_weight = weight, entropy_weight
        self.shift, self.noise, self.rampup_steps, self.generator = shift, noise, rampup_steps, generator
        self.step = 0

    def augment(self, u: Tensor) -> Tensor:
        out = random_crop_flip(u, self.generator, padding=self.shift, flip=False) if self.shift else u
        return gaussian_noise(out, self.generator, sigma=self.noise) if self.noise > 0 else out

    def ramp(self) -> float:
        if self.rampup_steps <= 0 or self.step >= self.rampup_steps:
            return 1.0
        t = self.step / self.rampup_steps
        return math.exp(-5.0 * (1.0 - t) ** 2)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        u = extra["unlabelled"]
        n = len(x)
        logits = model(torch.cat([x, self.augment(u), self.augment(u)]))
        sup = soft_cross_entropy(logits[:n], y)
        z1, z2 = logits[n:n + len(u)], logits[n + len(u):]
        target = F.softmax(z1.detach(), dim=1)
        cons = F.kl_div(F.log_softmax(z2, dim=1), target, reduction="batchmean")
        total = sup + self.weight * self.ramp() * cons
        if self.entropy_weight > 0:
            p = F.softmax(z2, dim=1)
            total = total - self.entropy_weight * (p * F.log_softmax(z2, dim=1)).sum(1).mean()
        self.step += 1
        return total

    def __repr__(self) -> str:
        return f"ConsistencyLoss(weight={self.weight:g}, entropy_weight={self.entropy_weight:g})"


@register_attack("semi-supervised")
class SemiSupervisedClone(KnockoffNets):
    """Knockoff's random sample, answered, plus a consistency term on the unqueried rest of the pool.

    Example::

        attack = SemiSupervisedClone(transfer_set=x_pool, consistency=1.0)
        result = attack(api, budget=2_000)

    Args:
        transfer_set: the attacker's pool; ``budget`` of it is queried, the rest is the unlabelled stream.
        consistency: λ (>= 0; 0 is plain Knockoff).
        entropy_weight: μ (>= 0).
        shift: maximal random shift in pixels of each augmentation; ``noise``: its Gaussian σ.
        rampup: share of the training steps over which λ ramps up (Laine and Aila's schedule), in [0, 1].
        unlabelled: at most this many unqueried pool inputs form the stream (``None``: all of them).
        self_supervised: ``"consistency"`` (the Π-model term above) or ``"rotation"`` (S4L-Rotation: an extra
            head predicts the rotation of the unlabelled inputs; needs a clone with ``penultimate`` and ``head``,
            as every registry architecture has, and square inputs).
        rotation_weight: w, the rotation term's weight (>= 0; S4L uses 1).
        **base: options of :class:`~modelsteal.attacks.base.Attack`.
    """

    stackable = False  # its own loss and stream: trained alone
    reported_info = ("unlabelled",)

    def __init__(self, *, transfer_set: Tensor, consistency: float = 1.0, entropy_weight: float = 0.0,
                 shift: int = 2, noise: float = 0.05, rampup: float = 0.3, unlabelled: int | None = 20_000,
                 self_supervised: str = "consistency", rotation_weight: float = 1.0, **base: Any) -> None:
        super().__init__(transfer_set=transfer_set, **base)
        if self_supervised not in SELF_SUPERVISED:
            raise ValueError(f"self_supervised must be one of {', '.join(SELF_SUPERVISED)}, got {self_supervised!r}")
        if self_supervised == "rotation":
            shape = tuple(transfer_set.shape[1:])
            if len(shape) != 3 or shape[1] != shape[2]:
                raise ValueError(f"self_supervised rotation needs square images (C, H, H); the transfer set's "
                                 f"are {shape}")
            if not rotation_weight >= 0:
                raise ValueError(f"rotation_weight must be >= 0, got {rotation_weight}")
        self.self_supervised, self.rotation_weight = self_supervised, float(rotation_weight)
        if not consistency >= 0 or not entropy_weight >= 0:
            raise ValueError("consistency and entropy_weight must be >= 0")
        if shift < 0 or not noise >= 0 or not 0.0 <= rampup <= 1.0:
            raise ValueError("shift must be >= 0, noise >= 0 and rampup in [0, 1]")
        if unlabelled is not None and unlabelled < 1:
            raise ValueError(f"unlabelled must be >= 1 or none, got {unlabelled}")
        self.consistency, self.entropy_weight = float(consistency), float(entropy_weight)
        self.shift, self.noise, self.rampup, self.unlabelled = int(shift), float(noise), float(rampup), unlabelled

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Knockoff's draw (the same permutation), remembering the unqueried rest of the pool in random order."""
        perm = torch.randperm(len(self.transfer_set), generator=generator)
        self._unqueried = perm[n:]
        return perm[:n]

    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        job = self.collect(victim, generator=generator)
        rest = self._unqueried[: self.unlabelled] if self.unlabelled is not None else self._unqueried
        unsupervised = self.rotation_weight if self.self_supervised == "rotation" else self.consistency
        if len(rest) == 0 or (unsupervised == 0 and self.entropy_weight == 0):
            return job.result(job.train_alone())
        if self.self_supervised == "rotation":
            return self._train_rotation(job, rest, generator=generator)
        cfg = self.train_config
        steps = cfg.epochs * math.ceil(len(job.x) / cfg.batch_size)
        aug_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        loss = ConsistencyLoss(weight=self.consistency, entropy_weight=self.entropy_weight, shift=self.shift,
                               noise=self.noise, rampup_steps=int(self.rampup * steps), generator=aug_gen)
        history = training.train(job.clone, job.x, job.targets, config=cfg, loss=loss,
                                 streams={"unlabelled": self.transfer_set[rest]}, generator=generator,
                                 device=self.device, progress="train clone" if self.progress else False)
        result = job.result(history)
        result.info["unlabelled"] = len(rest)
        return result

    def _train_rotation(self, job: CloneJob, rest: Tensor, *, generator: torch.Generator) -> StealResult:
        """S4L-Rotation: the clone and a fresh rotation head trained together through the one loop, the head then
        dropped."""
        net = unwrap(job.clone)
        if not (hasattr(net, "penultimate") and isinstance(getattr(net, "head", None), nn.Linear)):
            raise ValueError("self_supervised rotation needs a clone with penultimate features and a linear head")
        head = nn.Linear(net.head.in_features, ROTATIONS).to(self.device)
        cfg = self.train_config
        loss = RotationLoss(head=head, weight=self.rotation_weight, entropy_weight=self.entropy_weight)
        history = training.train(job.clone, job.x, job.targets, config=cfg, loss=loss,
                                 optimizer=lambda _params: make_optimizer(nn.ModuleList([job.clone, head]), cfg),
                                 streams={"unlabelled": self.transfer_set[rest]}, generator=generator,
                                 device=self.device, progress="train clone" if self.progress else False)
        result = job.result(history)
        result.info["unlabelled"] = len(rest)
        return result
