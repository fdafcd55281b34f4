"""Shared by the operator queries: what an attempt's status means now, and how a
delivery ended. One definition, so ``summary``, ``trace_story``, ``undelivered`` and
``health`` can never disagree about either.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from ._rescue import DEFAULT_STALE_AFTER_MS, dead_writer_ids

__all__ = [
    "DEAD_CTE",
    "DeliveryOutcome",
    "delivery_outcomes",
    "effective_status",
    "has_rollups",
    "liveness_params",
    "lost_enqueues",
    "outcome_of",
    "rows",
]

# Writers that can no longer finish an attempt, passed in as a JSON array (:dead) so
# the statement text does not depend on how many there are.
DEAD_CTE = "dead(writer_id) AS (SELECT value FROM json_each(:dead))"


def effective_status(a: str) -> str:
    """``status`` as a reader should see it: a ``started`` row is ``interrupted`` once its
    writer is gone or it is older than the stale limit (:stale), else ``in_flight``.

    Needs the ``dead`` CTE. The rows themselves are left alone: readers never write.
    """
    return (
        f"CASE WHEN {a}.status = 'started' AND ({a}.started_at_ms < :stale"
        f" OR {a}.writer_id IN (SELECT writer_id FROM dead)) THEN 'interrupted'"
        f" WHEN {a}.status = 'started' THEN 'in_flight' ELSE {a}.status END"
    )


def _latest_attempt(d: str, columns: str) -> str:
    """A scalar subquery: ``columns`` of delivery ``d``'s latest attempt (as ``l``)."""
    return (
        f"(SELECT {columns} FROM attempts l WHERE l.delivery_id = {d} "
        "ORDER BY l.attempt DESC, l.started_at_ms DESC, l.id DESC LIMIT 1)"
    )


def outcome_of(d: str) -> str:
    """How delivery ``d`` (an SQL expression) ended, judged on all of its attempts, not
    only those in a window: ``delivered``, ``failed`` (for good), ``pending_retry``,
    ``interrupted``, ``in_flight`` or ``other``. Needs the ``dead`` CTE.

    A failure is final when the gateway said so, or when it used its last allowed
    attempt. Each test is an index lookup by delivery id; the unary + stops SQLite,
    which has no statistics, from choosing the status index and reading every row of
    that status per delivery.
    """
    return _latest_attempt(d, f"""CASE
        WHEN EXISTS (SELECT 1 FROM attempts x WHERE x.delivery_id = l.delivery_id
                     AND +x.status = 'delivered') THEN 'delivered'
        WHEN EXISTS (SELECT 1 FROM attempts x WHERE x.delivery_id = l.delivery_id
                     AND +x.status = 'failed' AND (x.final = 1 OR x.attempt >= x.max_attempts))
            THEN 'failed'
        ELSE CASE {effective_status("l")}
            WHEN 'failed' THEN 'pending_retry'
            WHEN 'interrupted' THEN 'interrupted'
            WHEN 'in_flight' THEN 'in_flight'
            ELSE 'other'
        END
    END""")


def has_rollups(db: sqlite_utils.Database) -> bool:
    """Whether the store has the rollups and ``reply_pending`` (schema m005, m006).

    A store opened read-only is not upgraded; its queries scan instead.
    """
    try:
        (n,) = db.execute(
            "SELECT COUNT(*) FROM _sqlite_migrations WHERE migration_set = 'otel_delivery' "
            "AND name IN ('m005_summary_rollups', 'm006_reply_pending')"
        ).fetchone()
    except sqlite3.OperationalError:
        return False
    return bool(n == 2)


def liveness_params(db: sqlite_utils.Database, now_ms: int) -> dict[str, Any]:
    """The :dead and :stale parameters of :func:`effective_status`, as of ``now_ms``."""
    return {
        "dead": json.dumps(dead_writer_ids(db.conn)),
        "stale": now_ms - DEFAULT_STALE_AFTER_MS,
    }


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


def delivery_outcomes(
    db: sqlite_utils.Database, targets_sql: str, params: dict[str, Any]
) -> list[DeliveryOutcome]:
    """The outcome of every delivery that ``targets_sql`` selects (by delivery_id).

    ``params`` holds the parameters of ``targets_sql`` and :func:`liveness_params`.
    """
    found = rows(
        db,
        f"""WITH {DEAD_CTE}, targets(delivery_id) AS ({targets_sql}),
        judged AS (
            SELECT t.delivery_id, {outcome_of("t.delivery_id")} AS outcome,
                   {_latest_attempt("t.delivery_id", "l.id")} AS latest_id,
                   (SELECT COUNT(*) FROM attempts x WHERE x.delivery_id = t.delivery_id)
                       AS attempts,
                   (SELECT MIN(x.attempt) FROM attempts x WHERE x.delivery_id = t.delivery_id
                    AND +x.status = 'delivered') AS delivered_attempt
            FROM targets t
        )
        SELECT j.delivery_id, j.outcome, j.attempts, l.attempt AS last_attempt,
               {effective_status("l")} AS last_status, j.delivered_attempt, l.channel,
               l.trace_id, l.error_type, l.error_text, l.failure_class
        FROM judged j JOIN attempts l ON l.id = j.latest_id
        ORDER BY l.started_at_ms, j.delivery_id""",
        params,
    )
    return [DeliveryOutcome(**row) for row in found]


def lost_enqueues(
    enqueues: list[dict[str, Any]], attempted: set[str]
) -> list[dict[str, Any]]:
    """Failed enqueues whose delivery was never attempted: the reply went nowhere."""
    return [
        e for e in enqueues
        if e["status"] == "failed"
        and (e["delivery_id"] is None or e["delivery_id"] not in attempted)
    ]
