"""Making a row's values fit its columns before SQLite sees them.

A row comes from span attributes that anyone can set (a list on the send span, an
attempt number of 5,000 digits, a timestamp from a clock that jumped), and from
journal lines that anyone who can write the store's directory can edit. A value
that does not fit its column is replaced by NULL and reported, so only that value
is lost, never the row, and never the batch or the replay it is in.

* Whole-number columns take an int (or bool, or integral float) within SQLite's
  64-bit range, or a string of ASCII digits with an optional sign. Attempt numbers
  must also be at least 1.
* Real columns take a finite int or float.
* Text columns take a string (lone surrogates replaced, cut to
  :data:`TEXT_LIMIT` characters), an int or float (SQLite stores it as text), or a
  flat list of those (stored as JSON text). Anything else is a bad value.
* A time more than :data:`FUTURE_TOLERANCE_MS` after the writer's clock is set to
  that clock's time and reported as ``future_timestamp``: a row dated in the future
  would stay in every recent window, and out of reach of prune, until then.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import MutableMapping
from typing import Any

from ._rows import TABLE_COLUMNS

__all__ = [
    "BAD_VALUE", "FUTURE_TIMESTAMP", "FUTURE_TOLERANCE_MS", "INT64_MAX", "INT64_MIN",
    "REQUIRED_COLUMNS", "TEXT_LIMIT", "clean_row",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Longer than any text the decorators write (error texts are cut at 512); a bound on
# what an attribute set by hand can put into one cell.
TEXT_LIMIT = 8192
FUTURE_TOLERANCE_MS = 5 * 60 * 1000
# The drop reasons reported.
BAD_VALUE = "bad_value"
FUTURE_TIMESTAMP = "future_timestamp"

_INT_COLUMNS = frozenset({
    "attempt", "max_attempts", "final", "started_at_ms", "ended_at_ms", "received_at_ms",
    "writer_id", "reply_produced",
})
_POSITIVE_COLUMNS = frozenset({"attempt", "max_attempts"})
_REAL_COLUMNS = frozenset({"duration_ms", "retry_after_seconds"})
_TIME_COLUMNS = frozenset({"started_at_ms", "ended_at_ms", "received_at_ms"})
# NOT NULL columns without which a row cannot be written (``attempt`` is derived).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "attempts": ("delivery_id", "trace_id", "span_id", "status", "started_at_ms"),
    "inbound_messages": ("trace_id", "span_id", "status", "received_at_ms"),
    "ai_runs": ("trace_id", "span_id", "status", "started_at_ms"),
    "enqueues": ("trace_id", "span_id", "status", "started_at_ms"),
}
# Each table's columns with the kind of value each takes.
_KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    table: tuple(
        (c, "int" if c in _INT_COLUMNS else "real" if c in _REAL_COLUMNS else "text")
        for c in columns
    )
    for table, columns in TABLE_COLUMNS.items()
}
_DIGITS = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)


class _Bad(Exception):
    pass


def _show(value: Any) -> str:
    """A short description of a bad value for the ``drops`` table (never the whole)."""
    try:
        text = repr(value) if not isinstance(value, (list, tuple, dict)) else type(value).__name__
    except Exception:
        text = type(value).__name__
    return text if len(text) <= 40 else text[:39] + "…"


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise _Bad
        number = int(value)
    elif isinstance(value, str) and len(value) <= 21 and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise _Bad
    if not INT64_MIN <= number <= INT64_MAX:
        raise _Bad
    return number


def _as_real(value: Any) -> float | int:
    if isinstance(value, bool):
        raise _Bad
    if isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise _Bad


def _as_text(value: Any) -> str | int | float:
    if isinstance(value, str):
        text: str = value[:TEXT_LIMIT] if len(value) > TEXT_LIMIT else value
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: SQLite cannot take them
            text = text.encode("utf-8", "replace").decode("utf-8")
        return text
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else str(value)[:TEXT_LIMIT]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad
        return value
    if isinstance(value, (list, tuple)) and len(value) <= 1000 and all(
        v is None or isinstance(v, (str, int, float, bool)) for v in value
    ):
        # OpenTelemetry allows flat sequences as attribute values: kept, as JSON text.
        items = [v if not isinstance(v, str) else v[:TEXT_LIMIT] for v in value]
        try:
            text = json.dumps(items, ensure_ascii=False)
            text.encode("utf-8")
        except (TypeError, ValueError):
            raise _Bad from None
        return text[:TEXT_LIMIT]
    raise _Bad


def clean_row(
    table: str, row: MutableMapping[str, Any], now_ms: int
) -> list[tuple[str, str]]:
    """Make ``row``'s values for ``table`` fit their columns, in place.

    Returns the problems found, as (drop reason, detail): ``bad_value`` for a value
    replaced by NULL, ``future_timestamp`` for a time set back to ``now_ms``. Keys
    that are not columns of ``table`` are left alone.

    >>> row = {"attempt": "--1", "channel": "tg", "started_at_ms": 1}
    >>> clean_row("attempts", row, 1000)
    [('bad_value', "attempts.attempt: '--1'")]
    >>> row["attempt"] is None
    True
    """
    problems: list[tuple[str, str]] = []
    for column, kind in _KINDS[table]:
        value = row.get(column)
        if value is None:
            continue
        # The usual values, checked first: what the decorators and the processor write.
        vtype = type(value)
        if kind == "text" and vtype is str and len(value) <= TEXT_LIMIT and value.isascii():
            continue
        if kind == "int" and vtype is int and INT64_MIN <= value <= INT64_MAX and not (
            column in _POSITIVE_COLUMNS and value < 1
        ) and not (column in _TIME_COLUMNS and value > now_ms + FUTURE_TOLERANCE_MS):
            continue
        try:
            if kind == "int":
                clean: Any = _as_int(value)
                if column in _POSITIVE_COLUMNS and clean < 1:
                    raise _Bad
                if column in _TIME_COLUMNS and clean > now_ms + FUTURE_TOLERANCE_MS:
                    problems.append((FUTURE_TIMESTAMP, f"{table}.{column}: {clean} > {now_ms}"))
                    clean = now_ms
            elif kind == "real":
                clean = _as_real(value)
            else:
                clean = _as_text(value)
        except _Bad:
            problems.append((BAD_VALUE, f"{table}.{column}: {_show(value)}"))
            clean = None
        except Exception:  # a str subclass whose methods raise, say
            problems.append((BAD_VALUE, f"{table}.{column}: {type(value).__name__}"))
            clean = None
        if clean is not value:
            row[column] = clean
    return problems


def missing_required(table: str, row: MutableMapping[str, Any]) -> list[str]:
    """The NOT NULL columns ``row`` has no value for (after :func:`clean_row`)."""
    return [c for c in REQUIRED_COLUMNS.get(table, ()) if row.get(c) is None]
