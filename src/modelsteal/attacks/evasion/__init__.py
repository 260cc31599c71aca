"""Attacks aimed at one defense: an attacker who knows how the defense answers and adapts to it.

- ``knockoff-filter`` (:class:`ConfidenceFilterKnockoff`): Knockoff Nets that trains only on answers whose
  top-1 confidence passes a threshold (Kariyappa et al., CVPR 2020, Sec. 6, against Adaptive Misinformation).
"""

from modelsteal.attacks.evasion.confidence_filter import ConfidenceFilterKnockoff

__all__ = ["ConfidenceFilterKnockoff"]
