"""``failures`` and ``interrupted``: the attempts that failed, and those cut short.

Takes a store opened with :func:`local_store.open_store`, only reads, and accepts
``now_ms`` so a test (or a post-mortem) can ask "as of" a given moment."""

from __future__ import annotations

from typing import Any

import sqlite_utils

from ._arguments import check_limit, check_seconds, resolve_now, window_start
from ._outcome import (
    DEAD_CTE,
    DEFAULT_RETRY_WINDOW_SECONDS,
    effective_status,
    liveness_params,
    outcome_of,
)
from ._reading import rows

__all__ = ["INTERRUPTED_SQL", "failures", "interrupted"]

_FAILURE_COLUMNS = (
    "id, delivery_id, attempt, max_attempts, channel, error_type, error_text, failure_class, "
    "final, started_at_ms, ended_at_ms, trace_id, inbound_id"
)


def failures(
    db: sqlite_utils.Database,
    *,
    since_seconds: float | None = None,
    channel: str | None = None,
    limit: int = 50,
    now_ms: int | None = None,
    retry_window_seconds: float = DEFAULT_RETRY_WINDOW_SECONDS,
) -> list[dict[str, Any]]:
    """Failed attempts, newest first, each with its delivery's outcome now
    (``delivery_outcome``: ``failed``, ``abandoned``, ``pending_retry``, ``delivered``
    by a later attempt, ...).

    >>> failures(db, since_seconds=86400, channel="telegram", limit=10)  # doctest: +SKIP
    [{'delivery_id': 'd1', 'attempt': 2, 'error_type': 'Forbidden', 'final': 1, ...}]
    """
    check_limit("limit", limit)
    check_seconds("retry_window_seconds", retry_window_seconds, allow_zero=True)
    now = resolve_now(now_ms)
    where = ["status = 'failed'"]
    params: dict[str, Any] = {"limit": limit, **liveness_params(db, now, retry_window_seconds)}
    if since_seconds is not None:
        where.append("started_at_ms >= :since")
        params["since"] = window_start(now, since_seconds)
    if channel is not None:
        where.append("channel = :channel")
        params["channel"] = channel
    return rows(
        db,
        f"""WITH {DEAD_CTE}, page AS (
            SELECT {_FAILURE_COLUMNS} FROM attempts WHERE {' AND '.join(where)}
            ORDER BY started_at_ms DESC, id DESC LIMIT :limit)
        SELECT p.*, {outcome_of('p.delivery_id')} AS delivery_outcome FROM page p
        ORDER BY p.started_at_ms DESC, p.id DESC""",
        params,
    )


INTERRUPTED_SQL = (
    f"a.status IN ('started', 'interrupted') AND ({effective_status('a')}) = 'interrupted'"
)


def interrupted(
    db: sqlite_utils.Database,
    *,
    since_seconds: float | None = None,
    limit: int = 100,
    now_ms: int | None = None,
) -> list[dict[str, Any]]:
    """Attempts that started and never ended, newest first; nothing is rewritten.

    ``why`` says how we know: ``recorded`` (marked interrupted by a writer's rescue or
    shutdown), ``writer_gone`` (its process no longer runs on this host),
    ``writer_closed``, or ``stale`` (older than the stale limit).

    >>> interrupted(db, since_seconds=86400)  # doctest: +SKIP
    [{'delivery_id': 'd7', 'attempt': 1, 'why': 'writer_gone', 'writer_pid': 4242, ...}]
    """
    check_limit("limit", limit)
    now = resolve_now(now_ms)
    params: dict[str, Any] = {"limit": limit, **liveness_params(db, now)}
    since = ""
    if since_seconds is not None:
        since = "AND a.started_at_ms >= :since"
        params["since"] = window_start(now, since_seconds)
    return rows(
        db,
        f"""WITH {DEAD_CTE}
        SELECT a.id, a.delivery_id, a.attempt, a.channel, a.status, a.started_at_ms,
               a.trace_id, a.inbound_id, a.writer_id, w.pid AS writer_pid,
               w.host AS writer_host, a.service,
               CASE
                   WHEN a.status = 'interrupted' THEN 'recorded'
                   WHEN a.writer_id IN (SELECT writer_id FROM dead)
                       THEN CASE WHEN w.ended_at_ms IS NULL THEN 'writer_gone'
                                 ELSE 'writer_closed' END
                   ELSE 'stale'
               END AS why
        FROM attempts a LEFT JOIN writers w ON w.id = a.writer_id
        WHERE {INTERRUPTED_SQL} {since}
        ORDER BY a.started_at_ms DESC, a.id DESC LIMIT :limit""",
        params,
    )
