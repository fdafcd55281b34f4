"""Checking the operator's arguments, with messages that name the value and the limit."""

from __future__ import annotations

import math
import time

from .exceptions import InvalidArgumentError

__all__ = ["check_limit", "check_seconds", "resolve_now", "window_start"]


def resolve_now(now_ms: int | None) -> int:
    return time.time_ns() // 1_000_000 if now_ms is None else int(now_ms)


def check_seconds(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        limit = ">= 0" if allow_zero else "> 0"
        raise InvalidArgumentError(f"{name} must be {limit} seconds, got {value!r}")
    return float(value)


def check_limit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def window_start(now_ms: int, since_seconds: float, *, name: str = "since_seconds") -> int:
    return now_ms - int(check_seconds(name, since_seconds) * 1000)
