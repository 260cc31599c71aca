"""Attacks aimed at one defense: an attacker who knows how the defense answers and adapts to it.

- ``knockoff-filter`` (:class:`ConfidenceFilterKnockoff`): Knockoff Nets that trains only on answers whose
  top-1 confidence passes a threshold (Kariyappa et al., CVPR 2020, Sec. 6, against Adaptive Misinformation).
- ``gate-probe`` (:class:`GateProbe`): Knockoff Nets that spends part of its budget perturbing the inputs whose
  answers were confident, to find more that AM's gate lets through (against Adaptive Misinformation).
- ``sybil`` (:class:`Sybil`): any attack spread across many client keys, each under a stateful detector's
  radar (against PRADA); :class:`KeyPool` joins one HTTP black box per key into one.
- ``interleave`` (:class:`Interleave`): any attack with natural in-distribution queries woven into its stream
  (against PRADA).
- ``prada-jbda`` (:class:`PradaAwareJBDA`): JBDA whose children sit at benign-looking distances (against PRADA).
"""

from modelsteal.attacks.evasion.confidence_filter import ConfidenceFilterKnockoff
from modelsteal.attacks.evasion.gate_probe import GateProbe
from modelsteal.attacks.evasion.interleave import Interleave
from modelsteal.attacks.evasion.prada_jbda import PradaAwareJBDA
from modelsteal.attacks.evasion.sybil import KeyPool, Sybil

__all__ = ["ConfidenceFilterKnockoff", "GateProbe", "Interleave", "KeyPool", "PradaAwareJBDA", "Sybil"]
