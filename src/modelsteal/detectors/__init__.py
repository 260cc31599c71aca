"""Detectors: score each query (higher = more suspicious) and flag those above a calibrated threshold; responses
say what a :class:`~modelsteal.PredictionAPI` answers to flagged queries."""

from modelsteal.detectors.base import (
    Detector,
    NotFittedError,
    available_detectors,
    detector_class,
    make_detector,
    register_detector,
)
from modelsteal.detectors.binary import BinaryClassifier
from modelsteal.detectors.mahalanobis import Mahalanobis
from modelsteal.detectors.msp import MSP
from modelsteal.detectors.odin import ODIN
from modelsteal.detectors.prada import PRADA
from modelsteal.detectors.responses import Response, available_responses, make_response, register_response

__all__ = ["MSP", "ODIN", "PRADA", "BinaryClassifier", "Detector", "Mahalanobis", "NotFittedError", "Response",
           "available_detectors", "available_responses", "detector_class", "make_detector", "make_response",
           "register_detector", "register_response"]
