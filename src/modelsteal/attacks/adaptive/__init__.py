"""Attackers that know the defense: query smoothing, restoration (D-DAE) and semi-supervised clones."""

from modelsteal.attacks.adaptive.restoration import DDAE, RESTORABLE, Restoration
from modelsteal.attacks.adaptive.semi_supervised import (
    ConsistencyLoss,
    RotationLoss,
    SemiSupervisedClone,
    rotation_batch,
)
from modelsteal.attacks.adaptive.smoothing import QuerySmoothing, combine_answers

__all__ = [
    "DDAE", "RESTORABLE", "ConsistencyLoss", "QuerySmoothing", "Restoration", "RotationLoss", "SemiSupervisedClone",
    "combine_answers", "rotation_batch",
]
