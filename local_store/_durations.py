"""Durations as operators type them: ``90s``, ``5m``, ``1h``, ``7d``, ``2w``."""

from __future__ import annotations

import math
import re

from ._arguments import MAX_SECONDS
from .exceptions import InvalidArgumentError

__all__ = ["format_duration", "parse_duration"]

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[smhdw]?)")
_ACCEPTED = (
    "use a number with an optional unit s, m, h, d or w "
    "(e.g. 90s, 5m, 1h, 7d, 2w); a plain number means seconds"
)


def parse_duration(text: str) -> float:
    """Seconds in ``text``; zero is allowed, callers that need more say so.

    >>> parse_duration("90s"), parse_duration("1h"), parse_duration("2w"), parse_duration("30")
    (90.0, 3600.0, 1209600.0, 30.0)
    """
    match = _DURATION.fullmatch(str(text).strip().lower())
    if match is None:
        raise InvalidArgumentError(f"invalid duration {text!r}: {_ACCEPTED}")
    seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"] or "s"]
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise InvalidArgumentError(f"invalid duration {text!r}: too large (at most 10000w)")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of ``seconds`` that :func:`parse_duration` reads back.

    >>> format_duration(3600), format_duration(5400), format_duration(1.5)
    ('1h', '90m', '1.5s')
    """
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
