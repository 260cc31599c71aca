"""Defenses: each maps ``(x, probs)`` to defended probs and registers itself by name."""

from modelsteal.defenses.base import (
    Defense,
    available_defenses,
    defense_class,
    make_defense,
    register_defense,
)
from modelsteal.defenses.dawn import DAWN
from modelsteal.defenses.identity import Identity
from modelsteal.defenses.mad import MAD, MADArgmax, MADIdentity, MADRandom
from modelsteal.defenses.misinformation import AdaptiveMisinformation
from modelsteal.defenses.noise import RandomNoise
from modelsteal.defenses.reverse_sigmoid import ReverseSigmoid
from modelsteal.defenses.truncation import LabelOnly, Rounding, TopK

__all__ = [
    "DAWN", "MAD", "AdaptiveMisinformation", "Defense", "Identity", "LabelOnly", "MADArgmax", "MADIdentity",
    "MADRandom", "RandomNoise", "ReverseSigmoid", "Rounding", "TopK",
    "available_defenses", "defense_class", "make_defense", "register_defense",
]
