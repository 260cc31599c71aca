"""Evaluation metrics: utility, non-replicability, fidelity, perturbation size, detection rates."""

from modelsteal.metrics.posterior import (
    argmax_accuracy,
    attacker_accuracy,
    detection_rates,
    fidelity,
    hellinger_distance,
    l1_distance,
    l2_distance,
    perturbation_summary,
)

__all__ = [
    "argmax_accuracy", "attacker_accuracy", "detection_rates", "fidelity", "hellinger_distance", "l1_distance",
    "l2_distance", "perturbation_summary",
]
