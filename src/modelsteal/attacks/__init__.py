"""Model-stealing attacks. Each registers itself by name; see :func:`available_attacks`."""

from modelsteal.attacks.active_thief import ActiveThief
from modelsteal.attacks.base import Attack, StealResult, attack_class, available_attacks, register_attack
from modelsteal.attacks.jbda import JBDA, JBSelf, JBTopK
from modelsteal.attacks.knockoff import KnockoffNets
from modelsteal.attacks.knockoff_adaptive import AdaptiveKnockoff
from modelsteal.training import TrainConfig  # re-exported: attack options take one

__all__ = [
    "JBDA", "ActiveThief", "AdaptiveKnockoff", "Attack", "JBSelf", "JBTopK", "KnockoffNets", "StealResult",
    "TrainConfig",
    "attack_class", "available_attacks", "register_attack",
]

import modelsteal.attacks.adaptive  # noqa: E402, F401  (registers the attacks that know the defense)
import modelsteal.attacks.dfme  # noqa: E402, F401  (registers DFME)
import modelsteal.attacks.evasion  # noqa: E402, F401  (registers the attacks aimed at one defense)
import modelsteal.attacks.maze  # noqa: E402, F401  (registers MAZE)
import modelsteal.attacks.tramer  # noqa: E402, F401  (registers the Tramèr et al. tabular attacks)
