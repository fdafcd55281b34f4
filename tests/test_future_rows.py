"""Issue 15: rows dated in the future do not stay in every window for ever."""

from __future__ import annotations

import time
from pathlib import Path

from click.testing import CliRunner

import local_store
from local_store import StoreWriter, open_store
from local_store._values import FUTURE_TOLERANCE_MS
from otel_delivery.cli import main
from tests import rawdb

YEAR_MS = 365 * 24 * 3600 * 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def attempt(n: int, started: int, **extra: object) -> dict[str, object]:
    return {"delivery_id": f"d-{n}", "trace_id": f"{n:032x}", "span_id": f"{n:016x}",
            "channel": "telegram", "started_at_ms": started, **extra}


def drops(store: Path) -> dict[str, int]:
    with rawdb.connect(store) as conn:
        return dict(conn.execute("SELECT reason, count FROM drops"))


def test_the_writer_sets_a_time_far_ahead_back_to_its_clock(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "d.db")
    t = now_ms()
    w.start_attempt(attempt(1, t + YEAR_MS))
    w.end_attempt(attempt(1, t + YEAR_MS, status="failed", ended_at_ms=t + YEAR_MS + 5))
    w.start_attempt(attempt(2, t + FUTURE_TOLERANCE_MS // 2))  # within the tolerance
    assert w.close()
    with rawdb.connect(w.path) as conn:
        rows = dict(conn.execute("SELECT delivery_id, started_at_ms FROM attempts"))
        (ended,) = conn.execute(
            "SELECT ended_at_ms FROM attempts WHERE delivery_id = 'd-1'").fetchone()
    assert t <= rows["d-1"] <= now_ms()
    assert t <= ended <= now_ms()
    assert rows["d-2"] == t + FUTURE_TOLERANCE_MS // 2
    assert drops(w.path)["future_timestamp"] == 3  # start, and the outcome's start and end


def _store_with_rows_from_a_clock_that_jumped(path: Path) -> int:
    """A store whose rows were written while the clock was a year ahead."""
    w = StoreWriter(path)
    w.close()
    ahead = now_ms() + YEAR_MS
    with rawdb.connect(path) as conn:
        conn.execute(
            "INSERT INTO attempts (delivery_id, attempt, trace_id, span_id, channel, status, "
            "final, started_at_ms, ended_at_ms) VALUES ('d-f', 1, 't', 's', 'telegram', "
            "'failed', 1, ?, ?)", (ahead, ahead + 10))
        conn.execute(
            "INSERT INTO inbound_messages (trace_id, span_id, status, received_at_ms) "
            "VALUES ('t', 's2', 'ok', ?)", (ahead,))
    return ahead


def test_rows_dated_ahead_fail_health_until_prune_sets_them_back(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    _store_with_rows_from_a_clock_that_jumped(store)
    before = [r[0] for r in rawdb.connect(store).execute("SELECT started_at_ms FROM attempts")]

    result = CliRunner().invoke(main, ["health", "--store", str(store)])
    assert result.exit_code == 1
    assert "2 rows dated more than 5 minutes after now" in result.output
    # Reading does not rewrite times (a machine whose clock is behind would rewrite all).
    after = [r[0] for r in rawdb.connect(store).execute("SELECT started_at_ms FROM attempts")]
    assert after == before

    result = CliRunner().invoke(main, ["prune", "--older-than", "30d", "--keep-failed-for",
                                       "90d", "--store", str(store)])
    assert result.exit_code == 0, result.output
    with rawdb.connect(store) as conn:
        (started,) = conn.execute("SELECT started_at_ms FROM attempts").fetchone()
        (received,) = conn.execute("SELECT received_at_ms FROM inbound_messages").fetchone()
    assert started <= now_ms() and received <= now_ms()
    assert drops(store)["future_timestamp"] == 2
    db = open_store(store)
    try:
        # Counted now (in the last hour), and aged from now on: two hours later it is
        # out of the last hour's window, and prune deletes it by age.
        assert local_store.summary(db, since_seconds=3600).total.attempts == 1
        later = started + 2 * 3600 * 1000
        assert local_store.summary(db, since_seconds=3600, now_ms=later).total.attempts == 0
        pruned = local_store.prune(db, older_than_seconds=60, keep_failed_for_seconds=60,
                                   now_ms=later)
        assert pruned.deleted["attempts"] == 1
    finally:
        db.close()


def test_setting_rows_back_keeps_the_rollups_right(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    _store_with_rows_from_a_clock_that_jumped(store)
    db = open_store(store)
    try:
        local_store.prune(db, older_than_seconds=86400, keep_failed_for_seconds=86400)
        summary = local_store.summary(db, since_seconds=3600)
        assert summary.total.attempts == 1
        assert summary.total.statuses["failed"] == 1
        assert summary.total.deliveries["failed"] == 1
        report = local_store.health(db, since_seconds=3600)
        assert not any("after now" in r for r in report.reasons)
    finally:
        db.close()
