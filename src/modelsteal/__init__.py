"""modelsteal: measure how easily a prediction API can be cloned, and defend it.

Public names only; importing the package has no side effects.
"""

from modelsteal.blackbox import BlackBox, BudgetExceededError, PredictionAPI, QueryBudget, QueryRefusedError

__all__ = ["BlackBox", "BudgetExceededError", "PredictionAPI", "QueryBudget", "QueryRefusedError", "__version__",
           "audit"]
__version__ = "0.1.0"



def __getattr__(name: str):  # noqa: ANN202 - lazy: `modelsteal.audit(...)` imports the audit package on first use
    if name == "audit":
        import importlib

        return importlib.import_module("modelsteal.audit")  # a callable module: modelsteal.audit(target, ...)
    raise AttributeError(f"module 'modelsteal' has no attribute {name!r}")
