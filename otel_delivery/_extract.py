"""Turning decorator arguments into per-call attribute values.

Every attribute argument of a decorator is one of:

* a plain value (``channel="telegram"``), the same on every call;
* ``arg("message.chat.id")``: a parameter of the decorated function by name,
  followed by attribute or key lookups;
* any other callable, called with exactly the decorated function's arguments
  (``recipient=lambda chat_id, text: chat_id``).

Extraction is worked out once, when the function is decorated. At call time a
failing or junk-returning extractor only loses that one attribute: the problem is
counted and logged at a limited rate, and the call runs unchanged.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._attributes import ATTRIBUTE_VALUE_LIMIT

__all__ = [
    "ExtractSpec", "Extractor", "arg", "coerce_value", "compile_extractor", "compile_values",
]

#: What a decorator attribute argument may be.
ExtractSpec = Any
#: A compiled extractor: takes the call's (args, kwargs) and returns a raw value.
Extractor = Callable[[tuple[Any, ...], dict[str, Any]], Any]


class JunkValue(Exception):
    """An extractor returned something that is not a string, number or bool."""


@dataclass(frozen=True)
class ArgPath:
    """A parameter of the decorated function, then attribute/key lookups."""

    path: str

    def __post_init__(self) -> None:
        parts = self.path.split(".")
        if not self.path or any(not p.isidentifier() and not p.isdigit() for p in parts):
            raise ValueError(
                f"arg() takes a parameter name followed by .attribute or .key parts, "
                f"like 'message.chat.id'; got {self.path!r}"
            )
        if not parts[0].isidentifier():
            raise ValueError(f"arg() path must start with a parameter name, got {self.path!r}")


def arg(path: str) -> ArgPath:
    """Take an attribute's value from the decorated function's arguments.

    The first part names a parameter; each further part is an attribute, or a key
    when the value is a mapping:

    >>> @deliver(recipient=arg("message.chat.id"))  # doctest: +SKIP
    ... def send(self, message): ...
    """
    return ArgPath(path)


def _lookup(value: Any, part: str) -> Any:
    if isinstance(value, Mapping):
        if part in value:
            return value[part]
        if part.isdigit() and int(part) in value:
            return value[int(part)]
    if part.isdigit() and isinstance(value, (list, tuple)):
        return value[int(part)]
    return getattr(value, part)


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def compile_extractor(spec: ExtractSpec, func: Callable[..., Any]) -> Extractor | None:
    """An extractor for ``spec``, or None when ``spec`` is a static value.

    Raises ValueError at decoration time when ``arg()`` names a parameter that the
    function does not have, so a typo shows up at import, not as missing data.
    """
    if isinstance(spec, ArgPath):
        return _compile_path(spec, func)
    if callable(spec):
        user_fn: Callable[..., Any] = spec

        def call_user(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return user_fn(*args, **kwargs)

        return call_user
    return None


def compile_values(
    specs: Mapping[str, ExtractSpec], func: Callable[..., Any]
) -> tuple[dict[str, Any], list[tuple[str, Extractor]]]:
    """Split a decorator's value arguments into fixed values and per-call extractors
    (arguments left at None are dropped)."""
    static: dict[str, Any] = {}
    extractors: list[tuple[str, Extractor]] = []
    for name, spec in specs.items():
        if spec is None:
            continue
        extractor = compile_extractor(spec, func)
        if extractor is None:
            static[name] = spec
        else:
            extractors.append((name, extractor))
    return static, extractors


def _compile_path(spec: ArgPath, func: Callable[..., Any]) -> Extractor:
    root, *rest = spec.path.split(".")
    sig = _signature(func)
    position: int | None = None
    has_var_kwargs = False
    if sig is not None:
        names = list(sig.parameters)
        params = sig.parameters
        has_var_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        if root in params:
            kind = params[root].kind
            if kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                position = names.index(root)
        elif not has_var_kwargs:
            raise ValueError(
                f"arg({spec.path!r}): {getattr(func, '__qualname__', func)!r} has no parameter "
                f"{root!r} (it has: {', '.join(names) or 'none'})"
            )
        default = params[root].default if root in params else inspect.Parameter.empty
    else:
        default = inspect.Parameter.empty

    def extract(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if root in kwargs:
            value = kwargs[root]
        elif position is not None and position < len(args):
            value = args[position]
        elif default is not inspect.Parameter.empty:
            value = default
        else:
            return None
        for part in rest:
            if value is None:
                return None
            value = _lookup(value, part)
        return value

    return extract


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT_TEXT = re.compile(r"[+-]?[0-9]+", re.ASCII)


def coerce_value(value: Any, *, as_int: bool = False) -> str | int | float | bool | None:
    """Make an extracted value safe for a span attribute and a store column.

    None means "not known" and is dropped quietly. Strings are cut to
    ATTRIBUTE_VALUE_LIMIT characters. Anything that is not a string, number or
    bool raises JunkValue, which the caller counts.
    """
    if value is None:
        return None
    if as_int:
        if isinstance(value, bool):
            raise JunkValue(f"expected an integer, got bool {value!r}")
        if isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise JunkValue("integer out of the 64-bit range spans and SQLite can hold")
            return value
        if isinstance(value, str):
            # ASCII digits only: str.isdigit() also takes "²", which int() refuses, and
            # a string of thousands of digits would be slow to convert and too big.
            text = value.strip()
            if len(text) <= 20 and _INT_TEXT.fullmatch(text):
                number = int(text)
                if _INT64_MIN <= number <= _INT64_MAX:
                    return number
            raise JunkValue("expected an integer, got a string that is not one SQLite can hold")
        raise JunkValue(f"expected an integer, got {type(value).__name__}")
    if isinstance(value, str):
        # Lone surrogates cannot be encoded for export or storage.
        text = value.encode("utf-8", "replace").decode("utf-8")
        return text[:ATTRIBUTE_VALUE_LIMIT]
    if isinstance(value, int) and not isinstance(value, bool) and not (
        _INT64_MIN <= value <= _INT64_MAX
    ):
        return str(value)[:ATTRIBUTE_VALUE_LIMIT]  # keep the digits, as text
    if isinstance(value, (bool, int, float)):
        return value
    raise JunkValue(f"expected a string, number or bool, got {type(value).__name__}")
