"""Every reader of a delivery's outcome agrees with the one definition (``_outcome.py``).

On randomised stores (retries, deliveries spread over traces, dead and closed
writers' ``started`` rows, failures inside and outside the retry window, future rows)
each delivery's outcome is computed once with ``outcome_of``, and then read back from
every consumer: ``summary``'s totals (rollups, and the scan a read-only old store
gets), ``failures``' ``delivery_outcome``, ``trace_story``, ``undelivered``'s reasons,
``health``, the rollups' stored (timeless) outcomes, and ``v_deliveries``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from local_store import failures, health, open_store, summary, trace_story, undelivered
from local_store._outcome import (
    DEAD_CTE,
    DELIVERIES_VIEW_SQL,
    IN_VIEW,
    OUTCOMES,
    TIMELESS,
    effective_status,
    liveness_params,
    outcome_of,
)
from local_store._reading import delivery_outcomes
from local_store._rescue import DEFAULT_STALE_AFTER_MS
from tests.test_rollups import DAY, NOW, _populate

ALL_TIME = 60 * DAY  # every row _populate writes starts within it
RETRY_WINDOWS = [600, 3 * 3600]  # the default, and one that turns abandoned to waiting


def _definition(
    db: sqlite_utils.Database, retry_window_seconds: float, now_ms: int = NOW
) -> dict[str, str]:
    """Each delivery's outcome, from the definition (index probes per delivery)."""
    return dict(db.execute(
        f"""WITH {DEAD_CTE}, ids AS (SELECT DISTINCT delivery_id FROM attempts)
        SELECT delivery_id, {outcome_of("ids.delivery_id")} FROM ids""",
        liveness_params(db, now_ms, retry_window_seconds),
    ).fetchall())


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


@pytest.fixture(params=[11, 12, 13])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> sqlite_utils.Database:
    db = open_store(tmp_path / "d.db", create=True)
    rng = random.Random(request.param)
    _populate(db, rng, deliveries=300, judge=0.05)
    # Recent ones: within the retry window and the stale limit of NOW, some by the live
    # writer (this process, the first _populate registers).
    (live,) = db.execute("SELECT MIN(id) FROM writers").fetchone()
    for n in range(12):
        status = ("failed", "started", "failed", "interrupted")[n % 4]
        for attempt in range(1, 1 + n % 3):
            db.execute(
                "INSERT INTO attempts (delivery_id, attempt, max_attempts, trace_id, span_id, "
                "channel, status, final, started_at_ms, writer_id) "
                "VALUES (?, ?, 5, ?, ?, 'telegram', ?, 0, ?, ?)",
                [f"recent{n}", attempt, f"t{rng.randrange(200) + 10_000}", f"recent{n}-{attempt}",
                 "failed" if attempt < n % 3 else status, NOW - rng.randrange(300_000), live],
            )
    db.conn.commit()
    yield db
    db.close()


def test_the_mix_has_every_outcome(store: sqlite_utils.Database) -> None:
    found = set(_definition(store, 600).values())
    assert found == set(OUTCOMES), set(OUTCOMES) - found


@pytest.mark.parametrize("retry_window_seconds", RETRY_WINDOWS)
def test_summary_totals_are_the_definitions_counts(
    store: sqlite_utils.Database, retry_window_seconds: float
) -> None:
    expected = Counter(_definition(store, retry_window_seconds).values())
    for by in ("channel", "status", "error"):
        s = summary(store, since_seconds=ALL_TIME / 1000, by=by, now_ms=NOW,
                    retry_window_seconds=retry_window_seconds)
        assert _nonzero(s.total.deliveries) == dict(expected), by


@pytest.mark.parametrize("retry_window_seconds", RETRY_WINDOWS)
def test_failures_trace_and_judged_deliveries_read_the_definition(
    store: sqlite_utils.Database, retry_window_seconds: float
) -> None:
    expected = _definition(store, retry_window_seconds)
    rows = failures(store, limit=10_000, now_ms=NOW, retry_window_seconds=retry_window_seconds)
    assert rows
    for r in rows:
        assert r["delivery_outcome"] == expected[r["delivery_id"]], r
    judged = delivery_outcomes(
        store, "SELECT delivery_id FROM attempts",
        liveness_params(store, NOW, retry_window_seconds),
    )
    assert {d.delivery_id: d.outcome for d in judged} == expected
    for delivery_id in random.Random(1).sample(sorted(expected), 40):
        story = trace_story(store, delivery_id=delivery_id, now_ms=NOW,
                            retry_window_seconds=retry_window_seconds)
        assert story.deliveries
        for d in story.deliveries:
            assert d.outcome == expected[d.delivery_id], d


@pytest.mark.parametrize("retry_window_seconds", RETRY_WINDOWS)
def test_undelivered_and_health_tell_the_definitions_outcomes(
    store: sqlite_utils.Database, retry_window_seconds: float
) -> None:
    expected = _definition(store, retry_window_seconds)
    report = undelivered(store, since_seconds=ALL_TIME / 1000, grace_seconds=0, now_ms=NOW,
                         retry_window_seconds=retry_window_seconds)
    told = [i for i in report.items if i.source == "ai_run"
            and i.reason not in ("enqueue_failed", "no_attempt")]
    assert told
    for item in told:
        outcome = expected[item.delivery_id]
        assert item.reason == (outcome if outcome != "delivered" else "other"), item
    checked = health(store, since_seconds=ALL_TIME / 1000, grace_seconds=0, now_ms=NOW,
                     retry_window_seconds=retry_window_seconds)
    assert checked.undelivered == report.replies
    (interrupted,) = store.execute(
        f"WITH {DEAD_CTE} SELECT COUNT(*) FROM attempts a "
        f"WHERE ({effective_status('a')}) = 'interrupted' AND a.started_at_ms >= :since",
        {**liveness_params(store, NOW), "since": NOW - ALL_TIME},
    ).fetchone()
    assert checked.interrupted == interrupted


def test_the_rollups_store_the_timeless_definition(store: sqlite_utils.Database) -> None:
    """delivery_rollup holds each delivery with no ``started`` attempt once (grouping
    'all', per resolution), under the definition with the TIMELESS present."""
    expected = Counter(o for (o,) in store.execute(
        f"""SELECT {outcome_of("d.delivery_id", TIMELESS)}
        FROM (SELECT DISTINCT delivery_id FROM attempts) d
        WHERE NOT EXISTS (SELECT 1 FROM attempts s WHERE s.delivery_id = d.delivery_id
                          AND s.status = 'started')"""
    ).fetchall())
    assert "abandoned" not in expected and "pending_retry" in expected
    stored = dict(store.execute(
        "SELECT outcome, SUM(n) FROM delivery_rollup WHERE grouping = 'all' AND res = 60000 "
        "GROUP BY outcome HAVING SUM(n) != 0"
    ).fetchall())
    assert stored == dict(expected)


def test_v_deliveries_is_the_definition_as_plain_sql_knows_the_present(
    store: sqlite_utils.Database,
) -> None:
    """The view judges with the present plain SQL has: writers closed in their row are
    gone, the stale limit and the default retry window from the clock."""
    now = time.time_ns() // 1_000_000
    # Bring the mix to the real clock, so the stale limit and retry window cut through it.
    store.execute("UPDATE attempts SET started_at_ms = started_at_ms - ?", [NOW - now])
    store.conn.commit()
    # (A store gets this view from its baseline migration; created here from the
    # constant, the test also checks the constant is what the store has.)
    (in_store,) = store.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'v_deliveries'").fetchone()
    assert in_store.strip() == DELIVERIES_VIEW_SQL.strip().rstrip(";")
    closed = [w for (w,) in store.execute(
        "SELECT id FROM writers WHERE ended_at_ms IS NOT NULL"
    ).fetchall()]
    params = {
        "dead": str(closed), "stale": now - DEFAULT_STALE_AFTER_MS,
        "abandon_before": now - 600_000,
    }
    expected = dict(store.execute(
        f"""WITH {DEAD_CTE}, ids AS (SELECT DISTINCT delivery_id FROM attempts)
        SELECT delivery_id, {outcome_of("ids.delivery_id")} FROM ids""",
        params,
    ).fetchall())
    # Rows within a second of a limit may fall either side of it between the two reads.
    near = {d for (d,) in store.execute(
        "SELECT delivery_id FROM attempts WHERE ABS(started_at_ms - ?) < 1000 "
        "OR ABS(started_at_ms - ?) < 1000",
        [params["stale"], params["abandon_before"]],
    ).fetchall()}
    view: dict[str, Any] = dict(
        store.execute("SELECT delivery_id, outcome FROM v_deliveries").fetchall()
    )
    assert view.keys() == expected.keys()
    assert {d: o for d, o in view.items() if d not in near} == {
        d: o for d, o in expected.items() if d not in near
    }
    assert len(set(view.values())) >= 5
    assert IN_VIEW.dead in DELIVERIES_VIEW_SQL
