"""Ownership verification: is a suspect model derived from the victim? Each verifier returns a p-value and a
:class:`Verdict`; verifiers register themselves by name when imported here (``--method dawn``)."""

from modelsteal.ownership.base import (
    NotFittedError,
    Verdict,
    Verifier,
    as_suspect,
    available_verifiers,
    binomial_min_queries,
    make_verifier,
    register_verifier,
    verifier_class,
)
from modelsteal.ownership.dataset_inference import DatasetInference
from modelsteal.ownership.dawn import DAWNVerifier
from modelsteal.ownership.watermark import EWEVerifier

__all__ = ["DAWNVerifier", "DatasetInference", "EWEVerifier", "NotFittedError", "Verdict", "Verifier", "as_suspect",
           "available_verifiers", "binomial_min_queries", "make_verifier", "register_verifier", "verifier_class"]
