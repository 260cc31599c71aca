"""Name → class registries shared by attacks, defenses and recipes, and the one place their options are checked.

Options arrive from the command line (``--defense-option norm=l2``) and from YAML (``options: {norm: l2}``).
:func:`check_options` compares them with the constructor's signature *before* the constructor runs, so a
user's typo is a one-line ``ValueError`` listing the valid options, while a ``TypeError`` raised inside a
constructor (a bug) keeps its traceback.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=type)

_KEYWORDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters ``cls(...)`` accepts, following ``**kwargs`` that are forwarded to a base
    class's ``__init__`` up the MRO; ``None`` when some ``**kwargs`` reach no named parameters (anything goes);
    ``{}`` for a class that defines no ``__init__`` at all (it takes no argument)."""
    params: dict[str, inspect.Parameter] = {}
    seen_init = False
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            # no class defines __init__: object's takes no argument (``Plain(weight=0.5)`` is a TypeError)
            return None if seen_init else {}
        seen_init = True
        open_kwargs = False
        for p in inspect.signature(init).parameters.values():
            if p.kind == inspect.Parameter.VAR_KEYWORD:
                open_kwargs = True
            elif p.kind in _KEYWORDS and p.name != "self":
                params.setdefault(p.name, p)
        if not open_kwargs:
            return params
    return None


def _type_hints(cls: type) -> dict[str, Any]:
    if dataclasses.is_dataclass(cls):
        try:
            return typing.get_type_hints(cls)
        except Exception:  # noqa: BLE001
            return {}
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            hints.update(typing.get_type_hints(init))
        except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is simply not checked
            continue
    return hints


def _accepts(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits the annotation ``hint``; ``None`` when the annotation is too rich to check."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        verdicts = [_accepts(value, h) for h in typing.get_args(hint)]
        return True if any(verdicts) else (None if None in verdicts else False)
    if origin is typing.Literal:  # the constructor checks the value itself (it may accept "L1" for "l1")
        return isinstance(value, tuple(type(v) for v in typing.get_args(hint)))
    if hint is None or hint is type(None):
        return value is None
    if origin is not None:
        hint = origin
    if not isinstance(hint, type):
        return None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is collections.abc.Callable:
        return callable(value)
    if hint in (list, tuple, collections.abc.Sequence):
        return isinstance(value, list | tuple)
    return isinstance(value, hint)


#: one value of each kind the command line (``parse_value``) and YAML can give, besides ``None``
_PLAIN_SAMPLES = ("text", 1, 0.5, True, [1], {"key": 1})
_PLAIN_TYPES = (str, int, float, bool, type(None), list, tuple, dict)


def python_only(hint: Any) -> bool:
    """Whether the annotation ``hint`` admits no value that text or YAML can give (``nn.Module | None``,
    ``Tensor``, a callable): such a parameter takes a Python object, so it is neither listed among the options
    nor accepted as one from the command line or a config. Unresolved annotations count as plain."""
    return all(_accepts(v, hint) is False for v in _PLAIN_SAMPLES)


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "none"}


def _describe(hint: Any) -> str:
    """``int | None`` → ``an integer or none``."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    hint = origin or hint
    if hint in _NAMES:
        return _NAMES[hint]
    return f"a {hint.__name__}" if isinstance(hint, type) else str(hint)


def _describe_object(hint: Any) -> str:
    """``nn.Module | None`` → ``a Module`` (``None`` is the default, not what a caller passes)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(h) for h in typing.get_args(hint) if h is not type(None))
    return _describe(hint)


def check_options(
    cls: type,
    options: Mapping[str, Any],
    *,
    kind: str,
    provided: Collection[str] = (),
    hints: Mapping[str, str] | None = None,
    label: str | None = None,
    noun: str = "option",
) -> None:
    """Check ``options`` against the constructor of ``cls`` without calling it.

    ``provided`` are the parameters the caller fills itself (an attack's ``transfer_set``, ``device``): a user
    may not set them and need not give them. ``hints`` say how to give a missing required parameter (MAD's
    ``epsilon``: ``"pass --strength E"``). ``label`` names the thing in messages (default ``kind 'name'``),
    ``noun`` what its options are called (``key`` in YAML). Raises a one-line ``ValueError`` naming the wrong
    option and the valid ones; values whose annotation is a plain type (``int``, ``float``, ``str``, a
    ``Literal``…) are type-checked too. Parameters that take a Python object (:func:`python_only`, such as
    MAD's ``surrogate``) are not listed as valid and refuse plain values (text, numbers, lists, ``None``); a
    Python caller may still pass such an object.
    """
    params = constructor_parameters(cls)
    label = label or f"{kind} {getattr(cls, 'name', '') or cls.__name__!r}"
    if params is None:
        return
    types_ = _type_hints(cls)
    hint_of = {n: types_.get(n, p.annotation) for n, p in params.items()}
    objects = {n for n in params if n not in provided and python_only(hint_of[n])}
    settable = [n for n in params if n not in provided and n not in objects]
    taken = sorted(set(options) & set(provided))
    if taken:
        raise ValueError(f"{noun} {taken[0]} of {label} is set by modelsteal itself; valid: {', '.join(settable)}")
    plain = sorted(n for n in set(options) & objects if isinstance(options[n], _PLAIN_TYPES))
    if plain:
        what = _describe_object(hint_of[plain[0]])
        raise ValueError(f"{noun} {plain[0]} of {label} takes a Python object ({what}), which the command line "
                         f"and YAML cannot give; valid: {', '.join(settable) or 'none'}")
    unknown = sorted(set(options) - set(settable) - objects)
    if unknown:
        valid = ", ".join(settable) or "none"
        s = "s" if len(unknown) > 1 else ""
        raise ValueError(f"unknown {noun}{s} {', '.join(unknown)} for {label}; valid: {valid}")
    required = [n for n in settable if params[n].default is inspect.Parameter.empty and n not in options]
    if required:
        hint = (hints or {}).get(required[0])
        if hint:
            raise ValueError(f"{label} needs {required[0]}: {hint}")
        raise ValueError(f"{label} needs {noun}(s) {', '.join(required)}")
    for name, value in options.items():
        hint = hint_of[name]
        if _accepts(value, hint) is False:
            raise ValueError(f"{noun} {name}={value!r} of {label} must be {_describe(hint)}")


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
        key = name.strip().lower().replace("_", "-") if isinstance(name, str) else None
        if key not in self.names():
            raise self.unknown(name)
        return self._classes[key]

    def unknown(self, name: Any) -> ValueError:
        """The one message for a name that is not registered: ``unknown architecture 'vgg'; known
        architectures: cnn, lenet, …`` (for a caller that reads names its own way, such as :func:`build_model`)."""
        return ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")

    def check_options(
        self, name: str, options: Mapping[str, Any], *, provided: Collection[str] = (),
        hints: Mapping[str, str] | None = None,
    ) -> T:
        """The class registered under ``name``, after :func:`check_options` accepted ``options`` for it."""
        cls = self.get(name)
        check_options(cls, options, kind=self.kind, provided=provided, hints=hints)
        return cls

    def build(self, name: str, /, **options: Any) -> Any:
        """``cls(**options)`` for the class registered under ``name``, options checked first."""
        return self.check_options(name, options)(**options)

    def as_dict(self) -> dict[str, T]:
        """Every registered name and what it names, in registration order (a copy)."""
        importlib.import_module(self.package)
        return dict(self._classes)
