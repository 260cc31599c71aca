"""Training recipes: how a victim (or any defender's model) is trained, selected by name.

``victim: {recipe: {name: outlier-exposure, weight: 0.5, outliers: kana}}`` in a sweep config and
``modelsteal train --recipe outlier-exposure --recipe-option outliers=kana`` on the command line. A recipe
validates its options when it is made (before any data is loaded or any model trained), then :meth:`Recipe.fit`
trains through :func:`~modelsteal.training.train`, the one loop. ``strength_param`` names the option a
sweep varies when the recipe is listed as a defense (``defense: {name: dp-sgd, strengths: [0.5, 1, 2]}``
trains one victim per noise multiplier).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modelsteal._registry import Registry
from modelsteal.data import DatasetSplits, available_datasets, load_dataset
from modelsteal.training.loop import TrainConfig, TrainHistory, train
from modelsteal.training.losses import CrossEntropy, UniformCrossEntropy


class Recipe(ABC):
    """A way of training a classifier on a dataset's splits.

    Class attributes: ``name`` (registry name), ``strength_param`` (the option a sweep varies as a
    defense's strength, or ``None``), ``example_options`` (valid options for the generic tests).
    """

    name: ClassVar[str] = ""
    strength_param: ClassVar[str | None] = None
    example_options: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def fit(
        self,
        model: nn.Module,
        data: DatasetSplits,
        *,
        config: TrainConfig,
        generator: torch.Generator,
        device: torch.device | str,
        progress: bool | str = False,
    ) -> tuple[nn.Module, TrainHistory]:
        """Train ``model`` on ``data.x_train`` (selecting on ``data.x_val``); returns the trained module
        (the same object, or a replacement when the recipe must change layers) and its history."""

    def options(self) -> dict[str, Any]:
        """The recipe's options, recorded in checkpoints and cache keys."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.options()}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


_RECIPES: Registry[type[Recipe]] = Registry("recipe", package="modelsteal.training")


def register_recipe(name: str) -> Callable[[type[Recipe]], type[Recipe]]:
    """Class decorator adding a recipe to the registry."""
    return _RECIPES.register(name)


def available_recipes() -> list[str]:
    """Names of every registered recipe."""
    return _RECIPES.names()


def recipe_class(name: str) -> type[Recipe]:
    """The recipe class registered under ``name`` (``ValueError`` naming the known ones otherwise)."""
    return _RECIPES.get(name)


def make_recipe(name: str, **options: Any) -> Recipe:
    """Instantiate recipe ``name`` with ``options``; a one-line ``ValueError`` names a wrong option (checked
    against the constructor's signature before it runs, :meth:`~modelsteal._registry.Registry.build`)."""
    return _RECIPES.build(name, **options)


@register_recipe("plain")
class Plain(Recipe):
    """Cross-entropy on the training split with mini-batch SGD (the paper's victims, Orekondy et al. 2020)."""

    def fit(self, model, data, *, config, generator, device, progress=False):  # noqa: D102
        history = train(model, data.x_train, data.y_train, config=config, val=(data.x_val, data.y_val),
                        generator=generator, device=device, progress=progress)
        return model, history


def match_shape(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Images ``x`` resized (bilinear) and converted (grey ↔ RGB) to ``shape = (C, H, W)``."""
    if x.shape[1] != shape[0]:
        if x.shape[1] == 3 and shape[0] == 1:
            x = x.mean(dim=1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, shape[0], -1, -1)
        else:
            raise ValueError(f"cannot turn {x.shape[1]}-channel images into {shape[0]}-channel ones")
    if tuple(x.shape[2:]) != tuple(shape[1:]):
        x = F.interpolate(x, size=tuple(shape[1:]), mode="bilinear", align_corners=False)
    return x.contiguous()


@register_recipe("outlier-exposure")
class OutlierExposure(Recipe):
    """Outlier exposure (Hendrycks et al., *Deep Anomaly Detection with Outlier Exposure*, ICLR 2019), the
    defender's training in Adaptive Misinformation (Kariyappa & Qureshi, CVPR 2020, Eq. 6):

        E_{(x,y) ∼ D_in} [ CE(f(x), y) ] + λ · E_{x' ∼ D_out} [ CE(f(x'), U) ]

    ``weight`` is λ (0.5, Hendrycks et al.'s value for vision); ``outliers`` names a registered dataset
    (AM uses KMNIST for MNIST and Fashion-MNIST: ``kana`` here), whose training split is resized to the
    victim's inputs; each step draws ``outlier_batch_ratio × batch_size`` outliers (Hendrycks et al.: 2).
    """

    strength_param = "weight"
    example_options = {"weight": 0.5, "outliers": "letters"}  # not the test victims' digits

    def __init__(self, *, weight: float = 0.5, outliers: str = "kana", outlier_batch_ratio: float = 2.0,
                 data_dir: str | None = None) -> None:
        if not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"recipe outlier-exposure: weight (λ) must be a number >= 0, got {weight!r}")
        key = str(outliers).strip().lower().replace("_", "-")
        known = available_datasets()
        if key not in known:
            raise ValueError(f"recipe outlier-exposure: unknown outliers dataset {outliers!r}; known: "
                             f"{', '.join(known)}")
        if not outlier_batch_ratio > 0:
            raise ValueError(f"recipe outlier-exposure: outlier_batch_ratio must be > 0, got {outlier_batch_ratio}")
        self.weight, self.outliers, self.ratio, self.data_dir = float(weight), key, float(outlier_batch_ratio), data_dir

    def options(self) -> dict[str, Any]:
        return {"weight": self.weight, "outliers": self.outliers, "outlier_batch_ratio": self.ratio}

    def check_victim_data(self, dataset: str) -> None:
        """Refuse the victim's own dataset as its outliers (a one-line error, before any training)."""
        if dataset.strip().lower().replace("_", "-") == self.outliers:
            raise ValueError(f"recipe outlier-exposure: outliers={self.outliers!r} is the victim's own dataset; "
                             "choose another (e.g. kana or letters)")

    def fit(self, model, data, *, config, generator, device, progress=False):  # noqa: D102
        self.check_victim_data(data.name)
        out = load_dataset(self.outliers, data_dir=self.data_dir)
        x_out = match_shape(out.x_train, data.input_shape)
        loss = CrossEntropy() + UniformCrossEntropy(weight=self.weight)
        history = train(model, data.x_train, data.y_train, config=config, loss=loss, streams={"outliers": x_out},
                        stream_batch_size=max(1, round(self.ratio * config.batch_size)),
                        val=(data.x_val, data.y_val), generator=generator, device=device, progress=progress)
        history.info["outliers"] = {"dataset": self.outliers, "size": len(x_out)}
        return model, history
