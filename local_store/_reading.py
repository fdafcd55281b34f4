"""Shared by the operator queries: which parts of the schema a store has, and each
delivery's outcome (:func:`delivery_outcomes`, :func:`trace_delivery_outcomes`) as the
SQL of ``_outcome.py`` judges it, so ``summary``, ``trace_story``, ``undelivered`` and
``health`` can never disagree about it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import sqlite_utils

from ._outcome import ATTEMPT_COLUMNS, DEAD_CTE, judged_deliveries

__all__ = [
    "DeliveryOutcome",
    "delivery_outcomes",
    "lost_enqueues",
    "rows",
    "sqlite_order",
    "trace_delivery_outcomes",
    "trace_outcomes_sql",
]



def rows(
    db: sqlite_utils.Database, sql: str, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    cur: sqlite3.Cursor = db.execute(sql, dict(params or {}))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@dataclass(frozen=True)
class DeliveryOutcome:
    """How one delivery ended, judged on all of its attempts."""

    delivery_id: str
    outcome: str
    attempts: int
    last_attempt: int
    last_status: str
    delivered_attempt: int | None
    channel: str | None
    trace_id: str
    error_type: str | None
    error_text: str | None
    failure_class: str | None


def _outcomes(cur: sqlite3.Cursor) -> list[DeliveryOutcome]:
    names = [d[0] for d in cur.description]
    keep = [names.index(f.name) for f in fields(DeliveryOutcome)]
    return [DeliveryOutcome(*(row[i] for i in keep)) for row in cur.fetchall()]


def sqlite_order(value: Any) -> tuple[int, Any]:
    """A sort key that orders values of mixed types as SQLite's ORDER BY does."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, value) if isinstance(value, str) else (3, value)


# The order delivery_outcomes promises: by the start of each delivery's latest attempt.
_BY_LATEST_START = "ORDER BY o.started_at_ms, o.delivery_id"


def delivery_outcomes(
    db: sqlite_utils.Database, targets_sql: str, params: dict[str, Any]
) -> list[DeliveryOutcome]:
    """The outcome of every delivery that ``targets_sql`` selects (by delivery_id), each
    once, ordered by the start of its latest attempt.

    ``params`` holds the parameters of ``targets_sql`` and ``liveness_params``.
    """
    attempts = f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id IN ({targets_sql})"
    return _outcomes(db.execute(
        f"WITH {DEAD_CTE} {judged_deliveries(attempts)} {_BY_LATEST_START}", params
    ))


def trace_delivery_outcomes(
    db: sqlite_utils.Database, params: dict[str, Any], *, undelivered_traces: bool = False
) -> list[DeliveryOutcome]:
    """:func:`delivery_outcomes` of every delivery with an attempt in the traces
    :traces (a JSON array), for many traces at once (:func:`trace_outcomes_sql`).
    """
    return _outcomes(db.execute(
        f"{trace_outcomes_sql(undelivered_traces=undelivered_traces)} {_BY_LATEST_START}",
        params,
    ))


def trace_outcomes_sql(*, undelivered_traces: bool = False) -> str:
    """The statement of :func:`trace_delivery_outcomes` (columns of
    ``_outcome.judged_deliveries``, unordered; the outer query's alias is ``o``).

    The attempts are read once, through the trace index; a delivery with attempts in
    other traces (its count of attempts, from its own index, is more than the traces
    hold) is read again, whole, by delivery.

    ``undelivered_traces=True`` promises that no attempt of those traces delivered
    (they are ``reply_pending`` runs' traces):
    the attempts are then read from ``idx_attempts_unsent`` alone, and
    ``split_deliveries`` says which deliveries to read again.
    """
    in_traces = "a.trace_id IN (SELECT packed_id(value) FROM json_each(:traces))"
    if undelivered_traces:
        found = f"""SELECT {ATTEMPT_COLUMNS},
                EXISTS (SELECT 1 FROM split_deliveries s WHERE s.delivery_id = a.delivery_id)
                    AS split
            FROM attempts a WHERE {in_traces} AND a.status != 'delivered'"""
    else:
        found = f"""SELECT {ATTEMPT_COLUMNS},
                (SELECT COUNT(*) FROM attempts x WHERE x.delivery_id = a.delivery_id)
                    != COUNT(*) OVER (PARTITION BY a.delivery_id) AS split
            FROM attempts a WHERE {in_traces}"""
    attempts = f"""SELECT {ATTEMPT_COLUMNS} FROM found WHERE NOT split
        UNION ALL
        SELECT {ATTEMPT_COLUMNS} FROM attempts
        WHERE delivery_id IN (SELECT f.delivery_id FROM found f WHERE f.split)"""
    return f"""WITH {DEAD_CTE}, found AS MATERIALIZED ({found})
        {judged_deliveries(attempts)}"""


def lost_enqueues(
    enqueues: list[dict[str, Any]], attempted: set[str]
) -> list[dict[str, Any]]:
    """Failed enqueues whose delivery was never attempted: the reply went nowhere."""
    return [
        e for e in enqueues
        if e["status"] == "failed"
        and (e["delivery_id"] is None or e["delivery_id"] not in attempted)
    ]
