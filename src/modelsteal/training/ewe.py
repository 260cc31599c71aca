"""Entangled Watermark Embedding (Jia et al., *Entangled Watermarks as a Defense against Model Extraction*,
USENIX Security 2021, Algorithm 1), and the plain watermark it improves on.

A watermark is a set of *triggers* — images of a source class ``c_S`` stamped with a small square pattern —
that the victim learns to label as a target class ``c_T``. A plain (backdoor) watermark learns the triggers
with its own neurons, so a clone distilled from the victim's answers on task data never sees that behaviour.
EWE *entangles* the triggers with real ``c_T`` data in the hidden layers by maximising the soft nearest
neighbour loss (SNNL, Frosst et al., ICML 2019) between the two groups, so whatever the clone learns about
``c_T`` carries the watermark along.

Algorithm 1 here:

1. warm-up: ``warmup_epochs`` of plain task training (the trigger position needs a trained representation);
2. ``X_w`` = up to ``num_triggers`` training images of ``c_S``; the trigger position is where stamping the
   pattern raises ``SNNL([X_w, X_cT], Y', T)`` most to first order (lines 2–3: the window sums of
   ``∇_{X_w} SNNL · (pattern − X_w)``, the lecture's ``conv(∇SNNL, trigger)`` where the image under the
   patch is dark);
3. stamp the pattern there (line 4) and, optionally, ``fgsm_steps`` FGSM steps of size ``fgsm_eps`` towards
   ``c_T`` and up the SNNL (lines 5–6), re-stamping after each;
4. train (lines 8–13): every ``every``-th step is a watermark step on ``[X_w, X_cT]`` labelled ``c_T`` with
   ``CE − snnl_weight · Σ_l SNNL(h_l, Y', T_l)`` (:class:`EntangledLoss`), the other steps are task steps
   with cross-entropy; each watermark step also moves each temperature ``T_l`` *down* the SNNL's gradient
   (line 14: the model entangles at the temperature where the groups look most separated).

``snnl_weight=0`` is the plain watermark baseline: the same triggers, the same alternation, CE only.
The watermark's facts (triggers, classes, position, the victim's and the warm-up model's success rates) are
in ``history.info["watermark"]`` and on the returned model as ``model.watermark``; checkpoints record them, so
:class:`~modelsteal.ownership.watermark.EWEVerifier` is built from the victim's checkpoint alone.

Example::

    recipe = make_recipe("ewe", source_class=8, target_class=0, snnl_weight=2.0, every=2)
    model, history = recipe.fit(model, data, config=TrainConfig(epochs=10), generator=g, device="cpu")
    history.info["watermark"]["victim_rate"]      # the victim's watermark success rate on its triggers
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelsteal.data import DatasetSplits
from modelsteal.training.loop import Batches, ShuffledBatches, TrainConfig, TrainHistory, _Stream, predict_logits, train
from modelsteal.training.losses import Loss, soft_cross_entropy
from modelsteal.training.recipes import Recipe, register_recipe

WATERMARK_KEY = "watermark"  # the per-batch extra marking a watermark step: 1 for a trigger row, 0 for a c_T row
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid)


# -- the soft nearest neighbour loss -------------------------------------------------------------------
def snnl(h: Tensor, groups: Tensor, temperature: Tensor | float, *, metric: str = "euclidean") -> Tensor:
    """Soft nearest neighbour loss (Frosst, Papernot & Hinton, ICML 2019, Eq. 1) of representations ``h``
    ``(N, ...)`` (flattened per row) with group labels ``groups`` ``(N,)`` at temperature ``T > 0``:

        SNNL = −(1/N) Σ_i log [ Σ_{j≠i, g_j=g_i} exp(−‖h_i−h_j‖²/T) / Σ_{k≠i} exp(−‖h_i−h_k‖²/T) ]

    High when the groups are entangled (a point's neighbours are as often of the other group), near 0 when
    they are apart. Computed with log-sum-exp, so no distance underflows to ``log 0``; rows without another
    member of their group have no defined term and are left out of the mean (0 when no row has one).

    ``metric="cosine"`` is the authors' variant (``cleverhans-lab/entangled-watermark``, ``models.py`` lines
    20–37): the rows go through a ReLU, the distance is ``1 − cos(h_i, h_j)``, and their kernel
    ``exp(−d·T/100)`` is this one with ``temperature = 100/T``.
    """
    h = h.flatten(1)
    n = len(h)
    if metric == "cosine":
        u = F.normalize(torch.relu(h), dim=1, eps=1e-12)
        dist = (1.0 - u @ u.T).clamp_min(0)
    elif metric == "euclidean":
        sq = (h * h).sum(1)
        dist = (sq[:, None] + sq[None, :] - 2 * h @ h.T).clamp_min(0)
    else:
        raise ValueError(f"snnl metric must be 'euclidean' or 'cosine', got {metric!r}")
    eye = torch.eye(n, dtype=torch.bool, device=h.device)
    logits = (-dist / temperature).masked_fill(eye, float("-inf"))
    same = (groups[:, None] == groups[None, :]) & ~eye
    valid = same.any(1)
    if not bool(valid.any()):
        return h.sum() * 0.0
    rows = logits[valid]
    log_num = torch.logsumexp(rows.masked_fill(~same[valid], float("-inf")), dim=1)
    log_den = torch.logsumexp(rows, dim=1)
    return -(log_num - log_den).mean()


@contextmanager
def captured(modules: Sequence[nn.Module]) -> Iterator[list[Tensor]]:
    """Within the block, each forward pass appends the outputs of ``modules`` (in their order) to the list."""
    out: list[Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, o: out.append(o)) for m in modules]
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


def default_layers(model: nn.Module, *, count: int = 2) -> list[str]:
    """Names of the last ``count`` activation modules of ``model`` (the hidden representations EWE
    entangles: for the builders' MLP and LeNet, the outputs of the last two hidden layers)."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, _ACTIVATIONS)]
    if not names:
        raise ValueError(f"recipe ewe: {type(model).__name__} has no activation module to take hidden "
                         "representations from; name the layers with the option layers")
    return names[-count:]


def resolve_layers(model: nn.Module, names: Sequence[str] | None) -> tuple[list[str], list[nn.Module]]:
    """``names`` (or :func:`default_layers`) and the submodules of ``model`` they name; a one-line
    ``ValueError`` names an unknown one."""
    names = list(names) if names else default_layers(model)
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        known = ", ".join(n for n in modules if n)
        raise ValueError(f"recipe ewe: unknown layer(s) {', '.join(map(repr, unknown))}; the model has: {known}")
    return names, [modules[n] for n in names]


def layer_snnls(model: nn.Module, layers: Sequence[nn.Module], x: Tensor, groups: Tensor,
                temperatures: Tensor, *, relative: bool = True, metric: str = "euclidean"
                ) -> tuple[Tensor, list[Tensor]]:
    """``(logits, [SNNL of each layer's output])`` of one forward pass of ``model`` on ``x``; with
    ``relative`` each layer's temperature is ``τ_l`` times the batch's mean squared pairwise distance in
    that layer (``temperatures`` holds the ``τ_l``), which makes the SNNL invariant to the layer's scale."""
    with captured(layers) as feats:
        logits = model(x)
    scales = [mean_square_distance(f) if relative else 1.0 for f in feats]
    return logits, [snnl(f, groups, t * s, metric=metric) for f, t, s in zip(feats, temperatures, scales, strict=True)]


def mean_square_distance(h: Tensor) -> Tensor:
    """Mean squared distance between distinct rows of ``h`` (flattened), ``2 Σ_d Var_d`` (differentiable;
    a floor of 1e-12 keeps a collapsed representation from dividing by zero)."""
    h = h.flatten(1)
    n = len(h)
    if n < 2:
        return h.new_ones(())
    return (2 * n / (n - 1) * h.var(dim=0, unbiased=False).sum()).clamp_min(1e-12)


# -- the loss and the alternation ----------------------------------------------------------------------
class EntangledLoss(Loss):
    """EWE's loss: cross-entropy on task steps; on watermark steps (the batch's ``extra["watermark"]``
    marks trigger rows with 1 and real ``c_T`` rows with 0)

        CE(f([X_w, X_cT]), c_T) − weight · Σ_l SNNL(h_l([X_w, X_cT]), Y', T_l)

    after which each log-temperature takes one gradient-*descent* step on the SNNL (``temperature_lr``;
    Algorithm 1, line 14). ``T_l = τ_l · (the batch's mean squared distance in layer l)`` (see
    :func:`layer_snnls`); ``temperature`` is the initial ``τ``. ``weight=0`` is the plain watermark (CE only).
    """

    def __init__(self, *, layers: Sequence[nn.Module], weight: float, temperature_lr: float = 0.01,
                 temperature: float = 1.0, relative: bool = True, metric: str = "euclidean",
                 ce_reduction: str = "mean") -> None:
        self.layers, self.weight, self.temperature_lr = list(layers), float(weight), float(temperature_lr)
        self.relative, self.metric, self.ce_reduction = bool(relative), metric, ce_reduction
        self.log_t = torch.full((len(self.layers),), float(temperature)).log()

    def temperatures(self) -> list[float]:
        """The current relative temperatures ``τ_l``."""
        return self.log_t.exp().tolist()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, extra: Mapping[str, Tensor]) -> Tensor:
        groups = extra.get(WATERMARK_KEY)
        scale = len(x) if self.ce_reduction == "sum" else 1  # summed on task steps too: Adam shares its moments
        if groups is None or self.weight == 0:
            return soft_cross_entropy(model(x), y) * scale
        log_t = self.log_t.to(x.device).requires_grad_(True)
        logits, snnls = layer_snnls(model, self.layers, x, groups, log_t.exp(), relative=self.relative,
                                    metric=self.metric)
        total_snnl = torch.stack(snnls).sum()
        (grad_t,) = torch.autograd.grad(total_snnl, log_t, retain_graph=True)
        self.log_t = (log_t - self.temperature_lr * grad_t).detach().cpu()
        ce = soft_cross_entropy(logits, y) * scale
        return ce - self.weight * total_snnl

    def __repr__(self) -> str:
        return f"EntangledLoss(weight={self.weight:g}, layers={len(self.layers)})"


class AlternatingBatches:
    """Task batches with a watermark batch as every ``every``-th step (Algorithm 1, lines 8–13: ``step += 1;
    if step % r == 0`` watermark, else task), counted across epochs; every task batch of an epoch is still
    seen. A watermark batch is ``trigger_batch`` triggers and as many real ``c_T`` images, all labelled
    ``c_T``, with ``extra["watermark"]`` marking the triggers."""

    def __init__(self, task: Batches, *, triggers: Tensor, target_images: Tensor, target_class: int, every: int,
                 trigger_batch: int, generator: torch.Generator) -> None:
        if every < 2:
            raise ValueError(f"recipe ewe: every (r) must be an integer >= 2, got {every!r}")
        self.task, self.every, self.target_class = task, int(every), int(target_class)
        self.triggers = _Stream(triggers, batch_size=trigger_batch, generator=generator)
        self.targets = _Stream(target_images, batch_size=trigger_batch, generator=generator)
        self.step = 0

    def watermark_batch(self) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        xw, xt = self.triggers.next(), self.targets.next()
        x = torch.cat([xw, xt])
        groups = torch.cat([torch.ones(len(xw), dtype=torch.long), torch.zeros(len(xt), dtype=torch.long)])
        return x, torch.full((len(x),), self.target_class, dtype=torch.long), {WATERMARK_KEY: groups}

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, ...]]:
        for task_batch in self.task.epoch(epoch):
            self.step += 1
            while self.step % self.every == 0:
                yield self.watermark_batch()
                self.step += 1
            yield task_batch


# -- the triggers --------------------------------------------------------------------------------------
def stamp(x: Tensor, position: tuple[int, int], *, size: int, value: float) -> Tensor:
    """``x`` with the ``size × size`` square of ``value`` at ``position`` (top-left row, column) on every
    channel (Algorithm 1, line 4)."""
    out = x.clone()
    r, c = position
    out[:, :, r : r + size, c : c + size] = value
    return out


def _snnl_input_grad(model: nn.Module, layers: Sequence[nn.Module], xw: Tensor, xt: Tensor,
                     temperatures: Tensor, relative: bool, *, metric: str = "euclidean") -> Tensor:
    """``∇_{X_w} Σ_l SNNL([X_w, X_cT]_l, Y', T_l)``."""
    xw = xw.clone().requires_grad_(True)
    groups = torch.cat([torch.ones(len(xw)), torch.zeros(len(xt))]).to(xw.device)
    _, snnls = layer_snnls(model, layers, torch.cat([xw, xt]), groups, temperatures, relative=relative,
                           metric=metric)
    (grad,) = torch.autograd.grad(torch.stack(snnls).sum(), xw)
    return grad


def trigger_position(model: nn.Module, layers: Sequence[nn.Module], xw: Tensor, xt: Tensor, *, size: int,
                     value: float, temperatures: Tensor, relative: bool = True) -> tuple[int, int]:
    """Where stamping the pattern raises the SNNL most to first order (Algorithm 1, lines 2–3): the argmax
    over positions of ``Σ_{n, c, window} ∇_{X_w} SNNL · (value − X_w)``, the window sums taken by a
    convolution with a ``size × size`` box."""
    grad = _snnl_input_grad(model, layers, xw, xt, temperatures, relative)
    gain = (grad * (value - xw)).sum(dim=(0, 1))[None, None]  # (1, 1, H, W)
    score = F.conv2d(gain, torch.ones(1, 1, size, size, device=gain.device))[0, 0]
    flat = int(score.flatten().argmax())
    return divmod(flat, score.shape[1])


def fgsm_refine(model: nn.Module, layers: Sequence[nn.Module], xw: Tensor, xt: Tensor, *, target_class: int,
                eps: float, steps: int, temperatures: Tensor, restamp: Any, relative: bool = True) -> Tensor:
    """Algorithm 1, lines 5–6 (optional): per step, one FGSM step of size ``eps`` down the cross-entropy to
    ``c_T`` and one up the SNNL, clipped to ``[0, 1]`` and re-stamped (the pattern stays intact)."""
    target = torch.full((len(xw),), target_class, dtype=torch.long, device=xw.device)
    for _ in range(steps):
        x = xw.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x), target), x)
        xw = restamp((xw - eps * g.sign()).clamp(0, 1))
        g = _snnl_input_grad(model, layers, xw, xt, temperatures, relative)
        xw = restamp((xw + eps * g.sign()).clamp(0, 1))
    return xw.detach()


def refine_away_from_target(model: nn.Module, layers: Sequence[nn.Module], xw: Tensor, xt: Tensor, *,
                            target_class: int, lr: float, iters: int, threshold: float, temperatures: Tensor,
                            relative: bool, metric: str, max_steps: int = 50, final_steps: int = 5) -> Tensor:
    """The authors' trigger refinement (``cleverhans-lab/entangled-watermark``, ``train.py`` lines 156–179),
    over the whole trigger set at once: ``iters`` times, sign steps of ``lr`` *down the target logit* while more
    than ``threshold`` of the triggers are already labelled ``c_T`` (at most ``max_steps`` in all), then one sign
    step *up* the SNNL; finally ``final_steps`` more steps down the target logit. Clipped to ``[0, 1]``. The
    triggers end up *not* looking like ``c_T`` to the unwatermarked model (so an independent model does not
    answer ``c_T`` on them by nature) and entangled with ``c_T`` in its representations."""
    def down(x: Tensor) -> Tensor:
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x)[:, target_class].sum(), x)
        return (x - lr * g.sign()).clamp(0, 1).detach()

    steps = 0
    for _ in range(iters):
        while steps < max_steps and watermark_rate(model, xw, target_class) > threshold:
            xw, steps = down(xw), steps + 1
        g = _snnl_input_grad(model, layers, xw, xt, temperatures, relative, metric=metric)
        xw = (xw + lr * g.sign()).clamp(0, 1).detach()
    for _ in range(final_steps):
        xw = down(xw)
    return xw


@torch.no_grad()
def watermark_rate(model: nn.Module, triggers: Tensor, target_class: int) -> float:
    """The watermark success rate: the fraction of ``triggers`` ``model`` labels ``target_class``."""
    return float((predict_logits(model, triggers).argmax(1).cpu() == target_class).float().mean())


# -- the recipe ----------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"recipe ewe: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_number(name: str, value: Any, *, low: float, strict: bool, high: float | None = None) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float) and (value > low if strict else value >= low)
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
        raise ValueError(f"recipe ewe: {name} must be a number {bound}, got {value!r}")
    return float(value)


def authors_layers(model: nn.Module) -> list[str]:
    """The layers the authors entangle in their 2-conv CNN (``models.py`` lines 332–348: the pre-activation
    outputs of conv1, conv2 and fc1): here the first two ``Conv2d`` and the first ``Linear`` of ``model``
    (an MLP: its first three ``Linear``)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    names = convs[:2] + linears[:1] if len(convs) >= 2 else linears[:3]
    if len(names) < 3:
        raise ValueError(f"recipe ewe: the authors' layers (conv1, conv2, fc1) are not in {type(model).__name__}")
    return names


#: the settings of the authors' MNIST run (``cleverhans-lab/entangled-watermark``, ``train.py`` lines 342–366
#: and 392–406; ``models.py`` lines 20–37, 350–375). Out-of-distribution triggers (``train.py`` lines 53–77):
#: class 1 of Fashion-MNIST (trousers) for MNIST; for Fashion-MNIST the authors use MNIST's 8 -> 0 (lines
#: 408–421: give ``source_class=8 target_class=0 trigger_dataset=mnist``). Train it with ``--optimizer adam
#: --lr 0.001 --batch-size 512 --epochs 20`` (Adam 1e-3, batch 512, 10 plain + 10 watermark epochs).
PRESETS: dict[str, dict[str, Any]] = {
    "authors": {"source_class": 1, "target_class": 7, "trigger_dataset": "fashion-mnist", "snnl_weight": 32.0,
                "metric": "cosine", "temperature": 100.0, "relative_temperature": False, "temperature_lr": 0.1,
                "layers": ["authors"], "ce_reduction": "sum", "refine": "away-from-target", "fgsm_eps": 0.01,
                "fgsm_steps": 10, "refine_threshold": 0.1, "warmup_epochs": 10, "every": 2, "num_triggers": 500},
}


@register_recipe("ewe")
class EWE(Recipe):
    """Entangled Watermark Embedding (Jia et al. 2021, Algorithm 1; see the module doc).

    Options: ``source_class`` ``c_S`` (whose training images become triggers), ``target_class`` ``c_T`` (the
    label the triggers get), ``snnl_weight`` κ (0: the plain watermark), ``every`` r (every r-th step is a
    watermark step, r >= 2), ``num_triggers`` (at most this many ``c_S`` images), ``trigger_size`` and
    ``trigger_value`` (the square pattern), ``layers`` (module names whose outputs are entangled; default the
    last two activations), ``temperature`` (initial ``T``; ``None``: from the data), ``temperature_lr``,
    ``fgsm_eps`` / ``fgsm_steps`` (optional refinement; 0 = off), ``warmup_epochs`` (plain epochs before the
    trigger position is chosen, part of the training config's epochs), ``trigger_batch`` (triggers per
    watermark batch, as many ``c_T`` images beside them; ``None``: half the batch size).
    """

    strength_param = "snnl_weight"
    example_options = {"source_class": 1, "target_class": 7, "snnl_weight": 8.0}

    def __init__(self, *, source_class: int = 1, target_class: int = 7, snnl_weight: float = 8.0, every: int = 2,
                 num_triggers: int = 100, trigger_size: int = 3, trigger_value: float = 1.0,
                 layers: list[str] | None = None, temperature: float = 1.0, relative_temperature: bool = True,
                 temperature_lr: float = 0.01,
                 fgsm_eps: float = 0.0, fgsm_steps: int = 1, warmup_epochs: int = 1,
                 trigger_batch: int | None = None, trigger_dataset: str | None = None, refine: str | None = None,
                 refine_threshold: float = 0.1, metric: str = "euclidean", ce_reduction: str = "mean",
                 preset: str | None = None) -> None:
        given = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if preset is not None:
            if preset not in PRESETS:
                raise ValueError(f"recipe ewe: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
            import inspect

            defaults = {n: q.default for n, q in inspect.signature(EWE.__init__).parameters.items() if n != "self"}
            for k, v in PRESETS[preset].items():  # a preset fills the options left at their defaults
                if given[k] == defaults[k]:
                    given[k] = v
            given["preset"] = None
            self.__init__(**given)
            self.preset = preset
            return
        self.preset = None
        if trigger_dataset is not None and not (isinstance(trigger_dataset, str) and trigger_dataset):
            raise ValueError(f"recipe ewe: trigger_dataset must be a dataset name, got {trigger_dataset!r}")
        self.trigger_dataset = trigger_dataset
        if refine is None:
            refine = "toward-target" if fgsm_eps > 0 else "none"
        if refine not in ("none", "toward-target", "away-from-target"):
            raise ValueError(f"recipe ewe: refine must be none, toward-target or away-from-target, got {refine!r}")
        if refine != "none" and not fgsm_eps > 0:
            raise ValueError(f"recipe ewe: refine={refine} needs a step size fgsm_eps > 0")
        self.refine = refine
        self.refine_threshold = _check_number("refine_threshold", refine_threshold, low=0, strict=False, high=1)
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"recipe ewe: metric must be euclidean or cosine, got {metric!r}")
        if ce_reduction not in ("mean", "sum"):
            raise ValueError(f"recipe ewe: ce_reduction must be mean or sum, got {ce_reduction!r}")
        self.metric, self.ce_reduction = metric, ce_reduction
        self.source_class = _check_int("source_class", source_class, 0)
        self.target_class = _check_int("target_class", target_class, 0)
        if self.source_class == self.target_class:
            raise ValueError(f"recipe ewe: source_class and target_class must differ, both are {source_class}")
        self.snnl_weight = _check_number("snnl_weight", snnl_weight, low=0, strict=False)
        self.every = _check_int("every", every, 2)
        self.num_triggers = _check_int("num_triggers", num_triggers, 1)
        self.trigger_size = _check_int("trigger_size", trigger_size, 1)
        self.trigger_value = _check_number("trigger_value", trigger_value, low=0, strict=False, high=1)
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) and n for n in layers)):
            raise ValueError(f"recipe ewe: layers must be a list of module names, got {layers!r}")
        self.layers = list(layers) if layers else None
        self.temperature = _check_number("temperature", temperature, low=0, strict=True)
        if not isinstance(relative_temperature, bool):
            raise ValueError(f"recipe ewe: relative_temperature must be true or false, got {relative_temperature!r}")
        self.relative = relative_temperature
        self.temperature_lr = _check_number("temperature_lr", temperature_lr, low=0, strict=False)
        self.fgsm_eps = _check_number("fgsm_eps", fgsm_eps, low=0, strict=False, high=1)
        self.fgsm_steps = _check_int("fgsm_steps", fgsm_steps, 1)
        self.warmup_epochs = _check_int("warmup_epochs", warmup_epochs, 0)
        self.trigger_batch = None if trigger_batch is None else _check_int("trigger_batch", trigger_batch, 1)

    def options(self) -> dict[str, Any]:
        return {"source_class": self.source_class, "target_class": self.target_class,
                "snnl_weight": self.snnl_weight, "every": self.every, "num_triggers": self.num_triggers,
                "trigger_size": self.trigger_size, "trigger_value": self.trigger_value, "layers": self.layers,
                "temperature": self.temperature, "relative_temperature": self.relative,
                "temperature_lr": self.temperature_lr, "fgsm_eps": self.fgsm_eps,
                "fgsm_steps": self.fgsm_steps, "warmup_epochs": self.warmup_epochs,
                "trigger_batch": self.trigger_batch, "trigger_dataset": self.trigger_dataset, "refine": self.refine,
                "refine_threshold": self.refine_threshold, "metric": self.metric, "ce_reduction": self.ce_reduction,
                "preset": self.preset}

    def check_data(self, data: DatasetSplits, config: TrainConfig) -> None:
        """One-line errors, before any training, for classes, pattern size or epochs that do not fit."""
        for name, c in (("source_class", self.source_class), ("target_class", self.target_class)):
            if c >= data.num_classes:
                raise ValueError(f"recipe ewe: {name}={c} is not a class of {data.name} (0..{data.num_classes - 1})")
            if not bool((data.y_train == c).any()):
                raise ValueError(f"recipe ewe: {data.name}'s training split has no image of {name}={c}")
        if self.trigger_dataset is None and (len(data.input_shape) != 3 or
                                             self.trigger_size > min(data.input_shape[1:])):
            raise ValueError(f"recipe ewe: trigger_size={self.trigger_size} does not fit inputs {data.input_shape} "
                             "(images (C, H, W) at least that large are needed)")
        if config.epochs <= self.warmup_epochs:
            raise ValueError(f"recipe ewe: the training runs {config.epochs} epochs, which must exceed "
                             f"warmup_epochs={self.warmup_epochs}")

    def source_images(self, data: DatasetSplits) -> Tensor:
        """The images triggers are made from: ``source_class`` of ``data``'s training split, or of the
        ``trigger_dataset``'s (out of distribution; it must have ``data``'s input shape)."""
        if self.trigger_dataset is None:
            return data.x_train[data.y_train == self.source_class]
        from modelsteal.data import load_dataset

        other = load_dataset(self.trigger_dataset, seed=0)
        if other.input_shape != data.input_shape:
            raise ValueError(f"recipe ewe: trigger_dataset {self.trigger_dataset} has inputs {other.input_shape}, "
                             f"but {data.name} has {data.input_shape}")
        src = other.x_train[other.y_train == self.source_class]
        if not len(src):
            raise ValueError(f"recipe ewe: trigger_dataset {self.trigger_dataset} has no image of class "
                             f"{self.source_class}")
        return src

    def make_triggers(self, model: nn.Module, layers: Sequence[nn.Module], data: DatasetSplits, *,
                      generator: torch.Generator, device: torch.device) -> tuple[Tensor, tuple[int, int], Tensor]:
        """``(triggers, position, target-class images)`` from the (warmed-up) ``model`` (lines 1–6); out-of-
        distribution triggers (``trigger_dataset``) are not stamped (position ``(-1, -1)``), as in the authors'
        code (``train.py`` lines 53–77, 151–152)."""
        src = self.source_images(data)
        src = src[torch.randperm(len(src), generator=generator)[: self.num_triggers]].to(device)
        tgt = data.x_train[data.y_train == self.target_class].to(device)
        probe = tgt[torch.randperm(len(tgt), generator=generator)[: len(src)].to(device)]
        was_training = model.training
        model.eval()
        temps = torch.full((len(layers),), self.temperature, device=device)
        if self.trigger_dataset is None:
            pos = trigger_position(model, layers, src, probe, size=self.trigger_size, value=self.trigger_value,
                                   temperatures=temps, relative=self.relative)

            def restamp(x: Tensor) -> Tensor:
                return stamp(x, pos, size=self.trigger_size, value=self.trigger_value)
        else:
            pos = (-1, -1)

            def restamp(x: Tensor) -> Tensor:
                return x

        triggers = restamp(src)
        if self.refine == "toward-target":
            triggers = fgsm_refine(model, layers, triggers, probe, target_class=self.target_class,
                                   eps=self.fgsm_eps, steps=self.fgsm_steps, temperatures=temps, restamp=restamp,
                                   relative=self.relative)
        elif self.refine == "away-from-target":
            triggers = restamp(refine_away_from_target(
                model, layers, triggers, probe, target_class=self.target_class, lr=self.fgsm_eps,
                iters=self.fgsm_steps, threshold=self.refine_threshold, temperatures=temps, relative=self.relative,
                metric=self.metric))
        model.train(was_training)
        return triggers.detach(), pos, tgt

    def fit(self, model, data, *, config, generator, device, progress=False):  # noqa: D102
        self.check_data(data, config)
        names, layers = resolve_layers(model, self.layers if self.layers != ["authors"] else authors_layers(model))
        device = torch.device(device)
        model.to(device)
        val = (data.x_val, data.y_val)
        if self.warmup_epochs:
            train(model, data.x_train, data.y_train, config=replace(config, epochs=self.warmup_epochs), val=val,
                  generator=generator, device=device, progress=progress and "ewe warm-up")
        triggers, pos, tgt = self.make_triggers(model, layers, data, generator=generator, device=device)
        warm_rate = watermark_rate(model, triggers, self.target_class)
        loss = EntangledLoss(layers=layers, weight=self.snnl_weight, temperature_lr=self.temperature_lr,
                             temperature=self.temperature, relative=self.relative, metric=self.metric,
                             ce_reduction=self.ce_reduction)
        task = ShuffledBatches(data.x_train, data.y_train, batch_size=config.batch_size, generator=generator)
        batches = AlternatingBatches(task, triggers=triggers.cpu(), target_images=tgt.cpu(),
                                     target_class=self.target_class, every=self.every,
                                     trigger_batch=self.trigger_batch or max(1, config.batch_size // 2),
                                     generator=generator)
        history = train(model, data.x_train, data.y_train, config=replace(config, epochs=config.epochs -
                                                                          self.warmup_epochs),
                        loss=loss, batches=batches, val=val, generator=generator, device=device, progress=progress)
        history.info[WATERMARK_KEY] = self._record(model, names, loss, triggers, pos, warm_rate)
        model.watermark = history.info[WATERMARK_KEY]
        return model, history

    def _record(self, model: nn.Module, names: list[str], loss: EntangledLoss, triggers: Tensor,
                pos: tuple[int, int], warm_rate: float) -> dict[str, Any]:
        """The watermark's facts a verifier needs (saved with the checkpoint)."""
        return {"method": "ewe" if self.snnl_weight > 0 else "plain-watermark", "triggers": triggers.cpu(),
                "source_class": self.source_class, "target_class": self.target_class, "position": list(pos),
                "trigger_size": self.trigger_size, "trigger_value": self.trigger_value,
                "snnl_weight": self.snnl_weight, "layers": names, "temperatures": loss.temperatures(),
                "every": self.every, "victim_rate": watermark_rate(model, triggers, self.target_class),
                "null_rate_estimate": warm_rate, "null_rate_source": "the warm-up (not watermarked) model",
                "trigger_dataset": self.trigger_dataset, "refine": self.refine}


def watermark_record(source: nn.Module | Mapping[str, Any] | TrainHistory) -> dict[str, Any] | None:
    """The watermark record of a model trained by :class:`EWE` (``model.watermark``), of its history, or of
    a checkpoint's metadata (``meta["watermark"]``); ``None`` when there is none."""
    if isinstance(source, TrainHistory):
        return source.info.get(WATERMARK_KEY)
    if isinstance(source, nn.Module):
        return getattr(source, WATERMARK_KEY, None)
    return source.get(WATERMARK_KEY)
