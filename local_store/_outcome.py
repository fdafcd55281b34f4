"""A delivery's outcome: the rule, once, as SQL that every view, rollup, trigger and
query builds on. Python code reads the values this SQL computes; it never decides an
outcome itself.

A delivery's outcome is judged on all of its attempts, in this order (:func:`decide`):

1. ``delivered``: an attempt delivered (:data:`DELIVERED`);
2. ``failed``: an attempt failed for good, because the gateway said so (``final = 1``)
   or it was the last one allowed (``attempt >= max_attempts``) (:data:`FAILED_FOR_GOOD`);
3. otherwise what its latest attempt (by attempt number, then start, then id:
   :data:`LATEST_FIRST`) says (:func:`if_latest`): ``abandoned`` when it failed and no
   retry started within the retry window, ``pending_retry`` when it failed more
   recently, ``interrupted``, ``in_flight``, or ``other``.

Three inputs depend on the present, and each statement gives them in one of these
forms (:class:`Present`):

:data:`ASKED`
    What the operator's queries use: the writers that can no longer finish an
    attempt (the ``dead`` CTE, :data:`DEAD_CTE`), the stale limit ``:stale`` and the
    retry window's start ``:abandon_before``, all from :func:`liveness_params`.
:data:`TIMELESS`
    No writer dead, nothing stale, no retry window passed. What triggers store
    (``delivery_rollup``, the kept verdicts of ``undelivered``), since a stored fact
    cannot know the present: a failed latest attempt is stored as ``pending_retry``,
    and readers tell ``abandoned`` from it when asked (``_summary._tell_abandoned``,
    ``_undelivered``), by judging those deliveries with :data:`ASKED`. A ``started``
    attempt is ``in_flight`` here; the rollups leave such deliveries out and the
    verdicts mark them to be judged when read.
:data:`IN_VIEW`
    What plain SQL can know, for ``v_deliveries``: a writer is gone when its row is
    closed (a killed process is not seen until a rescue closes it), a ``started`` row
    older than the stale limit is interrupted, and the retry window is the default.

The same rule is written in four shapes over the same pieces, each for how its
caller holds the attempts: :func:`outcome_of` (index probes for one delivery id),
:func:`group_outcome` (aggregates over a ``GROUP BY delivery_id``),
:func:`judged_deliveries` (window functions over a set of attempts, one row per
delivery) and :func:`single_attempt_outcome` (a delivery whose only attempt is a
trigger's row).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from ._ids import hex_sql
from ._rescue import DEFAULT_STALE_AFTER_MS, dead_writer_ids

__all__ = [
    "ASKED",
    "ATTEMPT_COLUMNS",
    "DEAD_CTE",
    "DEFAULT_RETRY_WINDOW_SECONDS",
    "DELIVERED",
    "DELIVERIES_VIEW_SQL",
    "FAILED_FOR_GOOD",
    "IN_VIEW",
    "LATEST_FIRST",
    "OUTCOMES",
    "TIMELESS",
    "Present",
    "decide",
    "effective_status",
    "group_outcome",
    "if_latest",
    "judged_deliveries",
    "latest_attempt",
    "liveness_params",
    "outcome_of",
    "single_attempt_outcome",
]

#: Every value :func:`decide` can give.
OUTCOMES = (
    "delivered", "failed", "abandoned", "pending_retry", "interrupted", "in_flight", "other",
)

#: How long after a transient failure a delivery waits for its next attempt before
#: readers call it ``abandoned`` (the gateway gave up without saying so).
DEFAULT_RETRY_WINDOW_SECONDS = 600

# Writers that can no longer finish an attempt, passed in as a JSON array (:dead) so
# the statement text does not depend on how many there are.
DEAD_CTE = "dead(writer_id) AS (SELECT value FROM json_each(:dead))"


@dataclass(frozen=True)
class Present:
    """The SQL of the outcome's inputs that depend on the present: ``dead``, a list or
    subquery of the writers that can no longer finish an attempt; ``stale_before``, the
    start before which a ``started`` row is interrupted anyway; ``abandon_before``, the
    start before which a failed latest attempt with no retry is ``abandoned``."""

    dead: str
    stale_before: str
    abandon_before: str


ASKED = Present("(SELECT writer_id FROM dead)", ":stale", ":abandon_before")
TIMELESS = Present("()", "NULL", "NULL")
_NOW_MS = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
IN_VIEW = Present(
    "(SELECT id FROM writers WHERE ended_at_ms IS NOT NULL)",
    f"({_NOW_MS} - {DEFAULT_STALE_AFTER_MS})",
    f"({_NOW_MS} - {DEFAULT_RETRY_WINDOW_SECONDS * 1000})",
)

# Each on one attempt ``{a}``. The unary + keeps SQLite, which has no statistics, off
# the status index.
DELIVERED = "+{a}.status = 'delivered'"
FAILED_FOR_GOOD = (
    "+{a}.status = 'failed' AND ({a}.final = 1 OR {a}.attempt >= {a}.max_attempts)"
)
LATEST_FIRST = "{a}.attempt DESC, {a}.started_at_ms DESC, {a}.id DESC"

#: The columns :func:`judged_deliveries` needs of each attempt.
ATTEMPT_COLUMNS = (
    "delivery_id, attempt, max_attempts, status, final, started_at_ms, id, writer_id, "
    "channel, trace_id, error_type, error_text, failure_class"
)


def effective_status(a: str, now: Present = ASKED) -> str:
    """``status`` of attempt ``a`` as a reader should see it: a ``started`` row is
    ``interrupted`` once its writer is gone or it is older than the stale limit, else
    ``in_flight``. The rows themselves are left alone: readers never write."""
    return (
        f"CASE WHEN {a}.status = 'started' AND ({a}.started_at_ms < {now.stale_before}"
        f" OR {a}.writer_id IN {now.dead}) THEN 'interrupted'"
        f" WHEN {a}.status = 'started' THEN 'in_flight' ELSE {a}.status END"
    )


def if_latest(a: str, now: Present = ASKED) -> str:
    """The delivery's outcome when attempt ``a`` is its latest and no attempt delivered
    or failed for good. ``abandoned`` is derived when read, never written."""
    return f"""CASE {effective_status(a, now)}
            WHEN 'failed' THEN CASE WHEN {a}.started_at_ms < {now.abandon_before}
                                    THEN 'abandoned' ELSE 'pending_retry' END
            WHEN 'interrupted' THEN 'interrupted'
            WHEN 'in_flight' THEN 'in_flight'
            ELSE 'other'
        END"""


def decide(delivered: str, failed_for_good: str, latest: str) -> str:
    """The precedence: whether any attempt delivered, whether any failed for good, and
    :func:`if_latest` of the latest attempt, each an SQL expression."""
    return f"""CASE WHEN {delivered} THEN 'delivered'
        WHEN {failed_for_good} THEN 'failed'
        ELSE {latest} END"""


def latest_attempt(d: str, columns: str, *, table: str = "attempts", also: str = "1") -> str:
    """A scalar subquery: ``columns`` of delivery ``d``'s latest attempt (as ``l``) in
    ``table``, among the rows ``also`` (a condition on ``l``) allows."""
    return (
        f"(SELECT {columns} FROM {table} l WHERE l.delivery_id = {d} AND {also} "
        f"ORDER BY {LATEST_FIRST.format(a='l')} LIMIT 1)"
    )


def outcome_of(d: str, now: Present = ASKED) -> str:
    """The outcome of delivery ``d`` (an SQL expression), judged on all of its
    attempts, not only those in a window. With :data:`ASKED` it needs the ``dead`` CTE
    and :func:`liveness_params`.

    Each test is an index lookup by delivery id.
    """
    def exists(test: str) -> str:
        return (
            f"EXISTS (SELECT 1 FROM attempts x WHERE x.delivery_id = {d} "
            f"AND {test.format(a='x')})"
        )

    return decide(
        exists(DELIVERED), exists(FAILED_FOR_GOOD), latest_attempt(d, if_latest("l", now))
    )


def group_outcome(
    x: str, now: Present = ASKED, *, table: str = "attempts", also: str = "1"
) -> str:
    """The outcome of each delivery of a ``GROUP BY {x}.delivery_id`` over its attempts
    (all of them, or those ``also`` allows: a condition on ``l``, the rows of ``table``
    the latest-attempt lookup sees)."""
    return decide(
        f"MAX({DELIVERED.format(a=x)})", f"MAX({FAILED_FOR_GOOD.format(a=x)})",
        latest_attempt(f"{x}.delivery_id", if_latest("l", now), table=table, also=also),
    )


def single_attempt_outcome(row: str, now: Present = TIMELESS) -> str:
    """The outcome of a delivery whose only attempt is ``row`` (a trigger's NEW or OLD),
    from the row's own values."""
    return decide(
        DELIVERED.format(a=row), FAILED_FOR_GOOD.format(a=row), if_latest(row, now)
    )


def judged_deliveries(attempts_sql: str, now: Present = ASKED) -> str:
    """One row per delivery in ``attempts_sql`` (a query of :data:`ATTEMPT_COLUMNS`
    that holds every attempt of each delivery it holds): ``delivery_id``,
    ``outcome``, ``attempts``, the latest attempt's ``last_attempt`` and
    ``last_status`` (effective), ``delivered_attempt`` (the first that delivered),
    the latest attempt's ``channel``, ``trace_id``, ``error_type``, ``error_text``,
    ``failure_class`` and ``started_at_ms``. Unordered.

    The attempts are read once, sorted by delivery (latest first) in memory; with
    :data:`ASKED` the statement needs the ``dead`` CTE.
    """
    whole = "(latest ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
    j_delivered = DELIVERED.format(a="j")
    return f"""SELECT o.delivery_id,
            {decide('o.any_delivered', 'o.any_failed', if_latest('o', now))} AS outcome,
            o.n AS attempts, o.attempt AS last_attempt,
            {effective_status('o', now)} AS last_status, o.delivered_attempt,
            o.channel, o.trace_id, o.error_type, o.error_text, o.failure_class,
            o.started_at_ms
        FROM (
            SELECT j.*, ROW_NUMBER() OVER latest AS nth, COUNT(*) OVER {whole} AS n,
                   MAX({j_delivered}) OVER {whole} AS any_delivered,
                   MAX({FAILED_FOR_GOOD.format(a='j')}) OVER {whole} AS any_failed,
                   MIN(CASE WHEN {j_delivered} THEN j.attempt END) OVER {whole}
                       AS delivered_attempt
            FROM ({attempts_sql}) j
            WINDOW latest AS (PARTITION BY j.delivery_id ORDER BY {LATEST_FIRST.format(a='j')})
        ) o
        WHERE o.nth = 1"""


def liveness_params(
    db: sqlite_utils.Database,
    now_ms: int,
    retry_window_seconds: float = DEFAULT_RETRY_WINDOW_SECONDS,
) -> dict[str, Any]:
    """The :dead, :stale and :abandon_before parameters of :data:`ASKED`, as of
    ``now_ms``."""
    return {
        "dead": json.dumps(dead_writer_ids(db.conn)),
        "stale": now_ms - DEFAULT_STALE_AFTER_MS,
        "abandon_before": now_ms - int(retry_window_seconds * 1000),
    }


# One row per delivery, its outcome as plain SQL can judge it (IN_VIEW).
DELIVERIES_VIEW_SQL = f"""
CREATE VIEW v_deliveries AS
SELECT
    {hex_sql("a.delivery_id")} AS delivery_id,
    COUNT(*) AS attempts,
    MAX(a.channel) AS channel,
    {hex_sql("MAX(a.trace_id)")} AS trace_id,
    {group_outcome("a", IN_VIEW)} AS outcome,
    strftime('%Y-%m-%dT%H:%M:%fZ', MIN(a.started_at_ms) / 1000.0, 'unixepoch') AS first_at,
    strftime('%Y-%m-%dT%H:%M:%fZ', MAX(a.started_at_ms) / 1000.0, 'unixepoch') AS last_at
FROM attempts a
GROUP BY a.delivery_id;
"""
