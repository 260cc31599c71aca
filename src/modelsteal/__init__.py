"""modelsteal: measure how easily a prediction API can be cloned, and defend it.

Public names only; importing the package has no side effects.
"""

from modelsteal.blackbox import BlackBox, BudgetExceededError, PredictionAPI, QueryBudget, QueryRefusedError

__all__ = ["BlackBox", "BudgetExceededError", "PredictionAPI", "QueryBudget", "QueryRefusedError", "__version__"]
__version__ = "0.1.0"
