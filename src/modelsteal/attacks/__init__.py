"""Model-stealing attacks. Each registers itself by name; see :func:`available_attacks`."""

from modelsteal.attacks._training import TrainConfig, train_classifier
from modelsteal.attacks.base import Attack, StealResult, attack_class, available_attacks, register_attack
from modelsteal.attacks.knockoff import KnockoffNets

__all__ = [
    "Attack", "KnockoffNets", "StealResult", "TrainConfig", "attack_class", "available_attacks",
    "register_attack", "train_classifier",
]
