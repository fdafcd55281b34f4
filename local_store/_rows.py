"""The rows the store is written with: each table's columns, and the SQL of each kind.

A row travels as ``(kind, row)``: ``kind`` is a table (``inbound_messages``,
``ai_runs``, ``enqueues``, ``receipts``) or one half of an attempt
(``attempts:start``, ``attempts:end``). :data:`KIND_SQL` and :func:`row_params` are
used by the indexer (``_indexer.py``), and :data:`REPLAY_SQL` (the same statements,
with a guard where a table has no unique key on the span) by the replay of a dead
writer's journal (``_replay.py``), so a row replayed after a crash is written exactly
as the writer would have written it, and once: a journal line committed just before
its process died is replayed again.

Ids are written in the store's form (``_ids.pack``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._ids import ID_COLUMNS, pack

__all__ = [
    "DROP_SQL", "END_SQL", "INSERT_SQL", "KIND_SQL", "OUTCOME_COLUMNS", "REPLAY_SQL",
    "START_BATCH_SQL", "START_SQL", "TABLE_COLUMNS", "attempt_params", "row_params",
    "table_of",
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
_ATTEMPT_IDS = ID_COLUMNS["attempts"]
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
INSERT_SQL = {
    table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for table, cols in TABLE_COLUMNS.items()
    if table != "attempts"
}
# A webhook retried by the platform brings the same receipt again: one row.
INSERT_SQL["receipts"] += " ON CONFLICT DO NOTHING"
# The statement that writes each kind of row.
KIND_SQL = {"attempts:start": START_BATCH_SQL, "attempts:end": END_SQL, **INSERT_SQL}
# The same, for a replay: a journal line may have been committed just before its
# process died. Tables without a unique key on the span get a guard that finds the
# row (by trace_id, which is indexed: a few rows per trace) and writes nothing then.
# The live indexer never writes a row twice, so it does not pay for the guard.
_GUARDED = frozenset({"inbound_messages", "ai_runs", "enqueues"})
REPLAY_SQL = {
    **KIND_SQL,
    **{
        table: f"INSERT INTO {table} ({', '.join(TABLE_COLUMNS[table])}) "
        f"SELECT {', '.join('?' * len(TABLE_COLUMNS[table]))} "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE trace_id = ? AND span_id = ?)"
        for table in _GUARDED
    },
}

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
        params.append(pack(row.get(c)) if c in _ATTEMPT_IDS else row.get(c))
        if c == "attempt":
            params.append(pack(row.get("delivery_id")))
    return params


def table_of(kind: str) -> str:
    """The table a kind of row goes to: ``attempts:end`` -> ``attempts``."""
    return kind.partition(":")[0]


def row_params(kind: str, row: Mapping[str, Any], *, replay: bool = False) -> list[Any]:
    """The parameters of ``KIND_SQL[kind]`` (``REPLAY_SQL[kind]`` with ``replay``)."""
    if kind.startswith("attempts:"):
        return attempt_params(row)
    ids = ID_COLUMNS[kind]
    params = [pack(row.get(c)) if c in ids else row.get(c) for c in TABLE_COLUMNS[kind]]
    if replay and kind in _GUARDED:
        params += (pack(row.get("trace_id")), pack(row.get("span_id")))
    return params
