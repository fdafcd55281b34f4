"""``summary``: attempts by status and deliveries by outcome, per group.

Takes a store opened with :func:`local_store.open_store`, only reads, and accepts
``now_ms`` so a test (or a post-mortem) can ask "as of" a given moment.

It reads the rollups that triggers keep (``_rollups.py``): whole hours, then whole
minutes, then the first partial minute and the deliveries still in flight from the
rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import sqlite_utils

from ._arguments import check_seconds, resolve_now, window_start
from ._outcome import (
    DEAD_CTE,
    DEFAULT_RETRY_WINDOW_SECONDS,
    effective_status,
    liveness_params,
    outcome_of,
)
from ._receipts import ReceiptRates, receipt_rates, unmatched_receipts
from ._rollups import HOUR_MS, MINUTE_MS, contributions, decode
from .exceptions import InvalidArgumentError

__all__ = [
    "ATTEMPT_STATUSES", "DELIVERY_OUTCOMES", "SUMMARY_GROUPINGS", "Summary", "SummaryGroup",
    "summary",
]

SUMMARY_GROUPINGS = ("channel", "error", "status")
# Always reported, so a zero is visible; any other status a gateway writes is added.
ATTEMPT_STATUSES = ("delivered", "failed", "interrupted", "in_flight")
DELIVERY_OUTCOMES = (
    "delivered", "failed", "abandoned", "pending_retry", "interrupted", "in_flight",
)

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
    """Counts for one group: attempts by status, and (grouped by channel, and in the
    total) the deliveries they belong to by final outcome. A delivery counts once per
    channel it has an attempt on, so the channels' deliveries add up to the total
    unless a delivery was tried on several channels."""

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
    # per channel, where the platform sent receipts in the window (delivered, read)
    receipts: list[ReceiptRates] = field(default_factory=list)
    unmatched_receipts: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "receipts": [r.to_dict() for r in self.receipts]}


def summary(
    db: sqlite_utils.Database,
    *,
    since_seconds: float,
    by: str = "channel",
    now_ms: int | None = None,
    retry_window_seconds: float = DEFAULT_RETRY_WINDOW_SECONDS,
) -> Summary:
    """Attempts and deliveries in the window, grouped by channel, error or status.

    The total is the same whatever ``by`` is: every attempt started in the window, and
    every delivery with one, its final outcome judged on all of its attempts. The
    groups' attempts add up to it. ``by="error"`` groups failed attempts by error type
    and failure class, and puts the attempts that did not fail in one group with no
    error. Deliveries are counted per group only ``by="channel"``, once in each channel
    they have an attempt on in the window.

    On a current store this reads the hourly and per-minute rollups that triggers keep
    (see ``_rollups.py``), the first partial minute of the window from the rows, and
    only the deliveries with an attempt still ``started`` from the rows, since whether
    those are interrupted depends on their writer being alive now.

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
    check_seconds("retry_window_seconds", retry_window_seconds, allow_zero=True)
    params = {"since": start, **liveness_params(db, now, retry_window_seconds)}
    keys = _GROUP_COLUMNS[by]
    statuses_by_key, deliveries_by_key, total_deliveries = _summary_counts(db, by, params)
    if by != "channel":
        deliveries_by_key = {}

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
        groups=groups, total=total, receipts=receipt_rates(db, start),
        unmatched_receipts=unmatched_receipts(db, start),
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
    window = f"""{DEAD_CTE},
        win AS (
            SELECT a.delivery_id, a.channel,
                   CASE WHEN a.status = 'failed' THEN a.error_type END AS error_type,
                   CASE WHEN a.status = 'failed' THEN a.failure_class END AS failure_class,
                   {effective_status("a")} AS status
            FROM {source} WHERE a.started_at_ms >= :since {only}
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
    key_cols = {
        "channel": decode("channel"),
        "error": f"{decode('error_type')}, {decode('failure_class')}",
        "status": "status",
    }[by]
    for *key, status, n in db.execute(
        f"""SELECT {key_cols}, status, SUM(n) FROM (
            SELECT * FROM attempt_rollup WHERE res = :h AND bucket >= :h0
            UNION ALL
            SELECT * FROM attempt_rollup WHERE res = :m AND bucket >= :m0 AND bucket < :m1
        ) GROUP BY {key_cols}, status HAVING SUM(n) != 0""",
        q,
    ).fetchall():
        _add(statuses, tuple(key), status, n)
    raw_keys = {
        "channel": "a.channel",
        "error": "CASE WHEN a.status = 'failed' THEN a.error_type END, "
                 "CASE WHEN a.status = 'failed' THEN a.failure_class END",
        "status": "a.status",
    }[by]
    for *key, status, n in db.execute(
        f"""SELECT {raw_keys}, a.status, COUNT(*) FROM attempts a
        WHERE a.started_at_ms >= :since AND a.started_at_ms < :edge
          AND a.status != 'started'
        GROUP BY {raw_keys}, a.status""",
        q,
    ).fetchall():
        _add(statuses, tuple(key), status, n)

    grouping = by
    totals = "all"
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
    _tell_abandoned(db, by, q, deliveries, total)

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
    started, _, _ = _summary_scan(
        db, by, params, only="AND a.status = 'started'", statuses_only=True
    )
    for key, counts in started.items():
        for status, n in counts.items():
            _add(statuses, key, status, n)
    return statuses, deliveries, total


def _tell_abandoned(
    db: sqlite_utils.Database, by: str, q: dict[str, Any], deliveries: _Tally,
    total: dict[str, int],
) -> None:
    """Split the rollups' ``pending_retry`` into ``abandoned`` and ``pending_retry``.

    The rollups cannot know the present (they store the outcome with the ``TIMELESS``
    present of ``_outcome.py``), so they file every failed, non-final latest attempt
    as ``pending_retry``. Those still waiting (the latest attempt failed within the
    retry window, after :abandon_before) are few and recent: they are read from the
    rows (failed attempts through the status index, then their deliveries' attempts)
    and judged now with :func:`outcome_of`; every other one was abandoned.
    """
    xs = (
        "(SELECT a.* FROM attempts a WHERE a.delivery_id IN (SELECT f.delivery_id FROM "
        "attempts f WHERE f.status = 'failed' AND f.started_at_ms >= :abandon_before))"
    )
    found = db.execute(
        f"""WITH {DEAD_CTE}
        SELECT c.delivery_id, c.grouping, {decode('c.k1')}, {decode('c.k2')},
               {outcome_of('c.delivery_id')}
        FROM ({contributions(xs)}) c
        WHERE c.grouping IN (:g, 'all') AND c.at >= :since AND c.outcome = 'pending_retry'""",
        {**q, "g": by},
    ).fetchall()
    waiting = {d for d, _, _, _, now in found if now == "pending_retry"}
    still: _Tally = {}
    for delivery_id, part, key1, key2, _ in found:
        if delivery_id in waiting:
            key = ("all",) if part == "all" else (part, key1, key2)[: 1 + len(_GROUP_COLUMNS[by])]
            _add(still, key, "n", 1)
    for key, counts in [*deliveries.items(), ((), total)]:
        pending = counts.pop("pending_retry", 0)
        if not pending:
            continue
        lookup = ("all",) if key == () else (by, *key)
        waiting_n = still.get(lookup, {}).get("n", 0)
        if waiting_n:
            counts["pending_retry"] = waiting_n
        if pending - waiting_n:
            counts["abandoned"] = counts.get("abandoned", 0) + pending - waiting_n
