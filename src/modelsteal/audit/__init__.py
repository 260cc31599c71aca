"""The owner's audit: how many queries (and how much money) it takes to clone a model, and which defense to
deploy (``modelsteal audit``, :func:`audit`; docs/audit.md).

The package itself is callable, so ``modelsteal.audit(target, pool=…, test=…)`` is :func:`audit` whether or not
the package was imported before (importing it makes ``modelsteal.audit`` this module)."""

import sys
import types

from modelsteal.audit.core import DEFAULT_DEFENSES, audit, parse_defense
from modelsteal.audit.ladder import FIRST_RUNG, budget_ladder, first_reaching
from modelsteal.audit.target import Target, open_target

__all__ = ["DEFAULT_DEFENSES", "FIRST_RUNG", "Target", "audit", "budget_ladder", "first_reaching", "open_target",
           "parse_defense"]


class _CallableModule(types.ModuleType):
    """``modelsteal.audit(...)`` calls :func:`~modelsteal.audit.core.audit`."""

    def __call__(self, target, **options):  # noqa: ANN001, ANN003, ANN204
        return audit(target, **options)


sys.modules[__name__].__class__ = _CallableModule
