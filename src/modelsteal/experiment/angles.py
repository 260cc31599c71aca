"""Angular deviation of the attacker's gradient under white-box MAD (Orekondy et al., ICLR 2020, Sec. 5.2.3,
Fig. 6, Fig. 7 and Fig. A5).

The paper's experiment: an attacker trains its model with online SGD (batch size 1, lr 0.001), querying one
fresh image per step; the defender crafts ``ỹ_t`` with MAD *knowing the attacker's current parameters*
(the surrogate is the attacker's model itself, ``G`` over all its parameters), and the angle

    θ_t = arccos( u·a / (||u|| ||a||) ),   u = ∇_w L(w_t, y_t),   a = ∇_w L(w_t, ỹ_t)

between the true and the poisoned gradient is recorded at every step, together with the attacker's test
loss during training. The angle is computed from the Gram matrix ``G Gᵀ`` at ``w_t`` (see
:func:`~modelsteal.metrics.angular_deviation`), before the step is taken.

A sweep config drives it (``modelsteal angles CONFIG --out DIR``): the victim and transfer set as in a
sweep; the first defense's ``strengths`` are the ε values (its options are passed to MAD, e.g.
``{norm: l1, jacobian: all}``); the first attack's ``clone`` and ``train`` give the attacker's
architecture and optimiser (``lr``, ``momentum``, ``batch_size``); the first budget is the number of
queried images ``B`` (distinct, drawn without replacement from the transfer pool, cycling if it is
smaller), i.e. ``B / batch_size`` online steps.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal.defenses.mad import MAD
from modelsteal.metrics import angular_deviation
from modelsteal.models import build_model
from modelsteal.training import Callback, Loss, TrainConfig, TrainState, predict_logits, soft_cross_entropy, train


@dataclass
class AngleTrace:
    """One online run at one ε: the per-query angles (degrees) and the test loss curve."""

    epsilon: float
    angles: Tensor  # (B,)
    loss_steps: list[int]
    test_loss: list[float]

    def summary(self) -> dict[str, Any]:
        a = self.angles
        return {
            "epsilon": self.epsilon,
            "queries": len(a),
            "angle_mean": float(a.mean()),
            "angle_median": float(a.median()),
            "angle_p90": float(a.quantile(0.9)),
            "angle_max": float(a.max()),
            "frac_over_90": float((a > 90).float().mean()),
            "test_loss_start": self.test_loss[0],
            "test_loss_end": self.test_loss[-1],
        }


@torch.no_grad()
def _test_loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float(soft_cross_entropy(predict_logits(model, x), y))


class WhiteBoxMADLoss(Loss):
    """The attacker's online loss under white-box MAD, recording the angle ``θ_t`` of every query.

    For a batch ``x`` at parameters ``w_t``: the victim's posterior ``y``, MAD's answer ``ỹ`` crafted on the
    attacker's current model (the defense's surrogate *is* the model), the angle between ``∇_w L(w_t, y)`` and
    ``∇_w L(w_t, ỹ)`` before the step, then ``CE(F(x), ỹ)`` for the step itself.
    """

    def __init__(self, victim: nn.Module, defense: MAD) -> None:
        self.victim, self.defense, self.angles = victim, defense, []

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Any) -> Tensor:
        with torch.no_grad():
            probs = torch.softmax(predict_logits(self.victim, x), dim=1)
        model.eval()
        y_tilde = self.defense(x, probs)
        self.angles.append(angular_deviation(model, x, probs, y_tilde, jacobian="all"))
        model.train()
        return soft_cross_entropy(model(x), y_tilde)


class TestLossTrace(Callback):
    """The attacker's test loss every ``every`` online steps and after the last one (Fig. 7)."""

    def __init__(self, x_test: Tensor, y_test: Tensor, *, every: int, total_steps: int) -> None:
        self.x_test, self.y_test, self.every, self.total = x_test, y_test, every, total_steps
        self.steps: list[int] = []
        self.losses: list[float] = []

    def on_train_begin(self, state: TrainState) -> None:
        self.steps, self.losses = [0], [_test_loss(state.model, self.x_test, self.y_test)]

    def on_step(self, state: TrainState) -> None:
        if state.step % self.every == 0 or state.step == self.total:
            self.steps.append(state.step)
            self.losses.append(_test_loss(state.model, self.x_test, self.y_test))


def online_angles(
    victim: nn.Module,
    pool: Tensor,
    *,
    epsilon: float,
    queries: int,
    x_test: Tensor,
    y_test: Tensor,
    clone: str = "lenet",
    train_config: TrainConfig | None = None,
    defense_options: dict[str, Any] | None = None,
    eval_every: int = 100,
    seed: int = 0,
) -> AngleTrace:
    """Train a fresh ``clone`` online on white-box-MAD answers for ``queries`` images; record every angle.

    ``train_config`` supplies ``lr``, ``momentum``, ``optimizer`` and ``batch_size`` (paper: SGD, lr 0.001,
    batch 1); its ``epochs`` is ignored (one pass over ``queries`` images, in a seeded order). ``defense_options``
    go to :class:`MAD` (default ``norm="l1"``, ``jacobian="all"``); its surrogate is the attacker's model at each
    step. The steps run through :func:`~modelsteal.training.train` with :class:`WhiteBoxMADLoss` as the loss and
    :class:`TestLossTrace` as a callback.
    """
    if queries < 1:
        raise ValueError(f"queries must be >= 1, got {queries}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    cfg = train_config if train_config is not None else TrainConfig(lr=0.001, momentum=0.0, batch_size=1)
    g = torch.Generator().manual_seed(seed)
    shape = tuple(pool.shape[1:])
    channels = shape[0] if len(shape) == 3 else None
    model = build_model(
        clone,
        input_shape=shape,
        num_classes=int(predict_logits(victim, pool[:1]).shape[1]),
        mean=[0.5] * channels if channels else None,
        std=[0.5] * channels if channels else None,
        seed=seed,
    )
    opts = {"norm": "l1", "jacobian": "all", **(defense_options or {})}
    loss = WhiteBoxMADLoss(victim, MAD(surrogate=model, epsilon=epsilon, **opts))
    reps = math.ceil(queries / len(pool))
    order = torch.cat([torch.randperm(len(pool), generator=g) for _ in range(reps)])[:queries]
    x = pool[order]
    trace = TestLossTrace(x_test, y_test, every=eval_every, total_steps=math.ceil(queries / cfg.batch_size))
    one_pass = replace(cfg, epochs=1)
    # y is unused by the loss (the targets are MAD's answers, made at each step); the rows go in drawn order
    train(model, x, torch.zeros(len(x), dtype=torch.long), config=one_pass, loss=loss, shuffle=False, generator=g,
          callbacks=[trace])
    return AngleTrace(epsilon=float(epsilon), angles=torch.cat(loss.angles), loss_steps=trace.steps,
                      test_loss=trace.losses)


def write_angles(traces: Sequence[AngleTrace], out_dir: str | Path) -> list[Path]:
    """``angles.csv`` (one row per query), ``angles-summary.csv`` (one row per ε), ``test-loss.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "angles.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epsilon", "query", "angle_deg"])
        for t in traces:
            w.writerows((t.epsilon, i, f"{a:.4f}") for i, a in enumerate(t.angles.tolist()))
    rows = [t.summary() for t in traces]
    with open(out / "angles-summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(out / "test-loss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epsilon", "step", "test_loss"])
        for t in traces:
            w.writerows((t.epsilon, s, f"{v:.5f}") for s, v in zip(t.loss_steps, t.test_loss, strict=True))
    return [out / "angles.csv", out / "angles-summary.csv", out / "test-loss.csv"]


def plot_angles(traces: Sequence[AngleTrace], out_dir: str | Path, *, title: str = "") -> list[Path]:
    """``fig6-angles.png`` (histogram of deviations per ε) and ``fig7-test-loss.png`` (test loss per ε)."""
    from modelsteal.experiment.plots import load_pyplot, save_figure

    plt = load_pyplot()
    out = Path(out_dir)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    bins = torch.linspace(0, 180, 61).tolist()
    for t in traces:
        ax.hist(t.angles.numpy(), bins=bins, alpha=0.45, label=f"ε={t.epsilon:g} (mean {float(t.angles.mean()):.1f}°)")
    ax.set(xlabel="angular deviation θ (degrees)", ylabel="queries", title=f"{title} white-box MAD: θ(u, a)".strip())
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths = [save_figure(fig, out / "fig6-angles.png")]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for t in traces:
        ax.plot(t.loss_steps, t.test_loss, label=f"ε={t.epsilon:g}")
    ax.set(xlabel="online SGD step", ylabel="attacker test loss", title=f"{title} test loss during training".strip())
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return paths + [save_figure(fig, out / "fig7-test-loss.png")]
