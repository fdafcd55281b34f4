"""The rows the store is written with: each table's columns, and the SQL of each kind.

A row travels as ``(kind, row)``: ``kind`` is a table (``inbound_messages``,
``ai_runs``, ``enqueues``, ``receipts``) or one half of an attempt
(``attempts:start``, ``attempts:end``). :data:`KIND_SQL` and :func:`row_params` are
shared by the indexer (``_indexer.py``) and the replay of a dead writer's journal
(``_replay.py``), so a row replayed after a crash is written exactly as the writer
would have written it. Every statement can be run twice for the same span and leave
one row: a journal line committed just before its process died is replayed again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "DROP_SQL", "END_SQL", "INSERT_SQL", "KIND_SQL", "OUTCOME_COLUMNS", "START_BATCH_SQL",
    "START_SQL", "TABLE_COLUMNS", "attempt_params", "row_params", "table_of",
]

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "inbound_messages": (
        "trace_id", "span_id", "inbound_id", "channel", "sender", "conversation", "status",
        "error_type", "error_text", "received_at_ms", "ended_at_ms", "service",
    ),
    "ai_runs": (
        "trace_id", "span_id", "parent_span_id", "inbound_id", "channel", "agent", "model",
        "conversation", "status", "error_type", "error_text", "reply_produced",
        "started_at_ms", "ended_at_ms", "duration_ms", "service",
    ),
    "enqueues": (
        "trace_id", "span_id", "parent_span_id", "delivery_id", "inbound_id", "channel",
        "recipient", "status", "error_type", "error_text", "started_at_ms", "ended_at_ms",
        "service",
    ),
    "receipts": (
        "channel", "provider_message_id", "status", "at_ms", "recipient", "error_type",
        "error_text", "trace_id", "span_id", "attempt_span_id", "recorded_at_ms", "service",
    ),
    "attempts": (
        "delivery_id", "attempt", "max_attempts", "trace_id", "span_id", "parent_span_id",
        "inbound_id", "channel", "recipient", "status", "error_type", "error_text",
        "failure_class", "final", "started_at_ms", "ended_at_ms", "duration_ms",
        "provider_message_id", "service", "writer_id", "retry_after_seconds",
    ),
}

_ATTEMPT_COLS = TABLE_COLUMNS["attempts"]
# The attempt number, when the caller does not know it, is one more than the
# attempts already recorded for the delivery: derived from appended rows only.
_ATTEMPT_VALUES = ", ".join(
    "COALESCE(?, (SELECT COALESCE(MAX(attempt), 0) + 1 FROM attempts WHERE delivery_id = ?))"
    if c == "attempt"
    else "?"
    for c in _ATTEMPT_COLS
)
# An attempt about to send: a row that is already there (the same span) is kept.
START_SQL = (
    f"INSERT INTO attempts ({', '.join(_ATTEMPT_COLS)}) VALUES ({_ATTEMPT_VALUES}) "
    "ON CONFLICT(span_id) DO NOTHING RETURNING attempt"
)
START_BATCH_SQL = START_SQL.removesuffix(" RETURNING attempt")
# The columns an attempt's outcome sets on its start row.
OUTCOME_COLUMNS = (
    "status", "error_type", "error_text", "failure_class", "final", "ended_at_ms",
    "duration_ms", "provider_message_id", "retry_after_seconds",
)
# An attempt's outcome: fills in its start row, or writes the whole row if the start
# was lost. Writing the same outcome twice leaves the same row.
END_SQL = (
    f"INSERT INTO attempts ({', '.join(_ATTEMPT_COLS)}) VALUES ({_ATTEMPT_VALUES}) "
    "ON CONFLICT(span_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in OUTCOME_COLUMNS)
)
# A span's row is written once: these tables have no unique key on the span, so the
# insert looks for it (by trace_id, which is indexed) and writes nothing if it is there.
INSERT_SQL = {
    table: f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join('?' * len(cols))} "
    f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE trace_id = ? AND span_id = ?)"
    for table, cols in TABLE_COLUMNS.items()
    if table not in ("attempts", "receipts")
}
# A webhook retried by the platform brings the same receipt again: one row.
_RECEIPT_COLS = TABLE_COLUMNS["receipts"]
INSERT_SQL["receipts"] = (
    f"INSERT INTO receipts ({', '.join(_RECEIPT_COLS)}) "
    f"VALUES ({', '.join('?' * len(_RECEIPT_COLS))}) ON CONFLICT DO NOTHING"
)
# The statement that writes each kind of row.
KIND_SQL = {"attempts:start": START_BATCH_SQL, "attempts:end": END_SQL, **INSERT_SQL}

# Adds n to a drop reason's count (reason, n, first_at_ms, last_at_ms, last_error).
DROP_SQL = (
    "INSERT INTO drops (reason, count, first_at_ms, last_at_ms, last_error) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(reason) DO UPDATE SET "
    "count = count + excluded.count, last_at_ms = excluded.last_at_ms, "
    "last_error = COALESCE(excluded.last_error, last_error)"
)


def attempt_params(row: Mapping[str, Any]) -> list[Any]:
    """The parameters of :data:`START_SQL` and :data:`END_SQL` for ``row``."""
    params: list[Any] = []
    for c in _ATTEMPT_COLS:
        params.append(row.get(c))
        if c == "attempt":
            params.append(row.get("delivery_id"))
    return params


def table_of(kind: str) -> str:
    """The table a kind of row goes to: ``attempts:end`` -> ``attempts``."""
    return kind.partition(":")[0]


def row_params(kind: str, row: Mapping[str, Any]) -> list[Any]:
    """The parameters of ``KIND_SQL[kind]`` for ``row``."""
    if kind.startswith("attempts:"):
        return attempt_params(row)
    params = [row.get(c) for c in TABLE_COLUMNS[kind]]
    if kind != "receipts":
        params += (row.get("trace_id"), row.get("span_id"))
    return params
