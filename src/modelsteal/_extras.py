"""Optional dependencies (the extras of ``pyproject.toml``), imported where they are needed."""

from __future__ import annotations

import importlib
from typing import Any


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed (a ``ValueError`` too, so the CLI reports it as one line)."""


def require_extra(module: str, *, extra: str, purpose: str) -> Any:
    """Import ``module``, or raise :class:`MissingDependencyError` saying ``purpose`` needs ``pip install
    'modelsteal[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"{purpose} need(s) {module!r}: pip install 'modelsteal[{extra}]'") from None
