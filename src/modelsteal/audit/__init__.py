"""The owner's audit: how many queries (and how much money) it takes to clone a model, and which defense to
deploy (``modelsteal audit``, :func:`audit`; docs/audit.md)."""

from modelsteal.audit.core import DEFAULT_DEFENSES, audit, parse_defense
from modelsteal.audit.ladder import FIRST_RUNG, budget_ladder, first_reaching
from modelsteal.audit.target import Target, open_target

__all__ = ["DEFAULT_DEFENSES", "FIRST_RUNG", "Target", "audit", "budget_ladder", "first_reaching", "open_target",
           "parse_defense"]
