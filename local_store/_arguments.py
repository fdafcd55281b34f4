"""Checking the operator's arguments, with messages that name the value and the limit."""

from __future__ import annotations

import math
import time

from .exceptions import InvalidArgumentError

__all__ = ["MAX_LIMIT", "MAX_SECONDS", "check_limit", "check_seconds", "resolve_now",
           "window_start"]

# The longest duration taken: 10,000 weeks (192 years) reaches back before 1970 from
# any date a store holds, and keeps every time computed from it in SQLite's 64-bit
# integers.
MAX_SECONDS = 10_000 * 604_800
# The largest count SQLite takes (a LIMIT, a batch size).
MAX_LIMIT = 2**63 - 1


def resolve_now(now_ms: int | None) -> int:
    return time.time_ns() // 1_000_000 if now_ms is None else int(now_ms)


def check_seconds(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        limit = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{name} must be {limit} seconds, got {value!r}")
    if value > MAX_SECONDS:
        raise InvalidArgumentError(
            f"{name} must be at most {MAX_SECONDS} seconds (10000w), got {value!r}"
        )
    return float(value)


def check_limit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidArgumentError(
            f"{name} must be a whole number from 1 to {MAX_LIMIT}, got {value!r}"
        )
    return value


def window_start(now_ms: int, since_seconds: float, *, name: str = "since_seconds") -> int:
    return now_ms - int(check_seconds(name, since_seconds) * 1000)
