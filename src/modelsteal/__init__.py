"""modelsteal: measure how easily a prediction API can be cloned, and defend it.

Public names only; importing the package has no side effects.
"""

from modelsteal.blackbox import BlackBox, BudgetExceededError, PredictionAPI, QueryBudget, QueryRefusedError

__all__ = ["BlackBox", "BudgetExceededError", "PredictionAPI", "QueryBudget", "QueryRefusedError", "__version__",
           "audit"]
__version__ = "0.1.0"


def audit(target, **options):  # noqa: ANN001, ANN003, ANN201 - see modelsteal.audit.core.audit
    """Audit a model file or prediction API: :func:`modelsteal.audit.core.audit` (imported on first use)."""
    from modelsteal.audit.core import audit as _audit

    return _audit(target, **options)
