"""``health``: the recent window checked against limits, for cron and monitoring.

Takes a store opened with :func:`local_store.open_store`, only reads, and accepts
``now_ms`` so a test (or a post-mortem) can ask "as of" a given moment."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import sqlite_utils

from ._arguments import check_limit, resolve_now, window_start
from ._durations import format_duration
from ._failures import INTERRUPTED_SQL
from ._future import count_future_rows
from ._outcome import DEAD_CTE, DEFAULT_RETRY_WINDOW_SECONDS, liveness_params
from ._receipts import unmatched_receipts
from ._rollups import HOUR_MS, MINUTE_MS, decode
from ._undelivered import undelivered
from .exceptions import InvalidArgumentError

__all__ = ["MISUSE_REASONS", "HealthReport", "health"]

# Counted problems that lose no record but show the decorators are used wrongly: a
# send with no trace context (it starts a trace of its own, so its reply looks
# unsent), a carrier= that gave None or a non-mapping (the trace link is lost).
# ``health`` reports them apart from drops.
MISUSE_REASONS = ("orphan_send", "carrier_missing", "carrier_not_mapping", "record_if_error")



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
    misuse: dict[str, int]
    undelivered_in_grace: int
    failed_after_accept: int = 0
    unmatched_receipts: int = 0
    store_bytes: int = 0
    oldest_attempt_age_seconds: float | None = None

    def headline(self) -> str:
        """One line for a healthy report (or a log line either way)."""
        rate = f" ({self.failed / self.attempts:.1%})" if self.attempts else ""
        return (
            f"{self.attempts} attempts, {self.failed} failed{rate}, "
            f"{self.interrupted} interrupted, {self.undelivered} undelivered, "
            f"{self.enqueue_failures} enqueue failures, {sum(self.drops.values())} dropped "
            f"in the last {format_duration(self.since_seconds)}; "
            f"store {self.store_bytes / 1e6:.1f} MB"
            + (f", oldest attempt {self.oldest_attempt_age_seconds / 86400:.1f} days old"
               if self.oldest_attempt_age_seconds is not None else "")
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
    max_misuse: int = 0,
    max_failed_after_accept: int = 0,
    min_attempts_for_rate: int = 1,
    grace_seconds: float = 60,
    now_ms: int | None = None,
    retry_window_seconds: float = DEFAULT_RETRY_WINDOW_SECONDS,
) -> HealthReport:
    """Check the window against limits, for cron and monitoring.

    The failure rate is failed attempts over all attempts, per channel, and is judged
    only on channels with at least ``min_attempts_for_rate`` attempts (counted from
    ``attempt_rollup``, see :func:`_attempts_by_channel`). Drops are the
    ``drops`` rows whose latest drop falls in the window (their counts are totals);
    the counted misuses of the decorators (:data:`MISUSE_REASONS`, such as a send with
    no trace context) are reported apart, against ``max_misuse``. Replies younger
    than ``grace_seconds`` are not judged yet; the report says how many.

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
        ("max_misuse", max_misuse), ("max_failed_after_accept", max_failed_after_accept),
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
        f"WHERE {INTERRUPTED_SQL} AND a.started_at_ms >= :since",
        params,
    ).fetchone()
    if n_interrupted > max_interrupted:
        reasons.append(
            f"{_plural(n_interrupted, 'interrupted attempt')} in the last {window} "
            f"(max {max_interrupted})"
        )
    unsent = undelivered(
        db, since_seconds=since_seconds, grace_seconds=grace_seconds, now_ms=now,
        retry_window_seconds=retry_window_seconds,
    )
    n_undelivered = unsent.replies
    if n_undelivered > max_undelivered:
        reasons.append(
            f"{_plural(n_undelivered, 'reply', 'replies')} produced but not delivered "
            f"in the last {window} (max {max_undelivered})"
        )
    if unsent.failed_after_accept > max_failed_after_accept:
        reasons.append(
            f"{_plural(unsent.failed_after_accept, 'message')} accepted by the API then "
            f"reported failed by the platform in the last {window} "
            f"(max {max_failed_after_accept})"
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
    counted = dict(
        db.execute(
            "SELECT reason, count FROM drops WHERE last_at_ms >= :since ORDER BY reason", params
        ).fetchall()
    )
    misuse = {r: n for r, n in counted.items() if r in MISUSE_REASONS}
    drops = {r: n for r, n in counted.items() if r not in MISUSE_REASONS}
    if sum(misuse.values()) > max_misuse:
        detail = ", ".join(f"{reason}: {n}" for reason, n in misuse.items())
        reasons.append(
            f"{_plural(sum(misuse.values()), 'decorated call')} lost their trace link "
            f"({detail}), the latest in the last {window} (max {max_misuse}): give "
            "@deliver the reply's carrier=, or call it inside the AI run"
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
    (oldest,) = db.execute("SELECT MIN(started_at_ms) FROM attempts").fetchone()
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
            "max_drops": max_drops, "max_misuse": max_misuse,
            "max_failed_after_accept": max_failed_after_accept,
            "min_attempts_for_rate": min_attempts_for_rate, "grace_seconds": grace_seconds,
            "retry_window_seconds": retry_window_seconds,
        },
        misuse=misuse,
        undelivered_in_grace=unsent.in_grace,
        failed_after_accept=unsent.failed_after_accept,
        unmatched_receipts=unmatched_receipts(db, start),
        store_bytes=_store_bytes(db),
        oldest_attempt_age_seconds=None if oldest is None else max(0.0, (now - oldest) / 1000),
    )


def _store_bytes(db: sqlite_utils.Database) -> int:
    """The store file's size as SQLite counts it (pages in use and free)."""
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    (size,) = db.execute("PRAGMA page_size").fetchone()
    return int(pages) * int(size)
