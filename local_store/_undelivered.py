"""``undelivered``: replies produced but never delivered, and why.

Takes a store opened with :func:`local_store.open_store`, only reads, and accepts
``now_ms`` so a test (or a post-mortem) can ask "as of" a given moment.

The runs are found through ``ai_runs.reply_pending`` (kept by triggers), with their
traces' kept verdicts (``_verdicts.py``), judging the rest from covering indexes that
hold only what did not deliver."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlite_utils

from ._arguments import check_seconds, resolve_now, window_start
from ._ids import hex_sql, plain_cursor
from ._outcome import DEFAULT_RETRY_WINDOW_SECONDS, liveness_params
from ._reading import rows
from ._receipts import failed_after_accept
from ._verdicts import judge_traces

__all__ = ["UndeliveredItem", "UndeliveredReport", "undelivered"]


@dataclass(frozen=True)
class UndeliveredItem:
    """A reply that was produced but not delivered (``source="ai_run"``), or a failed
    enqueue the gateway may have swallowed (``source="enqueue"``)."""

    source: str
    reason: str
    at_ms: int
    trace_id: str
    inbound_id: str | None
    channel: str | None
    delivery_id: str | None
    attempts: int
    error_type: str | None
    error_text: str | None


@dataclass(frozen=True)
class UndeliveredReport:
    """``in_grace``: replies produced in the window that no attempt has delivered yet,
    left out because they are younger than ``grace_seconds`` (their send may still be
    on its way)."""

    since_seconds: float
    grace_seconds: float
    window_start_ms: int
    now_ms: int
    items: list[UndeliveredItem]
    in_grace: int = 0

    @property
    def replies(self) -> int:
        """Replies produced but not delivered."""
        return sum(1 for i in self.items if i.source == "ai_run")

    @property
    def enqueue_failures(self) -> int:
        """Failed enqueues not already counted as an undelivered reply."""
        return sum(1 for i in self.items if i.source == "enqueue")

    @property
    def failed_after_accept(self) -> int:
        """Messages the API accepted and the platform reported failed later."""
        return sum(1 for i in self.items if i.source == "receipt")

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self), "replies": self.replies, "enqueue_failures": self.enqueue_failures,
            "failed_after_accept": self.failed_after_accept,
        }


def undelivered(
    db: sqlite_utils.Database,
    *,
    since_seconds: float,
    grace_seconds: float = 60,
    now_ms: int | None = None,
    retry_window_seconds: float = DEFAULT_RETRY_WINDOW_SECONDS,
) -> UndeliveredReport:
    """Replies produced in the window, more than ``grace_seconds`` ago, that no attempt
    in their trace delivered; plus every failed enqueue in the window whose delivery
    was not delivered later, even when no AI run was recorded.

    ``reason`` is the worst thing that happened: ``enqueue_failed``, ``failed``,
    ``abandoned`` (a transient failure and no retry within ``retry_window_seconds``),
    ``interrupted``, ``pending_retry``, ``in_flight``, or ``no_attempt``. Messages the
    API accepted whose latest receipt from the platform says failed are listed too,
    with ``source="receipt"`` and the reason ``failed_after_accept``.

    The runs are found through ``ai_runs.reply_pending`` (a partial index of the runs
    whose reply no attempt has delivered); the work then grows with the replies
    reported, not with the store. Each run's trace comes with its kept verdict
    (``_verdicts.py``); the traces without a current one are judged here by
    :func:`judge_traces`, from one read of their attempts and one of their failed
    enqueues, both from small covering indexes of what did not deliver
    (``_pending.py``).

    >>> [i.reason for i in undelivered(db, since_seconds=86400).items]  # doctest: +SKIP
    ['no_attempt', 'enqueue_failed']
    """
    check_seconds("grace_seconds", grace_seconds, allow_zero=True)
    check_seconds("retry_window_seconds", retry_window_seconds, allow_zero=True)
    now = resolve_now(now_ms)
    start = window_start(now, since_seconds)
    params: dict[str, Any] = {"since": start, "settled": now - int(grace_seconds * 1000)}
    # reply_pending is kept by triggers: exactly "reply_produced = 1 and no attempt of
    # the trace delivered"; the partial index holds only those runs.
    not_delivered = "r.reply_pending = 1"
    # A trace's kept verdict, unless it waits to be judged again (or its verdict
    # depends on liveness: reason NULL).
    verdict = f"""r.verdict_reason, {hex_sql("r.verdict_delivery_id")}, r.verdict_attempts,
        r.verdict_error_type, r.verdict_error_text, r.verdict_reason IS NULL
        OR EXISTS (SELECT 1 FROM traces_to_judge j WHERE j.trace_id = r.trace_id)"""
    # Thousands of rows at 10M attempts: ids shown as hex here, no row factory.
    runs = plain_cursor(db.conn).execute(
        f"""SELECT {hex_sql("r.trace_id")}, r.inbound_id, r.channel,
                  COALESCE(r.ended_at_ms, r.started_at_ms) AS at_ms, {verdict}
        FROM ai_runs r
        WHERE r.started_at_ms >= :since AND {not_delivered}
          AND COALESCE(r.ended_at_ms, r.started_at_ms) <= :settled
        ORDER BY r.started_at_ms, r.id""",
        params,
    ).fetchall()
    (in_grace,) = db.execute(
        f"""SELECT COUNT(*) FROM ai_runs r WHERE r.started_at_ms >= :since AND {not_delivered}
          AND COALESCE(r.ended_at_ms, r.started_at_ms) > :settled""",
        params,
    ).fetchone()
    listed = {run[0] for run in runs}
    # A kept verdict of 'pending_retry' was judged without knowing the present: whether
    # the retry window has passed (making it 'abandoned') is judged now, as are the
    # verdicts that depend on liveness.
    runs = [(*run[:9], run[9] or run[4] == "pending_retry") for run in runs]
    liveness = liveness_params(db, now, retry_window_seconds)
    judged = judge_traces(db, {run[0] for run in runs if run[9]}, liveness, covered=True)
    items: list[UndeliveredItem] = []
    for trace_id, inbound_id, channel, at_ms, *stored, live in runs:
        reason, delivery_id, attempts, error_type, error_text = (
            judged[trace_id][:5] if live else stored
        )
        items.append(UndeliveredItem(
            source="ai_run", reason=reason, at_ms=at_ms, trace_id=trace_id,
            inbound_id=inbound_id, channel=channel, delivery_id=delivery_id,
            attempts=attempts, error_type=error_type, error_text=error_text,
        ))

    for e in rows(
        db,
        """SELECT e.* FROM enqueues e
        WHERE e.status = 'failed' AND e.started_at_ms >= :since
          AND NOT (e.delivery_id IS NOT NULL AND EXISTS (
              SELECT 1 FROM attempts a WHERE a.delivery_id = e.delivery_id
              AND +a.status = 'delivered'))
        ORDER BY e.started_at_ms, e.id""",
        params,
    ):
        if e["trace_id"] in listed:
            continue  # already told as that reply's story
        items.append(UndeliveredItem(
            source="enqueue", reason="enqueue_failed", at_ms=e["started_at_ms"],
            trace_id=e["trace_id"], inbound_id=e["inbound_id"], channel=e["channel"],
            delivery_id=e["delivery_id"], attempts=0, error_type=e["error_type"],
            error_text=e["error_text"],
        ))
    for r in failed_after_accept(db, start):
        items.append(UndeliveredItem(
            source="receipt", reason="failed_after_accept", at_ms=r["at_ms"],
            trace_id=r["trace_id"], inbound_id=r["inbound_id"], channel=r["channel"],
            delivery_id=r["delivery_id"], attempts=r["attempt"], error_type=r["error_type"],
            error_text=r["error_text"],
        ))
    items.sort(key=lambda i: (i.at_ms, i.trace_id))
    return UndeliveredReport(
        since_seconds=float(since_seconds), grace_seconds=float(grace_seconds),
        window_start_ms=start, now_ms=now, items=items, in_grace=in_grace,
    )
