"""Evaluation metrics: utility, non-replicability, fidelity, perturbation size, detection rates."""

from modelsteal.metrics.defense_cost import EVALUATION_CLIENT, defense_cost
from modelsteal.metrics.extraction import extraction_accuracy, extraction_error, r_test, r_unif, total_variation
from modelsteal.metrics.posterior import (
    angular_deviation,
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
    "EVALUATION_CLIENT", "defense_cost",
    "angular_deviation",
    "argmax_accuracy", "attacker_accuracy", "detection_rates", "fidelity", "hellinger_distance", "l1_distance",
    "l2_distance", "perturbation_summary",
    "extraction_accuracy", "extraction_error", "r_test", "r_unif", "total_variation",
]
