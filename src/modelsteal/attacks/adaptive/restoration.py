"""D-DAE: the attacker who knows the defense detects it and restores the clean posteriors.

Chen, Guan, Gong, Dong and Xue, "D-DAE: Defense-Penetrating Model Extraction Attacks", IEEE Symposium on
Security and Privacy (S&P) 2023. The attacker

1. trains shadow models on data of its own (here: ``shadow_models`` LeNets on the attacker's labelled data,
   trained together in one stacked pass, :func:`~modelsteal.training.train_stacked`, since they share inputs);
2. answers its transfer inputs with every shadow model, once clean and once through each suspected defense
   (the defense is known, its strength estimated: one value or a list of values around the estimate, every
   one applied), which gives pairs (defended answer, clean answer) without spending a query;
3. trains a *detector* (the paper's defense-detection module, Sec. IV-B): a classifier over
   ``{clean, defense_1, …, defense_n}`` of a single answer, on features that do not depend on the class order
   (the answer's probabilities sorted in decreasing order and their logarithms);
4. trains a *restorer* per defense (the paper's recovery module, Sec. IV-C): a network ``R`` from a defended
   answer to a posterior, minimising the cross-entropy ``−Σ_k y_k log R(ỹ)_k`` to the clean answer ``y``
   (the KL divergence up to a constant; the paper's recovery is a generative model of the clean posterior
   given the defended one — this is its conditional mean, which the clone's soft cross-entropy consumes);
5. queries the victim on random transfer inputs (Knockoff's sampling), lets the detector vote over all
   answers which defense is present, and trains the clone on the restored answers (on the raw ones when
   the vote says "clean", or when the detected defense's restorer did not bring held-out shadow answers
   closer to the clean ones than the defended answers were).

Every network here (shadow models, detector, restorers, clone) trains through the one loop
(:func:`~modelsteal.training.train`). Shadow models, detector and restorers depend on the attack's options,
data and seed only, never on the victim, so points of a sweep that differ only in the victim's defense reuse
them (an in-process cache keyed by those). The shadow task: the ``K`` most frequent classes of the attacker's
labelled transfer data, relabelled ``0..K−1`` (the victim's class count ``K``; for a MNIST victim and a
letters transfer set, ten letters).

``info`` reports the detector's vote (``detected``), the share of answers it gave the winning label, and on
held-out shadow inputs the mean L1 distance to the clean answers before (``heldout_l1_defended``) and after
restoration (``heldout_l1_restored``) for the detected defense.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from modelsteal import training
from modelsteal.attacks.base import CloneJob, StealResult, register_attack
from modelsteal.attacks.knockoff import KnockoffNets
from modelsteal.blackbox import PredictionAPI, QueryBudget
from modelsteal.data.registry import DatasetSplits
from modelsteal.defenses.base import defense_class, defense_options, make_defense
from modelsteal.models import build_seeded
from modelsteal.training import TrainConfig, predict_logits

#: the defenses D-DAE can restore, and the range of each one's strength (inclusive; None: unbounded)
RESTORABLE: dict[str, tuple[float | None, float | None]] = {
    "mad": (0.0, 2.0), "mad-argmax": (0.0, 2.0), "am": (0.0, 1.0), "reverse-sigmoid": (0.0, None),
    "random-noise": (0.0, None), "rounding": (0.0, None), "top-k": (1.0, None), "label-only": (None, None),
}
_L2_MAX = math.sqrt(2.0)
_CACHE: dict[str, Restoration] = {}
_CACHE_SIZE = 4


@dataclass(frozen=True)
class Suspect:
    """One suspected defense: its registry name, the strengths the attacker tries, its other options."""

    name: str
    strengths: tuple[float | None, ...]
    options: Mapping[str, Any]

    @property
    def label(self) -> str:
        return self.name


def parse_suspects(defense: Any, strength: Any, defense_options_: Mapping[str, Any] | None) -> list[Suspect]:
    """The suspected defenses from the attack's options, each checked (name, strength range, options) before
    anything is trained or queried; a ``ValueError`` names what is wrong."""
    if isinstance(defense, str):
        entries = [{"name": defense, "strength": strength, "options": dict(defense_options_ or {})}]
    elif isinstance(defense, Sequence) and defense and all(isinstance(d, Mapping) for d in defense):
        if strength is not None or defense_options_:
            raise ValueError("d-dae: with a list of defenses give each one's strength and options inside its entry")
        entries = [dict(d) for d in defense]
    else:
        raise ValueError("d-dae: defense must be a defense name or a list of {name, strength, options} entries")
    out = []
    for e in entries:
        unknown = set(e) - {"name", "strength", "options"}
        if unknown:
            raise ValueError(f"d-dae: unknown key(s) {', '.join(sorted(unknown))} in a defense entry "
                             "(known: name, strength, options)")
        name = str(e.get("name", "")).strip().lower()
        if name not in RESTORABLE:
            raise ValueError(f"d-dae cannot restore defense {e.get('name')!r}; known: {', '.join(RESTORABLE)}")
        raw = e.get("strength")
        values = raw if isinstance(raw, (list, tuple)) else [raw]
        opts = dict(e.get("options") or {})
        lo, hi = RESTORABLE[name]
        if name in ("mad", "mad-argmax") and str(opts.get("norm", "l1")).lower() == "l2":
            hi = _L2_MAX
        strengths = []
        for s in values:
            if s is None:  # no estimate: the defense's own example strength (none for label-only)
                strengths.append(None if lo is None else defense_class(name).example_strength)
                continue
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                raise ValueError(f"d-dae: the strength estimate of {name!r} must be a number, got {s!r}")
            if (lo is not None and s < lo) or (hi is not None and s > hi) or (name == "am" and s <= 0):
                rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ValueError(f"d-dae: strength estimate {s} of {name!r} is out of range; it must be in {rng}")
            strengths.append(s)  # as given: rounding's decimals stay an integer
        for s in strengths:  # the defense's own checks (option names, values), nothing built yet
            defense_options(name, strength=s, options=opts)
        out.append(Suspect(name=name, strengths=tuple(strengths), options=opts))
    if len({s.name for s in out}) != len(out):
        raise ValueError("d-dae: a defense is named twice; give it one entry with a list of strengths")
    return out


def answer_features(probs: Tensor) -> Tensor:
    """The detector's features of answers ``(N, K)``: sorted probabilities and their logs, ``(N, 2K)``."""
    s = probs.sort(dim=1, descending=True).values
    return torch.cat([s, s.clamp_min(1e-6).log() / math.log(1e6) + 1.0], dim=1)


class _LogInput(nn.Module):
    """``log(max(p, 1e-6))`` scaled to [0, 1]: a restorer reads posteriors on a log scale."""

    def forward(self, p: Tensor) -> Tensor:
        return p.clamp_min(1e-6).log() / math.log(1e6) + 1.0


def _seeded_mlp(d_in: int, d_out: int, *, hidden: int, log_input: bool, seed: int) -> nn.Module:
    """A two-hidden-layer ReLU network (the detector's and restorers' shape), initialised from ``seed``."""

    def build() -> nn.Module:
        layers: list[nn.Module] = [_LogInput()] if log_input else []
        layers += [nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                   nn.Linear(hidden, d_out)]
        return nn.Sequential(*layers)

    return build_seeded(build, seed=seed)


@dataclass
class Restoration:
    """What the attacker learned from its shadow models: the detector, a restorer per suspected defense (kept
    only where it lowered the held-out L1 distance to the clean answers), and held-out L1 distances (defended →
    clean, restored → clean) per defense."""

    labels: list[str]  # detector classes: "clean", then the suspects' names
    detector: nn.Module
    restorers: dict[str, nn.Module]
    heldout: dict[str, dict[str, float]]

    @torch.no_grad()
    def detect(self, answers: Tensor) -> Tensor:
        """The detector's label index per answer."""
        return predict_logits(self.detector, answer_features(answers)).argmax(dim=1)

    @torch.no_grad()
    def restore(self, name: str, answers: Tensor) -> Tensor:
        """Restored posteriors of defended ``answers`` under defense ``name`` (the answers themselves when
        that defense's restorer did not bring held-out answers closer to the clean ones)."""
        if name not in self.restorers:
            return answers
        return predict_logits(self.restorers[name], answers).softmax(dim=1)


@register_attack("d-dae")
class DDAE(KnockoffNets):
    """D-DAE (Chen et al., IEEE S&P 2023): defense detection and posterior restoration learnt on shadow models.

    Example::

        attack = DDAE(transfer_set=x, transfer_labels=y, defense="mad", strength=[0.5, 0.9],
                      defense_options={"norm": "l1"})
        result = attack(api, budget=10_000)

    Args:
        transfer_set, transfer_labels: the attacker's data (queried inputs; labelled shadow-model data).
        defense: the suspected defense's name (one of :data:`RESTORABLE`), or a list of entries
            ``{name, strength, options}`` (the detector then also tells which of them is present).
        strength: the estimated strength (a number, or a list of numbers all trained on; ``None``: the defense's
            ``example_strength``); per entry in a list.
        defense_options: the suspected defense's other options (e.g. ``{norm: l1}``).
        shadow_models: how many shadow models (>= 1; stacked when >= 2).
        shadow_inputs: transfer inputs answered by each shadow model for the detector and restorers.
        shadow_train: the shadow models' training (default: the clone's ``train``).
        restorer_epochs, detector_epochs: epochs of the restorers and the detector (Adam, lr 1e-3).
        heldout_fraction: share of the shadow answers kept out of training to measure the restorers.
        **base: options of :class:`~modelsteal.attacks.base.Attack`.
    """

    stackable = True  # the queries depend on the pool, budget and seed only (the targets on the restorers)
    reported_info = ("detected", "detected_share", "heldout_l1_defended", "heldout_l1_restored")

    def __init__(self, *, transfer_set: Tensor, transfer_labels: Tensor | None = None, defense: Any = "mad",
                 strength: Any = None, defense_options: Mapping[str, Any] | None = None, shadow_models: int = 3,
                 shadow_inputs: int = 5000, shadow_train: Mapping[str, Any] | TrainConfig | None = None,
                 restorer_epochs: int = 20, detector_epochs: int = 10, heldout_fraction: float = 0.2,
                 **base: Any) -> None:
        super().__init__(transfer_set=transfer_set, **base)
        self.suspects = parse_suspects(defense, strength, defense_options)
        if transfer_labels is None:
            raise ValueError("d-dae trains shadow models on labelled attacker data: give transfer_labels "
                             "(a sweep's transfer.source: dataset)")
        labels = torch.as_tensor(transfer_labels)
        if labels.shape != (len(transfer_set),) or labels.is_floating_point():
            raise ValueError(f"transfer_labels must be integer class ids of shape ({len(transfer_set)},)")
        if shadow_models < 1 or shadow_inputs < 10:
            raise ValueError("shadow_models must be >= 1 and shadow_inputs >= 10")
        if restorer_epochs < 1 or detector_epochs < 1:
            raise ValueError("restorer_epochs and detector_epochs must be >= 1")
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        if isinstance(shadow_train, Mapping):
            shadow_train = TrainConfig(**shadow_train)
        self.transfer_labels = labels.long()
        self.shadow_models, self.shadow_inputs = int(shadow_models), int(shadow_inputs)
        self.shadow_train = shadow_train
        self.restorer_epochs, self.detector_epochs = int(restorer_epochs), int(detector_epochs)
        self.heldout_fraction = float(heldout_fraction)

    # -- shadow models and what they teach ------------------------------------------------------------------
    def shadow_task(self, num_classes: int) -> tuple[Tensor, Tensor]:
        """The shadow models' training set: the ``num_classes`` most frequent attacker classes, relabelled."""
        classes, counts = self.transfer_labels.unique(return_counts=True)
        if len(classes) < num_classes:
            raise ValueError(f"d-dae: the attacker's labelled data has {len(classes)} classes, the victim "
                             f"{num_classes}; shadow models need at least as many")
        order = sorted(range(len(classes)), key=lambda i: (-int(counts[i]), int(classes[i])))[:num_classes]
        keep = classes[order]
        remap = torch.full((int(self.transfer_labels.max()) + 1,), -1, dtype=torch.long)
        remap[keep] = torch.arange(num_classes)
        y = remap[self.transfer_labels]
        rows = (y >= 0).nonzero().flatten()
        return self.transfer_set[rows], y[rows]

    def train_shadows(self, victim: QueryBudget, generator: torch.Generator) -> list[nn.Module]:
        """``shadow_models`` clones of the victim's interface trained on the shadow task (stacked)."""
        from modelsteal.training.stacked import can_stack, train_stacked

        x, y = self.shadow_task(victim.num_classes)
        cfg = self.shadow_train or self.train_config
        models = [self.make_clone(victim, generator=generator) for _ in range(self.shadow_models)]
        if can_stack(models):
            train_stacked(models, x, [y] * len(models), config=cfg, generator=generator, device=self.device)
        else:
            for m in models:
                training.train(m, x, y, config=cfg, generator=generator, device=self.device)
        return [m.eval() for m in models]

    def defended_answers(self, shadows: list[nn.Module], x: Tensor, num_classes: int,
                         generator: torch.Generator) -> dict[str, Tensor]:
        """Per suspect, the shadow models' answers on ``x`` through the defense: one block of ``len(x)`` rows per
        shadow model and strength, in that order (a defense that needs a fit, AM, is fitted per shadow model on
        the shadow task)."""
        sx, sy = self.shadow_task(num_classes)
        defended: dict[str, Tensor] = {}
        for s in self.suspects:
            blocks = []
            for i, m in enumerate(shadows):
                for st in s.strengths:
                    d = make_defense(s.name, strength=st, **s.options)
                    if d is not None and d.needs_fit:
                        data = DatasetSplits(name="shadow", x_train=sx, y_train=sy, x_val=sx[:1], y_val=sy[:1],
                                             x_test=sx[:1], y_test=sy[:1], num_classes=num_classes)
                        d.fit(m, data, generator=torch.Generator().manual_seed(
                            int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) + i))
                    api = PredictionAPI(m, defense=d, device=self.device, batch_size=self.query_batch_size)
                    blocks.append(api.query(x).cpu())  # the API answers (and defends) in sub-batches itself
            defended[s.name] = torch.cat(blocks)
        return defended

    def learn(self, victim: QueryBudget, generator: torch.Generator) -> Restoration:
        """Shadow models → (defended, clean) pairs → detector and restorers, with held-out L1 distances."""
        shadows = self.train_shadows(victim, generator)
        idx = torch.randperm(len(self.transfer_set), generator=generator)[: self.shadow_inputs]
        x = self.transfer_set[idx]
        clean_by_model = [predict_logits(m, x, device=self.device).softmax(dim=1).cpu() for m in shadows]
        defended = self.defended_answers(shadows, x, victim.num_classes, generator)
        n = len(x)
        held = torch.zeros(n, dtype=torch.bool)
        held[torch.randperm(n, generator=generator)[: max(1, int(self.heldout_fraction * n))]] = True
        k = victim.num_classes
        cfg = TrainConfig(epochs=self.restorer_epochs, batch_size=128, lr=1e-3, optimizer="adam")
        restorers, heldout = {}, {}
        det_x, det_y = [torch.cat(clean_by_model)[~held.repeat(len(shadows))]], []
        det_y.append(torch.zeros(len(det_x[0]), dtype=torch.long))
        for j, s in enumerate(self.suspects):
            reps = len(s.strengths)
            clean = torch.cat([c for c in clean_by_model for _ in range(reps)])
            mask = held.repeat(len(shadows) * reps)
            d = defended[s.name]
            net = _seeded_mlp(k, k, hidden=256, log_input=True,
                              seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            training.train(net, d[~mask], clean[~mask], config=cfg, generator=generator, device=self.device)
            restorers[s.name] = net.eval()
            with torch.no_grad():
                restored = predict_logits(net, d[mask], device=self.device).softmax(dim=1).cpu()
            heldout[s.name] = {"defended": float((d[mask] - clean[mask]).abs().sum(1).mean()),
                               "restored": float((restored - clean[mask]).abs().sum(1).mean())}
            if heldout[s.name]["restored"] >= heldout[s.name]["defended"]:  # restoring would hurt: keep answers
                restorers.pop(s.name)
            det_x.append(d[~mask])
            det_y.append(torch.full((int((~mask).sum()),), j + 1, dtype=torch.long))
        detector = _seeded_mlp(2 * k, len(self.suspects) + 1, hidden=128, log_input=False,
                               seed=int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        training.train(detector, answer_features(torch.cat(det_x)), torch.cat(det_y),
                       config=TrainConfig(epochs=self.detector_epochs, batch_size=128, lr=1e-3, optimizer="adam"),
                       generator=generator, device=self.device)
        return Restoration(labels=["clean", *[s.name for s in self.suspects]], detector=detector.eval(),
                           restorers=restorers, heldout=heldout)

    def _cache_key(self, victim: QueryBudget, generator: torch.Generator) -> str:
        h = hashlib.sha256()
        h.update(repr((self.suspects, self.shadow_models, self.shadow_inputs, self.shadow_train, self.train_config,
                       self.clone_spec if isinstance(self.clone_spec, str) else id(self.clone_spec),
                       self.restorer_epochs, self.detector_epochs, self.heldout_fraction, str(self.device),
                       victim.num_classes, tuple(victim.input_shape))).encode())
        h.update(generator.get_state().numpy().tobytes())
        h.update(self.transfer_set.numpy().tobytes() if self.transfer_set.device.type == "cpu" else b"")
        h.update(self.transfer_labels.numpy().tobytes())
        return h.hexdigest()

    def restoration(self, victim: QueryBudget, generator: torch.Generator) -> Restoration:
        """:meth:`learn`, reused from an earlier point with the same options, data and seed."""
        key = self._cache_key(victim, generator)
        if key not in _CACHE:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = self.learn(victim, generator)
        return _CACHE[key]

    # -- the attack -------------------------------------------------------------------------------------------
    def run(self, victim: QueryBudget, *, generator: torch.Generator) -> StealResult:
        job = self.collect(victim, generator=generator)
        return job.result(job.train_alone())

    def collect(self, victim: QueryBudget, *, generator: torch.Generator) -> CloneJob:
        if tuple(self.transfer_set.shape[1:]) != tuple(victim.input_shape):
            raise ValueError(f"transfer set images have shape {tuple(self.transfer_set.shape[1:])}, the victim "
                             f"expects {tuple(victim.input_shape)}")
        learn_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        rest = self.restoration(victim, learn_gen)
        idx = self.sample(victim.remaining, generator)
        images = self.transfer_set[idx]
        raw = self.query_all(victim, images)
        votes = torch.bincount(rest.detect(raw), minlength=len(rest.labels))
        winner = int(votes.argmax())
        name = rest.labels[winner]
        answers = raw if name == "clean" else rest.restore(name, raw)
        y = self.targets(answers)
        clone = self.make_clone(victim, generator=generator)

        def finish(history: training.TrainHistory | None) -> StealResult:
            ho = rest.heldout.get(name, {})
            info = {"images": len(images), "detected": name, "detected_share": float(votes[winner]) / len(raw),
                    "votes": dict(zip(rest.labels, votes.tolist(), strict=True)),
                    "heldout_l1_defended": ho.get("defended"), "heldout_l1_restored": ho.get("restored"),
                    "heldout": rest.heldout,
                    "final_loss": history.loss[-1] if history is not None and history.loss else None}
            return StealResult(clone=clone, queries=victim.used, transfer_x=images, transfer_y=answers, info=info)

        return CloneJob(attack=self, budget=victim, clone=clone, x=images, targets=y, generator=generator,
                        finish=finish)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "defenses": [s.name for s in self.suspects]}


