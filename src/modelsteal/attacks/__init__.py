"""Model-stealing attacks. Each registers itself by name; see :func:`available_attacks`."""

from modelsteal.attacks._training import TrainConfig, train_classifier
from modelsteal.attacks.base import Attack, StealResult, attack_class, available_attacks, register_attack
from modelsteal.attacks.jbda import JBDA, JBSelf, JBTopK
from modelsteal.attacks.knockoff import KnockoffNets
from modelsteal.attacks.knockoff_adaptive import AdaptiveKnockoff

__all__ = [
    "JBDA", "AdaptiveKnockoff", "Attack", "JBSelf", "JBTopK", "KnockoffNets", "StealResult", "TrainConfig",
    "attack_class", "available_attacks", "register_attack", "train_classifier",
]

import modelsteal.attacks.tramer  # noqa: E402, F401  (registers the Tramèr et al. tabular attacks)
