"""Name → class registries shared by attacks and defenses (and anything else selected by name in configs)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Classes registered under names, looked up case-insensitively (``_`` and ``-`` are the same).

    ``package`` is imported before a lookup or a listing, so the built-in classes, which register
    themselves when their modules are imported, are always known.
    """

    def __init__(self, kind: str, *, package: str) -> None:
        self.kind = kind
        self.package = package
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register the class under ``name`` and set its ``name`` attribute."""

        def deco(cls: T) -> T:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} name {name!r} is registered twice")
            cls.name = name
            self._classes[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        importlib.import_module(self.package)
        return sorted(self._classes)

    def get(self, name: str) -> T:
        """The class registered under ``name``; a ``ValueError`` listing the known names otherwise."""
        known = self.names()
        key = name.strip().lower().replace("_", "-")
        if key not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(known)}")
        return self._classes[key]
