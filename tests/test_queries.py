"""The operator queries, against real store files written by the real StoreWriter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlite_utils

from local_store import (
    DELIVERY_OUTCOMES,
    InvalidArgumentError,
    NotFoundError,
    QueryRefusedError,
    StoreCorruptError,
    StoreError,
    StoreNotFoundError,
    StoreVersionError,
    failures,
    format_duration,
    health,
    interrupted,
    open_store,
    parse_duration,
    readonly_query,
    summary,
    trace_story,
    undelivered,
)
from tests import rawdb
from tests.store_builder import DAY_MINUTES, PLAN_OUTCOME, PLANS, READ_STATUS, StoreBuilder

WEEK = 7 * 86400

# How many deliveries of each plan each channel gets inside the last week...
RECENT = {
    "telegram": {"delivered_first": 7, "delivered_after_retry": 2, "failed_final": 3,
                 "pending_retry": 1, "interrupted": 1, "in_flight": 1},
    "slack": {"delivered_first": 4, "failed_final": 1},
}
# ...and ten days ago, which a one-week window must not count.
OLD = {"telegram": {"delivered_first": 5, "failed_final": 2}}


@pytest.fixture
def builder(tmp_path: Path) -> Iterator[StoreBuilder]:
    b = StoreBuilder(tmp_path / "deliveries.db")
    yield b
    b.close()


@pytest.fixture
def db(builder: StoreBuilder) -> Iterator[sqlite_utils.Database]:
    builder.flush()
    database = open_store(builder.path)
    yield database
    database.close()


def populate(b: StoreBuilder) -> None:
    for population, minutes_ago in ((RECENT, 30), (OLD, 10 * DAY_MINUTES)):
        for channel, plans in population.items():
            for plan, n in plans.items():
                for _ in range(n):
                    b.delivery(plan, channel=channel, minutes_ago=minutes_ago)
    b.flush()


def expected_attempts(plans: dict[str, int]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for plan, n in plans.items():
        for status, *_ in PLANS[plan]:
            counts[READ_STATUS[status]] += n
    return counts


def expected_outcomes(plans: dict[str, int]) -> Counter[str]:
    """Outcomes of ``populate``'s recent deliveries, half an hour old: a transient
    failure with no retry since is past the retry window, so abandoned."""
    counts: Counter[str] = Counter()
    for plan, n in plans.items():
        counts["abandoned" if plan == "pending_retry" else PLAN_OUTCOME[plan]] += n
    return counts


# -- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("5m", 300), ("1h", 3600), ("7d", 604800), ("2w", 1209600), ("30", 30),
     ("1.5h", 5400), (" 2D ", 172800), ("0", 0)],
)
def test_parse_duration_reads_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5m", "5x", "1.2.3h", "h", "5mm", "nan"])
def test_parse_duration_names_the_bad_value_and_the_accepted_forms(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        parse_duration(text)
    assert repr(text) in str(err.value)
    assert "7d" in str(err.value) and "seconds" in str(err.value)


@pytest.mark.parametrize("seconds", [90, 300, 3600, 5400, 604800, 1.5, 86400 * 3])
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


# -- summary --------------------------------------------------------------------------


def test_summary_by_channel_counts_what_was_written(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    populate(builder)
    result = summary(db, since_seconds=WEEK, by="channel", now_ms=builder.now_ms)

    got = {g.key["channel"]: g for g in result.groups}
    assert set(got) == set(RECENT)
    for channel, plans in RECENT.items():
        attempts = expected_attempts(plans)
        assert got[channel].attempts == sum(attempts.values())
        assert {k: v for k, v in got[channel].statuses.items() if v} == dict(attempts)
        assert {k: v for k, v in got[channel].deliveries.items() if v} == dict(
            expected_outcomes(plans)
        )
    everything = Counter[str]()
    for plans in RECENT.values():
        everything.update(expected_outcomes(plans))
    assert {k: v for k, v in result.total.deliveries.items() if v} == dict(everything)
    assert result.total.attempts == sum(g.attempts for g in result.groups)
    # Every outcome is reported, zero or not, so a dashboard sees a stable shape.
    assert set(DELIVERY_OUTCOMES) <= set(result.total.deliveries)


def test_summary_window_leaves_out_older_attempts(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    populate(builder)
    week = summary(db, since_seconds=WEEK, now_ms=builder.now_ms)
    month = summary(db, since_seconds=30 * 86400, now_ms=builder.now_ms)
    old_attempts = sum(expected_attempts(p).total() for p in OLD.values())
    assert month.total.attempts - week.total.attempts == old_attempts
    assert month.total.deliveries["failed"] - week.total.deliveries["failed"] == 2


def test_summary_by_error_groups_failed_attempts(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    populate(builder)
    result = summary(db, since_seconds=WEEK, by="error", now_ms=builder.now_ms)

    got = {(g.key["error_type"], g.key["failure_class"]): g for g in result.groups}
    tg, sl = RECENT["telegram"], RECENT["slack"]
    timed_out = got[("TimedOut", "transient")]
    assert timed_out.attempts == (
        tg["delivered_after_retry"] + tg["failed_final"] + tg["pending_retry"]
        + sl["failed_final"]
    )
    assert timed_out.statuses["failed"] == timed_out.attempts
    forbidden = got[("Forbidden", "permanent")]
    assert forbidden.attempts == tg["failed_final"] + sl["failed_final"]
    # Attempts that did not fail are one group with no error, so the groups add up.
    assert set(got) == {("TimedOut", "transient"), ("Forbidden", "permanent"), (None, None)}
    assert got[(None, None)].statuses["failed"] == 0
    assert sum(g.attempts for g in result.groups) == result.total.attempts
    # Deliveries are counted in the total only: one delivery fails in several ways.
    assert all(not any(g.deliveries.values()) for g in result.groups)
    assert {k: v for k, v in result.total.deliveries.items() if v} == dict(
        expected_outcomes(RECENT["telegram"]) + expected_outcomes(RECENT["slack"])
    )


def test_summary_by_status(builder: StoreBuilder, db: sqlite_utils.Database) -> None:
    populate(builder)
    result = summary(db, since_seconds=WEEK, by="status", now_ms=builder.now_ms)
    got = {g.key["status"]: g.attempts for g in result.groups}
    expected: Counter[str] = Counter()
    for plans in RECENT.values():
        expected.update(expected_attempts(plans))
    assert got == dict(expected)


def test_summary_on_an_empty_store_is_all_zero(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    result = summary(db, since_seconds=WEEK)
    assert result.groups == []
    assert result.total.attempts == 0
    assert set(result.total.deliveries.values()) == {0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"by": "recipient"}, "channel, error, status"),
     ({"since_seconds": 0}, "since_seconds"), ({"since_seconds": -5}, "since_seconds")],
)
def test_summary_rejects_bad_arguments(
    db: sqlite_utils.Database, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {"since_seconds": WEEK, **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        summary(db, **args)  # type: ignore[arg-type]


# -- failures -------------------------------------------------------------------------


def test_failures_newest_first_with_filters(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    m = builder.message(minutes_ago=60)
    builder.attempt(m.trace_id, "d1", status="failed", minutes_ago=50, error_type="TimedOut",
                    failure_class="transient", final=0)
    builder.attempt(m.trace_id, "d1", status="failed", minutes_ago=40, error_type="Forbidden",
                    error_text="bot was blocked by the user", failure_class="permanent",
                    final=1)
    builder.attempt(m.trace_id, "d2", status="failed", minutes_ago=45, channel="slack",
                    error_type="ChannelNotFound")
    builder.attempt(m.trace_id, "d3", status="delivered", minutes_ago=30)
    builder.attempt(m.trace_id, "d4", status="failed", minutes_ago=3 * DAY_MINUTES,
                    error_type="TimedOut")
    builder.flush()

    everything = failures(db, now_ms=builder.now_ms)
    assert [(f["delivery_id"], f["error_type"]) for f in everything] == [
        ("d1", "Forbidden"), ("d2", "ChannelNotFound"), ("d1", "TimedOut"), ("d4", "TimedOut"),
    ]
    first = everything[0]
    assert first["attempt"] == 2 and first["final"] == 1
    assert first["error_text"] == "bot was blocked by the user"
    assert first["failure_class"] == "permanent" and first["trace_id"] == m.trace_id

    day = failures(db, since_seconds=86400, now_ms=builder.now_ms)
    assert [f["delivery_id"] for f in day] == ["d1", "d2", "d1"]
    assert [f["channel"] for f in failures(db, channel="slack")] == ["slack"]
    assert len(failures(db, limit=2)) == 2


@pytest.mark.parametrize("limit", [0, -1])
def test_failures_rejects_a_limit_below_one(db: sqlite_utils.Database, limit: int) -> None:
    with pytest.raises(InvalidArgumentError, match="limit"):
        failures(db, limit=limit)


# -- trace story ----------------------------------------------------------------------


def _story_after_retry(b: StoreBuilder) -> tuple[str, str, str]:
    m = b.message(inbound_id="tg-1001")
    b.enqueue(m.trace_id, "d1", minutes_ago=9)
    b.attempt(m.trace_id, "d1", status="failed", minutes_ago=8, error_type="TimedOut",
              failure_class="transient", final=0)
    b.attempt(m.trace_id, "d1", status="delivered", minutes_ago=7)
    return m.inbound_id, m.trace_id, "d1"


def _story_blocked(b: StoreBuilder) -> tuple[str, str, str]:
    m = b.message(inbound_id="tg-1002")
    b.attempt(m.trace_id, "d2", status="failed", minutes_ago=8, error_type="Forbidden",
              error_text="bot was blocked by the user", failure_class="permanent", final=1)
    return m.inbound_id, m.trace_id, "d2"


def _story_interrupted(b: StoreBuilder) -> tuple[str, str, str]:
    m = b.message(inbound_id="tg-1003")
    b.attempt(m.trace_id, "d3", status="interrupted", minutes_ago=8)
    return m.inbound_id, m.trace_id, "d3"


def _story_retry_pending(b: StoreBuilder) -> tuple[str, str, str]:
    m = b.message(inbound_id="tg-1004")
    b.attempt(m.trace_id, "d4", status="failed", minutes_ago=8, error_type="TimedOut",
              failure_class="transient", final=0, max_attempts=3)
    return m.inbound_id, m.trace_id, "d4"


def _story_out_of_attempts(b: StoreBuilder) -> tuple[str, str, str]:
    m = b.message(inbound_id="tg-1005")
    for minutes_ago in (8, 7):
        b.attempt(m.trace_id, "d5", status="failed", minutes_ago=minutes_ago,
                  error_type="TimedOut", final=0, max_attempts=2)
    return m.inbound_id, m.trace_id, "d5"


@pytest.mark.parametrize(
    ("write", "verdict"),
    [
        (_story_after_retry, "delivered on attempt 2"),
        (_story_blocked, "failed permanently: Forbidden (bot was blocked by the user)"),
        (_story_interrupted, "interrupted mid-send on attempt 1"),
        (_story_retry_pending,
         "attempt 1 failed: TimedOut (TimedOut from the channel API); a retry is pending"),
        (_story_out_of_attempts,
         "gave up after 2 attempts (the last allowed): TimedOut (TimedOut from the channel API)"),
    ],
)
def test_trace_story_verdict_is_the_same_by_any_id(
    builder: StoreBuilder,
    db: sqlite_utils.Database,
    write: Callable[[StoreBuilder], tuple[str, str, str]],
    verdict: str,
) -> None:
    inbound_id, trace_id, delivery_id = write(builder)
    builder.flush()
    stories = [
        trace_story(db, inbound_id=inbound_id),
        trace_story(db, trace_id=trace_id),
        trace_story(db, delivery_id=delivery_id),
    ]
    assert {s.verdict for s in stories} == {verdict}
    assert {tuple(s.trace_ids) for s in stories} == {(trace_id,)}


def test_trace_story_tells_every_step_in_order(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    inbound_id, trace_id, _ = _story_after_retry(builder)
    builder.message(inbound_id="someone-else")  # must not leak into this story
    builder.flush()

    story = trace_story(db, inbound_id=inbound_id)
    assert story.trace_ids == [trace_id]
    assert [e["kind"] for e in story.timeline] == [
        "inbound", "ai_run", "enqueue", "attempt", "attempt",
    ]
    assert [e["status"] for e in story.timeline][-2:] == ["failed", "delivered"]
    assert "TimedOut" in story.timeline[3]["detail"]
    times = [e["at_ms"] for e in story.timeline]
    assert times == sorted(times)
    assert [a["attempt"] for a in story.attempts] == [1, 2]
    assert [len(story.inbound), len(story.ai_runs), len(story.enqueues)] == [1, 1, 1]
    (delivery,) = story.deliveries
    assert (delivery.outcome, delivery.attempts, delivery.delivered_attempt) == ("delivered", 2, 2)
    assert story.to_dict()["deliveries"][0]["outcome"] == "delivered"


@pytest.mark.parametrize(
    ("setup", "verdict"),
    [
        ("reply_only", "reply produced but no delivery was ever attempted"),
        ("enqueued_only", "reply enqueued but no delivery was ever attempted"),
        ("enqueue_failed", "enqueue failed: QueueFull (spool directory is full)"),
        ("no_reply", "the AI run produced no reply, so there was nothing to deliver"),
        ("run_failed", "AI run failed: RateLimitError (model overloaded); no reply"),
        ("inbound_only", "message received but no AI run was recorded"),
    ],
)
def test_trace_story_explains_a_reply_that_never_left(
    builder: StoreBuilder, db: sqlite_utils.Database, setup: str, verdict: str
) -> None:
    m = builder.message(
        inbound_id="m-1",
        reply=setup not in ("no_reply", "run_failed"),
        run_failed=setup == "run_failed",
        with_run=setup != "inbound_only",
    )
    if setup in ("enqueued_only", "enqueue_failed"):
        builder.enqueue(m.trace_id, "q-1", minutes_ago=9, failed=setup == "enqueue_failed")
    builder.flush()
    assert trace_story(db, inbound_id="m-1").verdict == verdict


def test_trace_story_finds_a_message_whose_process_died_mid_handler(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    # Only the attempt row (committed before the send) survived: no inbound, no run.
    trace_id = builder.new_trace()
    builder.attempt(trace_id, "d9", status="interrupted", minutes_ago=5, inbound_id="tg-crash")
    builder.flush()
    story = trace_story(db, inbound_id="tg-crash")
    assert story.trace_ids == [trace_id]
    assert story.verdict == "interrupted mid-send on attempt 1"


def test_trace_story_of_an_enqueue_only_delivery(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    m = builder.message()
    builder.enqueue(m.trace_id, "q-7", minutes_ago=9, failed=True)
    builder.flush()
    assert trace_story(db, delivery_id="q-7").trace_ids == [m.trace_id]


def test_trace_story_with_several_deliveries_names_each(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    m = builder.message(inbound_id="fan-out")
    builder.delivery("delivered_first", message=m, minutes_ago=9)
    builder.delivery("failed_final", message=m, minutes_ago=8)
    builder.flush()
    verdict = trace_story(db, inbound_id="fan-out").verdict
    assert verdict.count("delivery d-") == 2
    assert "delivered on attempt 1" in verdict
    assert "failed permanently after 2 attempts: Forbidden" in verdict


@pytest.mark.parametrize(
    "selector", [{"inbound_id": "nope"}, {"trace_id": "0" * 32}, {"delivery_id": "nope"}]
)
def test_trace_story_unknown_id_is_a_typed_not_found(
    db: sqlite_utils.Database, selector: dict[str, str]
) -> None:
    with pytest.raises(NotFoundError) as err:
        trace_story(db, **selector)
    assert isinstance(err.value, LookupError) and isinstance(err.value, StoreError)
    assert repr(next(iter(selector.values()))) in str(err.value)


@pytest.mark.parametrize("selector", [{}, {"inbound_id": "a", "trace_id": "b"}])
def test_trace_story_wants_exactly_one_id(
    db: sqlite_utils.Database, selector: dict[str, str]
) -> None:
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        trace_story(db, **selector)


# -- undelivered ----------------------------------------------------------------------


def test_undelivered_gives_each_lost_reply_its_reason(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    b = builder
    expected: dict[str, tuple[str, str]] = {}  # trace_id -> (source, reason)

    m = b.message(inbound_id="never-sent")
    expected[m.trace_id] = ("ai_run", "no_attempt")
    m, _ = b.delivery("failed_final", minutes_ago=8)
    expected[m.trace_id] = ("ai_run", "failed")
    m, _ = b.delivery("interrupted", minutes_ago=8)
    expected[m.trace_id] = ("ai_run", "interrupted")
    m, _ = b.delivery("pending_retry", minutes_ago=8)
    expected[m.trace_id] = ("ai_run", "pending_retry")
    m, _ = b.delivery("in_flight", minutes_ago=8)
    expected[m.trace_id] = ("ai_run", "in_flight")
    m = b.message(inbound_id="swallowed")
    b.enqueue(m.trace_id, "q-1", minutes_ago=9, failed=True)
    expected[m.trace_id] = ("ai_run", "enqueue_failed")
    # A failed enqueue with no AI run recorded at all is still listed.
    orphan = b.new_trace()
    b.enqueue(orphan, "q-2", minutes_ago=9, failed=True, inbound_id="no-run")
    expected[orphan] = ("enqueue", "enqueue_failed")

    # None of these is lost:
    b.delivery("delivered_first", minutes_ago=8)
    b.delivery("delivered_after_retry", minutes_ago=8)
    b.message(reply=False)  # nothing to deliver
    b.message(minutes_ago=0.5)  # inside the grace period
    b.message(minutes_ago=3 * DAY_MINUTES)  # outside the window
    m = b.message()
    b.enqueue(m.trace_id, "q-3", minutes_ago=9, failed=True)  # failed, retried, delivered
    b.attempt(m.trace_id, "q-3", status="delivered", minutes_ago=8)
    b.flush()

    report = undelivered(db, since_seconds=86400, grace_seconds=60, now_ms=b.now_ms)
    assert {i.trace_id: (i.source, i.reason) for i in report.items} == expected
    assert report.replies == 6 and report.enqueue_failures == 1
    by_trace = {i.trace_id: i for i in report.items}
    swallowed = next(i for i in report.items if i.inbound_id == "swallowed")
    assert (swallowed.error_type, swallowed.delivery_id) == ("QueueFull", "q-1")
    failed = next(t for t, v in expected.items() if v[1] == "failed")
    assert by_trace[failed].error_type == "Forbidden" and by_trace[failed].attempts == 2
    assert report.to_dict()["replies"] == 6


def test_undelivered_grace_is_measured_from_the_end_of_the_run(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    builder.message(minutes_ago=3)  # reply ended 3 min - 1 s ago
    builder.flush()
    now = builder.now_ms
    assert len(undelivered(db, since_seconds=3600, grace_seconds=60, now_ms=now).items) == 1
    assert undelivered(db, since_seconds=3600, grace_seconds=600, now_ms=now).items == []


# -- interrupted ----------------------------------------------------------------------


def _crash_mid_send(path: Path, started_at_ms: int) -> int:
    """Run a writer in a child process that starts an attempt and dies; its pid."""
    code = textwrap.dedent(f"""
        import os
        from local_store import StoreWriter
        w = StoreWriter({str(path)!r}, service="crashing-gateway")
        w.start_attempt({{"delivery_id": "crashed", "trace_id": "{'c' * 32}",
                         "span_id": "{'c' * 16}", "channel": "telegram",
                         "started_at_ms": {started_at_ms}}})
        os._exit(0)  # no close(): the process dies mid-send
    """)
    child = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.returncode == 0, child.stderr
    (pid,) = rawdb.connect(path).execute(
        "SELECT pid FROM writers WHERE service = 'crashing-gateway'"
    ).fetchone()
    return int(pid)


def test_interrupted_finds_an_attempt_whose_process_died_without_rewriting_it(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    pid = _crash_mid_send(builder.path, builder.at(5))
    m, _ = builder.delivery("in_flight", minutes_ago=5)  # our own writer: alive
    builder.delivery("interrupted", minutes_ago=20)
    stale = builder.new_trace()  # alive writer, but started two hours ago
    builder.attempt(stale, "stale", status="started", minutes_ago=120)
    builder.flush()

    found = interrupted(db, now_ms=builder.now_ms)
    assert [(r["delivery_id"], r["why"]) for r in found][:1] == [("crashed", "writer_gone")]
    assert {r["why"] for r in found} == {"writer_gone", "recorded", "stale"}
    assert found[0]["writer_pid"] == pid
    assert m.trace_id not in {r["trace_id"] for r in found}
    # Read-only: the row is still 'started' for the next writer's rescue to mark.
    (status,) = db.execute("SELECT status FROM attempts WHERE delivery_id = 'crashed'").fetchone()
    assert status == "started"
    # The summary agrees.
    statuses = summary(db, since_seconds=86400, now_ms=builder.now_ms).total.statuses
    assert (statuses["interrupted"], statuses["in_flight"]) == (3, 1)
    assert [r["delivery_id"] for r in interrupted(db, since_seconds=600)] == ["crashed"]
    assert len(interrupted(db, limit=1)) == 1


# -- health ---------------------------------------------------------------------------


def test_health_is_ok_when_everything_arrived(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    for _ in range(3):
        builder.delivery("delivered_first", minutes_ago=10)
    builder.flush()
    report = health(db, since_seconds=3600, now_ms=builder.now_ms)
    assert report.ok and report.reasons == []
    assert report.headline().startswith("3 attempts, 0 failed (0.0%), 0 interrupted")


def test_health_names_every_limit_that_was_exceeded(
    builder: StoreBuilder, db: sqlite_utils.Database
) -> None:
    b = builder
    for _ in range(35):
        b.delivery("delivered_first", minutes_ago=10)
    for _ in range(5):
        b.delivery("pending_retry", minutes_ago=10)  # 5 failed of 40 telegram attempts
    b.delivery("failed_final", channel="slack", minutes_ago=10)  # 2 of 2 on slack
    for _ in range(3):
        b.delivery("interrupted", channel="discord", minutes_ago=10)
    m = b.message()
    b.enqueue(m.trace_id, None, minutes_ago=9, failed=True)
    b.writer.count_drop("queue_full", 4)
    b.flush()

    report = health(db, since_seconds=3600, now_ms=b.now_ms)
    assert not report.ok
    assert report.reasons == [
        "failure rate 100.0% (2 of 2 attempts) on channel slack exceeds 5.0%",
        "failure rate 12.5% (5 of 40 attempts) on channel telegram exceeds 5.0%",
        "3 interrupted attempts in the last 1h (max 0)",
        "10 replies produced but not delivered in the last 1h (max 0)",
        "1 enqueue failure in the last 1h (max 0)",
        "4 records dropped before reaching the store (queue_full: 4), "
        "the latest in the last 1h (max 0)",
    ]
    assert (report.interrupted, report.undelivered, report.enqueue_failures) == (3, 10, 1)
    assert report.drops == {"queue_full": 4}

    relaxed = health(
        db, since_seconds=3600, max_failure_rate=0.2, max_interrupted=3, max_undelivered=10,
        max_enqueue_failures=1, max_drops=4, min_attempts_for_rate=3, now_ms=b.now_ms,
    )
    assert relaxed.ok, relaxed.reasons  # slack's 2 attempts are too few to judge


@pytest.mark.parametrize(
    "kwargs",
    [{"max_failure_rate": 1.5}, {"max_failure_rate": -0.1}, {"max_interrupted": -1},
     {"min_attempts_for_rate": 0}, {"since_seconds": 0}],
)
def test_health_rejects_bad_limits(db: sqlite_utils.Database, kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidArgumentError):
        health(db, **kwargs)  # type: ignore[arg-type]


# -- read-only SQL --------------------------------------------------------------------


def test_readonly_query_reads_tables_views_and_json(builder: StoreBuilder) -> None:
    builder.delivery("failed_final", minutes_ago=10)
    builder.flush()
    columns, rows = readonly_query(
        builder.path, "SELECT channel, COUNT(*) AS n FROM v_failures GROUP BY channel"
    )
    assert (columns, rows) == (["channel", "n"], [("telegram", 2)])
    _, rows = readonly_query(
        builder.path,
        "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < ?) "
        "SELECT SUM(x), (SELECT COUNT(*) FROM json_each('[1,2]')) FROM r",
        (3,),
    )
    assert rows == [(6, 2)]


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("DELETE FROM attempts", "DELETE attempts"),
        ("INSERT INTO drops VALUES ('x', 1, 1, 1, NULL)", "INSERT drops"),
        ("UPDATE attempts SET status = 'delivered'", "UPDATE attempts"),
        ("DROP TABLE attempts", "DROP TABLE"),
        ("CREATE TABLE x (a)", "CREATE TABLE"),
        ("ATTACH DATABASE ':memory:' AS other", "ATTACH"),
        ("VACUUM INTO '/tmp/copy.db'", "ATTACH"),
        ("PRAGMA journal_mode = DELETE", "PRAGMA journal_mode"),
        ("SELECT * FROM pragma_table_info('attempts')", "PRAGMA table_info"),
        ("WITH x AS (SELECT 1) DELETE FROM attempts", "DELETE attempts"),
        ("SELECT 1; DELETE FROM attempts", "one SQL statement"),
        ("SELECT load_extension('x')", "load_extension"),
        ("UPDATE sqlite_master SET sql = ''", "write refused"),
        ("CREATE TEMP VIEW v AS SELECT 1", "CREATE TEMP VIEW"),
    ],
)
def test_readonly_query_refuses_anything_but_reading(
    builder: StoreBuilder, sql: str, refused: str
) -> None:
    builder.delivery("delivered_first", minutes_ago=10)
    builder.flush()
    with pytest.raises(QueryRefusedError) as err:
        readonly_query(builder.path, sql)
    assert refused in str(err.value)
    (n,) = rawdb.connect(builder.path).execute("SELECT COUNT(*) FROM attempts").fetchone()
    assert n == 1


def test_readonly_query_on_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        readonly_query(tmp_path / "missing.db", "SELECT 1")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(StoreCorruptError):
        readonly_query(garbage, "SELECT 1")
    other = tmp_path / "other.db"
    rawdb.connect(other).execute("CREATE TABLE t (a)").connection.commit()
    with pytest.raises(StoreCorruptError, match="not an otel-delivery store"):
        readonly_query(other, "SELECT 1")


def test_readonly_query_refuses_a_newer_schema(builder: StoreBuilder) -> None:
    builder.flush()
    conn = rawdb.connect(builder.path)
    conn.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('otel_delivery', 'm999_from_the_future', '2099-01-01')"
    )
    conn.commit()
    with pytest.raises(StoreVersionError, match="m999_from_the_future"):
        readonly_query(builder.path, "SELECT 1")
