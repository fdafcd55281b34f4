"""Shared by the operator queries: what an attempt's status means now, and how a
delivery ended. One definition, so ``summary``, ``trace_story``, ``undelivered`` and
``health`` can never disagree about either.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from ._rescue import DEFAULT_STALE_AFTER_MS, dead_writer_ids

__all__ = [
    "DEAD_CTE",
    "DEFAULT_RETRY_WINDOW_SECONDS",
    "DeliveryOutcome",
    "delivery_outcomes",
    "effective_status",
    "liveness_params",
    "lost_enqueues",
    "outcome_of",
    "rows",
    "sqlite_order",
    "trace_delivery_outcomes",
]

#: How long after a transient failure a delivery waits for its next attempt before
#: readers call it ``abandoned`` (the gateway gave up without saying so).
DEFAULT_RETRY_WINDOW_SECONDS = 600

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
        f"ORDER BY {_LATEST_FIRST.format(a='l')} LIMIT 1)"
    )


# The three parts of a delivery's outcome, each on one attempt ``a``: it delivered; it
# failed for good (the gateway said so, or it used its last allowed attempt); and what
# the delivery's outcome is when that attempt is its latest and neither of the others
# happened. The unary + keeps SQLite, which has no statistics, off the status index.
_DELIVERED = "+{a}.status = 'delivered'"
_FAILED_FOR_GOOD = (
    "+{a}.status = 'failed' AND ({a}.final = 1 OR {a}.attempt >= {a}.max_attempts)"
)
_LATEST_FIRST = "{a}.attempt DESC, {a}.started_at_ms DESC, {a}.id DESC"


def _outcome_if_latest(a: str) -> str:
    # A failed latest attempt that is not final waits for a retry; once the retry
    # window (:abandon_before, from liveness_params) has passed without one, the
    # gateway gave up: 'abandoned'. Derived when read, never written.
    return f"""CASE {effective_status(a)}
            WHEN 'failed' THEN CASE WHEN {a}.started_at_ms < :abandon_before
                                    THEN 'abandoned' ELSE 'pending_retry' END
            WHEN 'interrupted' THEN 'interrupted'
            WHEN 'in_flight' THEN 'in_flight'
            ELSE 'other'
        END"""


def outcome_of(d: str) -> str:
    """How delivery ``d`` (an SQL expression) ended, judged on all of its attempts, not
    only those in a window: ``delivered``, ``failed`` (for good), ``abandoned`` (its
    last attempt failed, was not final, and no retry started within the retry window),
    ``pending_retry``, ``interrupted``, ``in_flight`` or ``other``. Needs the ``dead``
    CTE and :func:`liveness_params`.

    Each test is an index lookup by delivery id. :func:`delivery_outcomes` judges the
    same way from one read of each delivery's attempts.
    """
    return _latest_attempt(d, f"""CASE
        WHEN EXISTS (SELECT 1 FROM attempts x WHERE x.delivery_id = l.delivery_id
                     AND {_DELIVERED.format(a='x')}) THEN 'delivered'
        WHEN EXISTS (SELECT 1 FROM attempts x WHERE x.delivery_id = l.delivery_id
                     AND {_FAILED_FOR_GOOD.format(a='x')})
            THEN 'failed'
        ELSE {_outcome_if_latest("l")}
    END""")



def liveness_params(
    db: sqlite_utils.Database,
    now_ms: int,
    retry_window_seconds: float = DEFAULT_RETRY_WINDOW_SECONDS,
) -> dict[str, Any]:
    """The :dead and :stale parameters of :func:`effective_status` and the
    :abandon_before of :func:`outcome_of`, as of ``now_ms``."""
    return {
        "dead": json.dumps(dead_writer_ids(db.conn)),
        "stale": now_ms - DEFAULT_STALE_AFTER_MS,
        "abandon_before": now_ms - int(retry_window_seconds * 1000),
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


# What the judging needs of each attempt ``a``; _judge reads the columns by position.
_ATTEMPT_FACTS = f"""a.delivery_id, {_outcome_if_latest("a")}, a.attempt, {effective_status("a")},
    {_DELIVERED.format(a="a")}, ({_FAILED_FOR_GOOD.format(a="a")}), a.channel, a.trace_id,
    a.error_type, a.error_text, a.failure_class, a.started_at_ms"""
_DELIVERY_ID, _IF_LATEST, _ATTEMPT, _DELIVERED_COL, _FAILED_COL, _STARTED = 0, 1, 2, 4, 5, 11


def _judge(found: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """One :class:`DeliveryOutcome`'s fields per delivery, from :data:`_ATTEMPT_FACTS`
    rows grouped by delivery with its latest attempt first, in the order
    :func:`delivery_outcomes` promises.

    SQLite did every comparison (the order, the tests); this only combines them the
    way :func:`outcome_of` does.
    """
    judged: list[tuple[Any, ...]] = []
    latest: Sequence[Any] | None = None
    n = 0
    delivered = failed = False
    delivered_attempt = None

    def close(last: Sequence[Any]) -> None:
        outcome = "delivered" if delivered else "failed" if failed else last[_IF_LATEST]
        judged.append((
            last[_DELIVERY_ID], outcome, n, last[_ATTEMPT], last[3],
            delivered_attempt, *last[6:12],
        ))

    for row in found:
        if latest is None or row[_DELIVERY_ID] != latest[_DELIVERY_ID]:
            if latest is not None:
                close(latest)
            latest, n, delivered, failed, delivered_attempt = row, 0, False, False, None
        n += 1
        if row[_DELIVERED_COL]:
            # latest first, so the last one seen is the earliest
            delivered, delivered_attempt = True, row[_ATTEMPT]
        elif row[_FAILED_COL]:
            failed = True
    if latest is not None:
        close(latest)
    try:
        judged.sort(key=lambda d: (d[_STARTED], d[_DELIVERY_ID]))
    except TypeError:  # values of mixed types: order them as SQLite does
        judged.sort(key=lambda d: (sqlite_order(d[_STARTED]), sqlite_order(d[_DELIVERY_ID])))
    return [d[:_STARTED] for d in judged]


def _latest_first_by_delivery(found: list[Any]) -> list[Any]:
    """Rows of :data:`_ATTEMPT_FACTS` plus ``id``, each delivery's together, put latest
    first within each delivery (the order of ``_LATEST_FIRST``)."""
    out: list[Any] = []
    i, n = 0, len(found)
    while i < n:
        j = i + 1
        while j < n and found[j][_DELIVERY_ID] == found[i][_DELIVERY_ID]:
            j += 1
        if j - i == 1:
            out.append(found[i])
        else:
            group = found[i:j]
            try:
                group.sort(key=_latest_key, reverse=True)
            except TypeError:  # values of mixed types: order them as SQLite does
                group.sort(key=_latest_key_mixed, reverse=True)
            out += group
        i = j
    return out


def _latest_key(row: Sequence[Any]) -> tuple[Any, ...]:
    return (row[_ATTEMPT], row[_STARTED], row[_STARTED + 1])


def _latest_key_mixed(row: Sequence[Any]) -> tuple[Any, ...]:
    return (sqlite_order(row[_ATTEMPT]), sqlite_order(row[_STARTED]), row[_STARTED + 1])


def sqlite_order(value: Any) -> tuple[int, Any]:
    """A sort key that orders values of mixed types as SQLite's ORDER BY does."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, value) if isinstance(value, str) else (3, value)


def delivery_outcomes(
    db: sqlite_utils.Database, targets_sql: str, params: dict[str, Any]
) -> list[DeliveryOutcome]:
    """The outcome of every delivery that ``targets_sql`` selects (by delivery_id), each
    once, ordered by the start of its latest attempt.

    ``params`` holds the parameters of ``targets_sql`` and :func:`liveness_params`.
    """
    found = db.execute(
        f"""WITH {DEAD_CTE} SELECT {_ATTEMPT_FACTS} FROM attempts a
        WHERE a.delivery_id IN ({targets_sql})
        ORDER BY a.delivery_id, {_LATEST_FIRST.format(a="a")}""",
        params,
    )
    return [DeliveryOutcome(*d) for d in _judge(found)]


def trace_delivery_outcomes(
    db: sqlite_utils.Database, params: dict[str, Any], *, undelivered_traces: bool = False
) -> list[tuple[Any, ...]]:
    """:func:`delivery_outcomes` (as tuples of its fields) of every delivery with an
    attempt in the traces :traces (a JSON array), for many traces at once.

    The attempts are read once, through the trace index, with each delivery's count
    of attempts from its own index (no row read); only a delivery with attempts in
    other traces is read again, whole, by delivery.

    ``undelivered_traces=True`` promises that no attempt of those traces delivered
    (they are ``reply_pending`` runs' traces):
    the attempts are then read from ``idx_attempts_unsent`` alone, and
    ``split_deliveries`` says which deliveries to read again.
    """
    latest_first = _LATEST_FIRST.format(a="a")
    if undelivered_traces:
        # In the index's own order (no sort): a delivery not in split_deliveries has
        # all its attempts in one trace, so they come together; latest first below.
        found = db.execute(
            f"""WITH {DEAD_CTE} SELECT {_ATTEMPT_FACTS}, a.id,
                EXISTS (SELECT 1 FROM split_deliveries s WHERE s.delivery_id = a.delivery_id)
            FROM attempts a WHERE a.trace_id IN (SELECT value FROM json_each(:traces))
              AND a.status != 'delivered'
            ORDER BY a.trace_id, a.delivery_id""",
            params,
        ).fetchall()
        partial = {row[_DELIVERY_ID] for row in found if row[-1]}
        found = _latest_first_by_delivery(found)
    else:
        found = db.execute(
            f"""WITH {DEAD_CTE} SELECT {_ATTEMPT_FACTS},
                (SELECT COUNT(*) FROM attempts x WHERE x.delivery_id = a.delivery_id)
            FROM attempts a WHERE a.trace_id IN (SELECT value FROM json_each(:traces))
            ORDER BY a.delivery_id, {latest_first}""",
            params,
        ).fetchall()
        seen: dict[Any, int] = {}
        for row in found:
            seen[row[_DELIVERY_ID]] = seen.get(row[_DELIVERY_ID], 0) + 1
        partial = {row[_DELIVERY_ID] for row in found if row[-1] != seen[row[_DELIVERY_ID]]}
    if partial:
        found = [row for row in found if row[_DELIVERY_ID] not in partial]
        for delivery_id in sorted(partial, key=sqlite_order):
            found += db.execute(
                f"WITH {DEAD_CTE} SELECT {_ATTEMPT_FACTS} FROM attempts a "
                f"WHERE a.delivery_id = :delivery_id ORDER BY {latest_first}",
                {**params, "delivery_id": delivery_id},
            ).fetchall()
    return _judge(found)


def lost_enqueues(
    enqueues: list[dict[str, Any]], attempted: set[str]
) -> list[dict[str, Any]]:
    """Failed enqueues whose delivery was never attempted: the reply went nowhere."""
    return [
        e for e in enqueues
        if e["status"] == "failed"
        and (e["delivery_id"] is None or e["delivery_id"] not in attempted)
    ]
