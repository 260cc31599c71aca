"""Training: the one loop (:func:`train`), loss objects, callbacks and the named recipes.

Everything that trains a model in modelsteal — victims, clones, attack substitutes, defense models — goes
through :func:`train`; recipes (``plain``, ``outlier-exposure``, ``dp-sgd``, ``ewe``) say how a victim is trained.
This package sits below attacks, defenses, detectors, metrics and experiment, and imports only ``data`` and
``models``.
"""

from modelsteal.training.dp import DPSGD
from modelsteal.training.ewe import EWE, EntangledLoss, snnl, watermark_rate, watermark_record
from modelsteal.training.loop import (
    Augment,
    Batches,
    Callback,
    EarlyStopping,
    LoaderBatches,
    ProgressBar,
    ShuffledBatches,
    TrainConfig,
    TrainHistory,
    TrainState,
    accuracy,
    make_optimizer,
    model_device,
    predict_logits,
    train,
    unwrap,
)
from modelsteal.training.losses import (
    CrossEntropy,
    Loss,
    ReverseCrossEntropy,
    ScaledLoss,
    SumLoss,
    UniformCrossEntropy,
    soft_cross_entropy,
)
from modelsteal.training.recipes import (
    OutlierExposure,
    Plain,
    Recipe,
    available_recipes,
    make_recipe,
    match_shape,
    recipe_class,
    register_recipe,
)

__all__ = [
    "DPSGD", "EWE", "Augment", "Batches", "Callback", "CrossEntropy", "EarlyStopping", "EntangledLoss",
    "LoaderBatches", "Loss",
    "OutlierExposure", "Plain", "ProgressBar", "Recipe", "ReverseCrossEntropy", "ScaledLoss", "ShuffledBatches",
    "SumLoss", "TrainConfig", "TrainHistory", "TrainState", "UniformCrossEntropy", "accuracy",
    "available_recipes", "make_recipe", "make_optimizer", "match_shape", "model_device", "predict_logits",
    "recipe_class", "register_recipe", "snnl", "soft_cross_entropy", "train", "unwrap", "watermark_rate",
    "watermark_record",
]
