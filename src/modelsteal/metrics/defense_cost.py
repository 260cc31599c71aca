"""What a defended prediction API costs its honest users (Orekondy et al., ICLR 2020, Sec. 5: utility).

One implementation for every place that reports it: ``modelsteal attack --defense`` and ``modelsteal serve``
print it, and each sweep row records it (``defender_accuracy`` and the perturbation columns).

Example::

    cost = defense_cost(PredictionAPI(victim, defense=MAD(epsilon=0.5)), data.x_test, data.y_test)
    cost["defender_accuracy"], cost["l1_mean"]
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from modelsteal.metrics.posterior import argmax_accuracy, perturbation_summary

# The per-client name under which a defended API is measured; API key names cannot contain ':', so the
# measurement never shares a stateful defense's per-client state with a real client.
EVALUATION_CLIENT = "modelsteal:evaluation"


class DefendedAPI(Protocol):
    """What :func:`defense_cost` needs: the API's answers and the undefended posteriors behind them."""

    def query(self, x: Tensor, *, client: str = ...) -> Tensor: ...

    def posteriors(self, x: Tensor) -> Tensor: ...


def defense_cost(api: DefendedAPI, x: Tensor, y: Tensor, *, client: str = EVALUATION_CLIENT) -> dict[str, float]:
    """The cost of a defended API on labelled data ``(x, y)`` (normally the test split).

    Returns ``victim_accuracy`` (top-1 of the undefended posteriors ``api.posteriors(x)``),
    ``defender_accuracy`` (top-1 of the answers ``api.query(x)``: defense and output format),
    ``label_agreement`` (fraction of answers whose top-1 is the undefended one), and the means and standard
    deviations of the L1, L2 and Hellinger distances between answers and undefended posteriors
    (``l1_mean``, ``l1_std``, … of :func:`~modelsteal.metrics.perturbation_summary`). The answers are asked
    for as ``client`` (default :data:`EVALUATION_CLIENT`), not as any attacker's client.
    """
    clean = api.posteriors(x).cpu()
    defended = api.query(x, client=client).cpu()
    return {
        "victim_accuracy": argmax_accuracy(clean, y),
        "defender_accuracy": argmax_accuracy(defended, y),
        "label_agreement": float((defended.argmax(dim=1) == clean.argmax(dim=1)).double().mean()),
        **perturbation_summary(clean, defended),
    }
