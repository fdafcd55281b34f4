"""The operator's questions, answered from the store.

Every function takes a store opened with :func:`local_store.open_store`, only reads,
and accepts ``now_ms`` so a test (or a post-mortem) can ask "as of" a given moment.
Windows (``since_seconds``) are on the time an attempt, run or enqueue started.

``summary`` and ``health`` read the rollups and ``undelivered`` the ``reply_pending``
runs that triggers keep (``_rollups.py``, schema m005 and m006) with their traces'
kept verdicts (``_verdicts.py``, m009), judging the rest from covering indexes that
hold only what did not deliver (m007); a store of an older schema opened read-only
is answered by scanning the rows, with the same results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlite_utils

from ._arguments import check_limit, check_seconds, resolve_now, window_start
from ._durations import format_duration
from ._future import count_future_rows
from ._reading import (
    DEAD_CTE,
    effective_status,
    has_rollups,
    has_unsent_indexes,
    has_verdicts,
    liveness_params,
    outcome_of,
    rows,
)
from ._rollups import HOUR_MS, MINUTE_MS, contributions, decode
from ._verdicts import judge_traces
from .exceptions import InvalidArgumentError

__all__ = [
    "ATTEMPT_STATUSES",
    "DELIVERY_OUTCOMES",
    "SUMMARY_GROUPINGS",
    "HealthReport",
    "Summary",
    "SummaryGroup",
    "UndeliveredItem",
    "UndeliveredReport",
    "failures",
    "health",
    "interrupted",
    "summary",
    "undelivered",
]

SUMMARY_GROUPINGS = ("channel", "error", "status")
# Always reported, so a zero is visible; any other status a gateway writes is added.
ATTEMPT_STATUSES = ("delivered", "failed", "interrupted", "in_flight")
DELIVERY_OUTCOMES = ("delivered", "failed", "pending_retry", "interrupted", "in_flight")

_GROUP_COLUMNS = {
    "channel": ("channel",),
    "error": ("error_type", "failure_class"),
    "status": ("status",),
}


def _counts(keys: tuple[str, ...]) -> dict[str, int]:
    return dict.fromkeys(keys, 0)


# -- summary -------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryGroup:
    """Counts for one group: attempts by status, and the deliveries they belong to by
    final outcome (a delivery counts once per group it has an attempt in)."""

    key: dict[str, str | None]
    attempts: int
    statuses: dict[str, int]
    deliveries: dict[str, int]


@dataclass(frozen=True)
class Summary:
    by: str
    since_seconds: float
    window_start_ms: int
    now_ms: int
    groups: list[SummaryGroup]
    total: SummaryGroup

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summary(
    db: sqlite_utils.Database,
    *,
    since_seconds: float,
    by: str = "channel",
    now_ms: int | None = None,
) -> Summary:
    """Attempts and deliveries in the window, grouped by channel, error or status.

    ``by="error"`` counts failed attempts only, grouped by error type and failure class.
    A delivery counts once in each group it has an attempt in the window, with its
    final outcome judged on all of its attempts.

    On a current store this reads the hourly and per-minute rollups that triggers keep
    (see ``_rollups.py``), the first partial minute of the window from the rows, and
    only the deliveries with an attempt still ``started`` from the rows, since whether
    those are interrupted depends on their writer being alive now. An older store
    opened read-only is answered by scanning the window.

    >>> s = summary(open_store("deliveries.db"), since_seconds=7 * 86400)  # doctest: +SKIP
    >>> [(g.key["channel"], g.statuses["failed"]) for g in s.groups]  # doctest: +SKIP
    [('telegram', 5), ('slack', 0)]
    """
    if by not in SUMMARY_GROUPINGS:
        raise InvalidArgumentError(
            f"cannot group by {by!r}: choose one of {', '.join(SUMMARY_GROUPINGS)}"
        )
    now = resolve_now(now_ms)
    start = window_start(now, since_seconds)
    params = {"since": start, **liveness_params(db, now)}
    keys = _GROUP_COLUMNS[by]
    if has_rollups(db):
        statuses_by_key, deliveries_by_key, total_deliveries = _summary_counts(
            db, by, params
        )
    else:
        statuses_by_key, deliveries_by_key, total_deliveries = _summary_scan(db, by, params)

    groups = []
    for key in {**statuses_by_key, **deliveries_by_key}:
        statuses = _counts(ATTEMPT_STATUSES)
        for status, n in statuses_by_key.get(key, {}).items():
            statuses[status] = statuses.get(status, 0) + n
        deliveries = _counts(DELIVERY_OUTCOMES)
        for outcome, n in deliveries_by_key.get(key, {}).items():
            deliveries[outcome] = deliveries.get(outcome, 0) + n
        groups.append(SummaryGroup(
            key=dict(zip(keys, key, strict=True)),
            attempts=sum(statuses.values()),
            statuses=statuses,
            deliveries=deliveries,
        ))
    groups.sort(key=lambda g: (-g.attempts, [str(v) for v in g.key.values()]))
    total_statuses = _counts(ATTEMPT_STATUSES)
    for g in groups:
        for status, n in g.statuses.items():
            total_statuses[status] = total_statuses.get(status, 0) + n
    totals = _counts(DELIVERY_OUTCOMES)
    for outcome, n in total_deliveries.items():
        totals[outcome] = totals.get(outcome, 0) + n
    total = SummaryGroup(
        key=dict.fromkeys(keys, None),
        attempts=sum(total_statuses.values()),
        statuses=total_statuses,
        deliveries=totals,
    )
    return Summary(
        by=by, since_seconds=float(since_seconds), window_start_ms=start, now_ms=now,
        groups=groups, total=total,
    )


_Key = tuple[Any, ...]
_Tally = dict[_Key, dict[str, int]]


def _add(tally: _Tally, key: _Key, name: str, n: int) -> None:
    counts = tally.setdefault(key, {})
    counts[name] = counts.get(name, 0) + n


def _summary_scan(
    db: sqlite_utils.Database,
    by: str,
    params: dict[str, Any],
    *,
    source: str = "attempts a",
    only: str = "",
    statuses_only: bool = False,
) -> tuple[_Tally, _Tally, dict[str, int]]:
    """Attempts by status and deliveries by outcome per group, from the rows of the
    window (``source`` names the attempts as ``a``; ``only`` restricts them further)."""
    keys = _GROUP_COLUMNS[by]
    only_failed = "AND a.status = 'failed'" if by == "error" else ""
    window = f"""{DEAD_CTE},
        win AS (
            SELECT a.delivery_id, a.channel, a.error_type, a.failure_class,
                   {effective_status("a")} AS status
            FROM {source} WHERE a.started_at_ms >= :since {only_failed} {only}
        )"""
    key_list = ", ".join(f"w.{k}" for k in keys)
    statuses: _Tally = {}
    for *key, status, n in db.execute(
        f"WITH {window} SELECT {key_list}, w.status, COUNT(*) FROM win w "
        f"GROUP BY {key_list}, w.status",
        params,
    ).fetchall():
        _add(statuses, tuple(key), status, n)
    if statuses_only:
        return statuses, {}, {}
    # One row per (group, delivery): a delivery counts once in each group it has an
    # attempt in, and once in the total.
    deliveries: _Tally = {}
    outcome_by_delivery: dict[str, str] = {}
    for *key, delivery_id, outcome in db.execute(
        f"WITH {window}, pairs AS (SELECT DISTINCT {key_list}, w.delivery_id FROM win w) "
        f"SELECT *, {outcome_of('pairs.delivery_id')} FROM pairs",
        params,
    ).fetchall():
        _add(deliveries, tuple(key), outcome, 1)
        outcome_by_delivery[delivery_id] = outcome
    total: dict[str, int] = {}
    for outcome in outcome_by_delivery.values():
        total[outcome] = total.get(outcome, 0) + 1
    return statuses, deliveries, total


def _summary_counts(
    db: sqlite_utils.Database, by: str, params: dict[str, Any]
) -> tuple[_Tally, _Tally, dict[str, int]]:
    """What :func:`_summary_scan` counts, from the rollups.

    The window [since, now...) splits into whole hours (hourly buckets), the whole
    minutes before the first of those (minute buckets) and the partial first minute
    (rows). A pair (group, delivery) is in the window when its latest attempt is, and
    the rollups file it under that attempt's bucket, so each pair is counted in exactly
    one part. Deliveries with a ``started`` attempt are not in the rollups: they are
    counted from their rows, as the scan does.
    """
    since = params["since"]
    first_hour = -(-since // HOUR_MS)
    first_minute = -(-since // MINUTE_MS)
    q = {
        **params, "h": HOUR_MS, "m": MINUTE_MS, "h0": first_hour, "m0": first_minute,
        "m1": max(first_minute, first_hour * (HOUR_MS // MINUTE_MS)),
        "edge": first_minute * MINUTE_MS,
    }
    statuses: _Tally = {}
    deliveries: _Tally = {}
    total: dict[str, int] = {}
    failed_only = "AND status = 'failed'" if by == "error" else ""
    key_cols = {
        "channel": decode("channel"),
        "error": f"{decode('error_type')}, {decode('failure_class')}",
        "status": "status",
    }[by]
    for *key, status, n in db.execute(
        f"""SELECT {key_cols}, status, SUM(n) FROM (
            SELECT * FROM attempt_rollup WHERE res = :h AND bucket >= :h0 {failed_only}
            UNION ALL
            SELECT * FROM attempt_rollup WHERE res = :m AND bucket >= :m0 AND bucket < :m1
                {failed_only}
        ) GROUP BY {key_cols}, status HAVING SUM(n) != 0""",
        q,
    ).fetchall():
        _add(statuses, tuple(key), status, n)
    raw_keys = {
        "channel": "a.channel", "error": "a.error_type, a.failure_class", "status": "a.status",
    }[by]
    for *key, status, n in db.execute(
        f"""SELECT {raw_keys}, a.status, COUNT(*) FROM attempts a
        WHERE a.started_at_ms >= :since AND a.started_at_ms < :edge
          AND a.status != 'started' {failed_only.replace('status', 'a.status')}
        GROUP BY {raw_keys}, a.status""",
        q,
    ).fetchall():
        _add(statuses, tuple(key), status, n)

    grouping = by
    totals = "failed" if by == "error" else "all"
    for part, n_key in ((grouping, len(_GROUP_COLUMNS[by])), (totals, 0)):
        key_sql = ", ".join([decode("k1"), decode("k2")][:n_key]) or "NULL"
        rows_ = db.execute(
            f"""SELECT {key_sql}, outcome, SUM(n) FROM (
                SELECT * FROM delivery_rollup
                WHERE res = :h AND grouping = :g AND bucket >= :h0
                UNION ALL
                SELECT * FROM delivery_rollup
                WHERE res = :m AND grouping = :g AND bucket >= :m0 AND bucket < :m1
            ) GROUP BY k1, k2, outcome HAVING SUM(n) != 0""",
            {**q, "g": part},
        ).fetchall()
        for row in rows_:
            *key, outcome, n = row
            if part == totals:
                total[outcome] = total.get(outcome, 0) + n
            else:
                _add(deliveries, tuple(key[:n_key]), outcome, n)
    # Pairs whose latest attempt is in the first, partial minute.
    edge_xs = (
        "(SELECT a.* FROM attempts a WHERE a.delivery_id IN (SELECT e.delivery_id FROM "
        "attempts e WHERE e.started_at_ms >= :since AND e.started_at_ms < :edge))"
    )
    for part, key1, key2, outcome in db.execute(
        f"""SELECT c.grouping, {decode('c.k1')}, {decode('c.k2')}, c.outcome
        FROM ({contributions(edge_xs)}) c
        WHERE c.grouping IN (:g, :t) AND c.at >= :since AND c.at < :edge""",
        {**q, "g": grouping, "t": totals},
    ).fetchall():
        if part == totals:
            total[outcome] = total.get(outcome, 0) + 1
        else:
            _add(deliveries, (key1, key2)[: len(_GROUP_COLUMNS[by])], outcome, 1)

    # Deliveries with an attempt still 'started': from the rows, as the scan does
    # (found through the status index, then their attempts through the delivery index).
    _, more_deliveries, more_total = _summary_scan(
        db, by, params,
        source="(SELECT DISTINCT s.delivery_id FROM attempts s WHERE s.status = 'started') sd "
        "CROSS JOIN attempts a ON a.delivery_id = sd.delivery_id",
    )
    for key, counts in more_deliveries.items():
        for outcome, n in counts.items():
            _add(deliveries, key, outcome, n)
    for outcome, n in more_total.items():
        total[outcome] = total.get(outcome, 0) + n
    # Their other attempts are in attempt_rollup already; the 'started' ones are not.
    if by != "error":
        started, _, _ = _summary_scan(
            db, by, params, only="AND a.status = 'started'", statuses_only=True
        )
        for key, counts in started.items():
            for status, n in counts.items():
                _add(statuses, key, status, n)
    return statuses, deliveries, total


# -- failures and interrupted attempts ----------------------------------------------

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
) -> list[dict[str, Any]]:
    """Failed attempts, newest first.

    >>> failures(db, since_seconds=86400, channel="telegram", limit=10)  # doctest: +SKIP
    [{'delivery_id': 'd1', 'attempt': 2, 'error_type': 'Forbidden', 'final': 1, ...}]
    """
    check_limit("limit", limit)
    where = ["status = 'failed'"]
    params: dict[str, Any] = {"limit": limit}
    if since_seconds is not None:
        where.append("started_at_ms >= :since")
        params["since"] = window_start(resolve_now(now_ms), since_seconds)
    if channel is not None:
        where.append("channel = :channel")
        params["channel"] = channel
    return rows(
        db,
        f"SELECT {_FAILURE_COLUMNS} FROM attempts WHERE {' AND '.join(where)} "
        "ORDER BY started_at_ms DESC, id DESC LIMIT :limit",
        params,
    )


_INTERRUPTED = (
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
        WHERE {_INTERRUPTED} {since}
        ORDER BY a.started_at_ms DESC, a.id DESC LIMIT :limit""",
        params,
    )


# -- replies that never arrived ------------------------------------------------------


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
    since_seconds: float
    grace_seconds: float
    window_start_ms: int
    now_ms: int
    items: list[UndeliveredItem]

    @property
    def replies(self) -> int:
        """Replies produced but not delivered."""
        return sum(1 for i in self.items if i.source == "ai_run")

    @property
    def enqueue_failures(self) -> int:
        """Failed enqueues not already counted as an undelivered reply."""
        return sum(1 for i in self.items if i.source == "enqueue")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "replies": self.replies, "enqueue_failures": self.enqueue_failures}


def undelivered(
    db: sqlite_utils.Database,
    *,
    since_seconds: float,
    grace_seconds: float = 60,
    now_ms: int | None = None,
) -> UndeliveredReport:
    """Replies produced in the window, more than ``grace_seconds`` ago, that no attempt
    in their trace delivered; plus every failed enqueue in the window whose delivery
    was not delivered later, even when no AI run was recorded.

    ``reason`` is the worst thing that happened: ``enqueue_failed``, ``failed``,
    ``interrupted``, ``pending_retry``, ``in_flight``, or ``no_attempt``.

    The runs are found through ``ai_runs.reply_pending`` (a partial index of the runs
    whose reply no attempt has delivered); the work then grows with the replies
    reported, not with the store. On a store with schema m009 each run's trace comes
    with its kept verdict (``_verdicts.py``); the traces without a current one are
    judged here by :func:`judge_traces`, from one read of their attempts and one of
    their failed enqueues, both from m007's small covering indexes of what did not
    deliver.

    >>> [i.reason for i in undelivered(db, since_seconds=86400).items]  # doctest: +SKIP
    ['no_attempt', 'enqueue_failed']
    """
    check_seconds("grace_seconds", grace_seconds, allow_zero=True)
    now = resolve_now(now_ms)
    start = window_start(now, since_seconds)
    params: dict[str, Any] = {"since": start, "settled": now - int(grace_seconds * 1000)}
    fast = has_rollups(db)
    # m007's covering indexes: every read below comes from a small index
    covered = fast and has_unsent_indexes(db)
    if fast:
        # reply_pending is kept by triggers: exactly "reply_produced = 1 and no attempt
        # of the trace delivered"; the partial index holds only those runs.
        not_delivered = "r.reply_pending = 1"
    else:
        # the unary + keeps SQLite on the trace index; without statistics it would pick
        # the status index and read every delivered row per run
        not_delivered = """r.reply_produced = 1 AND NOT EXISTS (
            SELECT 1 FROM attempts a WHERE a.trace_id = r.trace_id AND +a.status = 'delivered')"""
    if covered and has_verdicts(db):
        # m009: a trace's kept verdict, unless it waits to be judged again (or its
        # verdict depends on liveness: reason NULL)
        verdict = """r.verdict_reason, r.verdict_delivery_id, r.verdict_attempts,
            r.verdict_error_type, r.verdict_error_text, r.verdict_reason IS NULL
            OR EXISTS (SELECT 1 FROM traces_to_judge j WHERE j.trace_id = r.trace_id)"""
    else:
        verdict = "NULL, NULL, NULL, NULL, NULL, 1"
    runs = db.execute(
        f"""SELECT r.trace_id, r.inbound_id, r.channel,
                  COALESCE(r.ended_at_ms, r.started_at_ms) AS at_ms, {verdict}
        FROM ai_runs r
        WHERE r.started_at_ms >= :since AND {not_delivered}
          AND COALESCE(r.ended_at_ms, r.started_at_ms) <= :settled
        ORDER BY r.started_at_ms, r.id""",
        params,
    ).fetchall()
    listed = {run[0] for run in runs}
    judged = judge_traces(
        db, {run[0] for run in runs if run[9]}, liveness_params(db, now), covered=covered
    )
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
    items.sort(key=lambda i: (i.at_ms, i.trace_id))
    return UndeliveredReport(
        since_seconds=float(since_seconds), grace_seconds=float(grace_seconds),
        window_start_ms=start, now_ms=now, items=items,
    )


# -- health --------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthReport:
    """``ok`` is False when any figure is over its limit; ``reasons`` says which."""

    ok: bool
    reasons: list[str]
    since_seconds: float
    window_start_ms: int
    now_ms: int
    attempts: int
    failed: int
    channels: list[dict[str, Any]]
    interrupted: int
    undelivered: int
    enqueue_failures: int
    drops: dict[str, int]
    limits: dict[str, float]

    def headline(self) -> str:
        """One line for a healthy report (or a log line either way)."""
        rate = f" ({self.failed / self.attempts:.1%})" if self.attempts else ""
        return (
            f"{self.attempts} attempts, {self.failed} failed{rate}, "
            f"{self.interrupted} interrupted, {self.undelivered} undelivered, "
            f"{self.enqueue_failures} enqueue failures, {sum(self.drops.values())} dropped "
            f"in the last {format_duration(self.since_seconds)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _attempts_by_channel(
    db: sqlite_utils.Database, params: dict[str, Any]
) -> list[tuple[str | None, int, int]]:
    """(channel, attempts, failed) for attempts started since :since, by channel.

    From ``attempt_rollup`` (whole hours, then whole minutes) plus the rows of the
    first partial minute and the rows still ``started``, which the rollup leaves out.
    """
    if not has_rollups(db):
        return [
            (ch, n, int(failed)) for ch, n, failed in db.execute(
                "SELECT channel, COUNT(*), TOTAL(status = 'failed') FROM attempts "
                "WHERE started_at_ms >= :since GROUP BY channel ORDER BY channel",
                params,
            ).fetchall()
        ]
    since = params["since"]
    first_hour = -(-since // HOUR_MS)
    first_minute = -(-since // MINUTE_MS)
    q = {
        "since": since, "h": HOUR_MS, "m": MINUTE_MS, "h0": first_hour, "m0": first_minute,
        "m1": max(first_minute, first_hour * (HOUR_MS // MINUTE_MS)),
        "edge": first_minute * MINUTE_MS,
    }
    found = db.execute(
        f"""SELECT channel, SUM(n), SUM(n * failed) FROM (
            SELECT {decode("channel")} AS channel, n, status = 'failed' AS failed
            FROM attempt_rollup WHERE res = :h AND bucket >= :h0
            UNION ALL
            SELECT {decode("channel")}, n, status = 'failed'
            FROM attempt_rollup WHERE res = :m AND bucket >= :m0 AND bucket < :m1
            UNION ALL
            SELECT channel, 1, status = 'failed' FROM attempts
            WHERE started_at_ms >= :since AND started_at_ms < :edge AND status != 'started'
            UNION ALL
            SELECT channel, 1, 0 FROM attempts
            WHERE status = 'started' AND started_at_ms >= :since
        ) GROUP BY channel HAVING SUM(n) != 0 ORDER BY channel""",
        q,
    ).fetchall()
    return [(ch, int(n), int(failed)) for ch, n, failed in found]


def health(
    db: sqlite_utils.Database,
    *,
    since_seconds: float = 3600,
    max_failure_rate: float = 0.05,
    max_interrupted: int = 0,
    max_undelivered: int = 0,
    max_enqueue_failures: int = 0,
    max_drops: int = 0,
    min_attempts_for_rate: int = 1,
    grace_seconds: float = 60,
    now_ms: int | None = None,
) -> HealthReport:
    """Check the window against limits, for cron and monitoring.

    The failure rate is failed attempts over all attempts, per channel, and is judged
    only on channels with at least ``min_attempts_for_rate`` attempts (counted from
    ``attempt_rollup``, see :func:`_attempts_by_channel`). Drops are the
    ``drops`` rows whose latest drop falls in the window (their counts are totals).

    >>> report = health(db, since_seconds=3600)  # doctest: +SKIP
    >>> report.ok, report.reasons  # doctest: +SKIP
    (False, ['failure rate 12.5% (5 of 40 attempts) on channel telegram exceeds 5.0%'])
    """
    if not 0 <= max_failure_rate <= 1:
        raise InvalidArgumentError(
            f"max_failure_rate must be a fraction between 0 and 1, got {max_failure_rate!r}"
        )
    for name, value in (
        ("max_interrupted", max_interrupted), ("max_undelivered", max_undelivered),
        ("max_enqueue_failures", max_enqueue_failures), ("max_drops", max_drops),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgumentError(f"{name} must be a whole number >= 0, got {value!r}")
    check_limit("min_attempts_for_rate", min_attempts_for_rate)
    now = resolve_now(now_ms)
    start = window_start(now, since_seconds)
    window = format_duration(since_seconds)
    params: dict[str, Any] = {"since": start, **liveness_params(db, now)}
    reasons: list[str] = []

    channels: list[dict[str, Any]] = [
        {"channel": ch, "attempts": n, "failed": int(failed), "failure_rate": failed / n}
        for ch, n, failed in _attempts_by_channel(db, params)
    ]
    for ch in channels:
        if ch["attempts"] >= min_attempts_for_rate and ch["failure_rate"] > max_failure_rate:
            reasons.append(
                f"failure rate {ch['failure_rate']:.1%} ({ch['failed']} of "
                f"{_plural(ch['attempts'], 'attempt')}) on channel {ch['channel']} "
                f"exceeds {max_failure_rate:.1%}"
            )
    (n_interrupted,) = db.execute(
        f"WITH {DEAD_CTE} SELECT COUNT(*) FROM attempts a "
        f"WHERE {_INTERRUPTED} AND a.started_at_ms >= :since",
        params,
    ).fetchone()
    if n_interrupted > max_interrupted:
        reasons.append(
            f"{_plural(n_interrupted, 'interrupted attempt')} in the last {window} "
            f"(max {max_interrupted})"
        )
    n_undelivered = undelivered(
        db, since_seconds=since_seconds, grace_seconds=grace_seconds, now_ms=now
    ).replies
    if n_undelivered > max_undelivered:
        reasons.append(
            f"{_plural(n_undelivered, 'reply', 'replies')} produced but not delivered "
            f"in the last {window} (max {max_undelivered})"
        )
    (n_enqueue,) = db.execute(
        "SELECT COUNT(*) FROM enqueues WHERE status = 'failed' AND started_at_ms >= :since",
        params,
    ).fetchone()
    if n_enqueue > max_enqueue_failures:
        reasons.append(
            f"{_plural(n_enqueue, 'enqueue failure')} in the last {window} "
            f"(max {max_enqueue_failures})"
        )
    drops = dict(
        db.execute(
            "SELECT reason, count FROM drops WHERE last_at_ms >= :since ORDER BY reason", params
        ).fetchall()
    )
    if sum(drops.values()) > max_drops:
        detail = ", ".join(f"{reason}: {n}" for reason, n in drops.items())
        reasons.append(
            f"{_plural(sum(drops.values()), 'record')} dropped before reaching the store "
            f"({detail}), the latest in the last {window} (max {max_drops})"
        )
    future = count_future_rows(db.conn, now)  # no window holds them until they are set back
    if future:
        reasons.append(
            f"{_plural(future, 'row')} dated more than 5 minutes after now (did the clock "
            "jump?); prune sets them back to now"
        )
    return HealthReport(
        ok=not reasons,
        reasons=reasons,
        since_seconds=float(since_seconds),
        window_start_ms=start,
        now_ms=now,
        attempts=sum(ch["attempts"] for ch in channels),
        failed=sum(ch["failed"] for ch in channels),
        channels=channels,
        interrupted=n_interrupted,
        undelivered=n_undelivered,
        enqueue_failures=n_enqueue,
        drops=drops,
        limits={
            "max_failure_rate": max_failure_rate, "max_interrupted": max_interrupted,
            "max_undelivered": max_undelivered, "max_enqueue_failures": max_enqueue_failures,
            "max_drops": max_drops, "min_attempts_for_rate": min_attempts_for_rate,
        },
    )
