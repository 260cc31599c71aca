"""DP-SGD (Abadi et al., *Deep Learning with Differential Privacy*, CCS 2016) through Opacus.

The baseline (iii) of Orekondy et al. (ICLR 2020, Sec. 5.1, Fig. 4b): randomise the victim's *parameters*
instead of its predictions. Each step samples a Poisson batch (every training example independently with
probability ``q``; Opacus takes ``q = 1 / ⌈N / batch_size⌉``, so an epoch is ``⌈N / batch_size⌉`` steps),
clips every per-sample gradient to L2 norm ``C`` (``max_grad_norm``), sums, adds ``N(0, σ² C² I)``
(``σ = noise_multiplier``) and divides by the expected batch size. Opacus does the per-sample gradients,
the clipping and noise (``DPOptimizer``), the Poisson loader and the privacy accounting (RDP accountant);
the training loop is still
:func:`~modelsteal.training.train`, fed by Opacus' loader. The ε spent at ``δ`` (default ``1/N``) is
returned in the history's ``info`` and recorded in the checkpoint.

Models with BatchNorm (which mixes examples within a batch, so per-sample gradients do not exist) are
repaired with Opacus' ``ModuleValidator.fix`` (BatchNorm → GroupNorm) before training; the checkpoint
records it, so :func:`~modelsteal.models.load_checkpoint` rebuilds the same layers. After training the
Opacus wrapper is removed (``to_standard_module``), so JBDA, MAD and every other user of the victim take
input gradients on the plain module.

Opacus' secure RNG is off: the Poisson sampler and the noise draw from generators seeded from the run's seed,
so a DP victim is reproducible. That is right for measuring the defense; a deployment that needs the formal
guarantee against an adversary who can predict the noise should retrain with Opacus' ``secure_mode``.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import torch

from modelsteal._extras import require_extra
from modelsteal.models.fixes import opacus_fix
from modelsteal.training.loop import LoaderBatches, TrainConfig, make_optimizer, train
from modelsteal.training.recipes import Recipe, register_recipe


@register_recipe("dp-sgd")
class DPSGD(Recipe):
    """DP-SGD through Opacus: ``noise_multiplier`` σ > 0 (the strength a sweep varies), ``max_grad_norm`` C,
    ``delta`` δ (``None``: ``1/N``), ``poisson`` sampling (the assumption of the accountant; ``False``
    shuffles fixed-size batches and the reported ε is then only nominal), ``epochs`` (``None``: the training
    config's; the privacy spent grows with the number of steps, so a DP victim often trains shorter)."""

    strength_param = "noise_multiplier"
    example_options = {"noise_multiplier": 1.0}

    def __init__(self, *, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0, delta: float | None = None,
                 poisson: bool = True, accountant: str = "rdp", epochs: int | None = None) -> None:
        if not isinstance(noise_multiplier, (int, float)) or not noise_multiplier > 0:
            raise ValueError(f"recipe dp-sgd: noise_multiplier (σ) must be a number > 0, got {noise_multiplier!r}")
        if not isinstance(max_grad_norm, (int, float)) or not max_grad_norm > 0:
            raise ValueError(f"recipe dp-sgd: max_grad_norm (C) must be a number > 0, got {max_grad_norm!r}")
        if delta is not None and not 0 < delta < 1:
            raise ValueError(f"recipe dp-sgd: delta (δ) must lie in (0, 1), got {delta!r}")
        if accountant not in ("rdp", "prv", "gdp"):
            raise ValueError(f"recipe dp-sgd: unknown accountant {accountant!r}; known: rdp, prv, gdp")
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"recipe dp-sgd: epochs must be an integer >= 1 or none, got {epochs!r}")
        self.epochs = epochs
        require_extra("opacus", extra="dp", purpose="the dp-sgd recipe")
        self.noise_multiplier, self.max_grad_norm = float(noise_multiplier), float(max_grad_norm)
        self.delta, self.poisson, self.accountant = delta, bool(poisson), accountant

    def options(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
                "delta": self.delta, "poisson": self.poisson, "accountant": self.accountant, "epochs": self.epochs}

    def fit(self, model, data, *, config: TrainConfig, generator, device, progress=False):  # noqa: D102
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        if self.epochs is not None:
            config = replace(config, epochs=self.epochs)
        model, fixed = opacus_fix(model)
        model.to(device)
        n = len(data.x_train)
        delta = self.delta if self.delta is not None else 1.0 / n
        # the loader's and the noise's generators are split off the caller's, so a seed fixes the run
        loader_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        noise_gen = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=config.batch_size, shuffle=True,
                            generator=loader_gen)
        optimizer = make_optimizer(model, config)
        with warnings.catch_warnings():  # seeded generators on purpose (reproducible runs; see the module doc)
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=self.accountant)
        private, dp_opt, dp_loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm, poisson_sampling=self.poisson, noise_generator=noise_gen,
        )
        try:
            with warnings.catch_warnings():
                # Opacus' hooks fire on module outputs when the inputs need no gradient: expected here
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                history = train(private, data.x_train, data.y_train, config=config, optimizer=dp_opt,
                                batches=LoaderBatches(dp_loader), generator=generator,
                                val=(data.x_val, data.y_val), device=device, progress=progress)
        finally:
            plain = private.to_standard_module()
        eps = float(engine.get_epsilon(delta))
        history.info["dp"] = {"epsilon": eps, "delta": delta, "noise_multiplier": self.noise_multiplier,
                              "max_grad_norm": self.max_grad_norm, "poisson": self.poisson,
                              "accountant": self.accountant, "steps": history.steps,
                              "sample_rate": float(dp_loader.sample_rate), "module_fix": "opacus" if fixed else None}
        return plain.eval(), history
