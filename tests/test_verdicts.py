"""The verdicts ``undelivered`` keeps for pending replies (``_verdicts.py``).

test_rollups checks them on randomised stores; these are the cases a random store
rarely makes: a delivery that moves between traces after its first trace was judged,
a verdict that depends on a writer being alive, and the background writer judging
what it wrote (through the upsert that fills in a start row).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from local_store import StoreWriter, open_store, undelivered
from local_store._verdicts import refresh_verdicts
from tests.store_builder import undelivered_judged_now

# 52 weeks before 1.8e12 (same weekday and time of day), and in the past: the writer
# sets a time more than 5 minutes ahead of its clock back to now (issue 15).
NOW = 1_800_000_000_000 - 52 * 7 * 86_400_000
MIN = 60_000


def _judge(db: sqlite_utils.Database) -> None:
    db.conn.execute("BEGIN IMMEDIATE")
    refresh_verdicts(db)
    db.conn.execute("COMMIT")


def _attempt(db: sqlite_utils.Database, span: str, trace: str, number: int, status: str,
             *, final: int | None = None, at: int = NOW - 30 * MIN, writer: int | None = None
             ) -> None:
    db.execute(
        "INSERT INTO attempts (delivery_id, attempt, trace_id, span_id, channel, status, "
        "error_type, final, started_at_ms, writer_id) VALUES ('d1', ?, ?, ?, 'slack', ?, ?, ?, "
        "?, ?)",
        [number, trace, span, status, "TimedOut" if status == "failed" else None, final, at,
         writer],
    )
    db.conn.commit()


def _run(db: sqlite_utils.Database, trace: str) -> None:
    db.execute(
        "INSERT INTO ai_runs (trace_id, span_id, channel, status, reply_produced, "
        "started_at_ms, ended_at_ms) VALUES (?, ?, 'slack', 'ok', 1, ?, ?)",
        [trace, f"run-{trace}", NOW - 40 * MIN, NOW - 39 * MIN],
    )
    db.conn.commit()


def _reasons(db: sqlite_utils.Database, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """undelivered's reasons by trace, checked against the same query scanning."""
    kept = undelivered(db, since_seconds=86400, now_ms=NOW)
    assert undelivered_judged_now(db, since_seconds=86400, now_ms=NOW) == kept
    return {i.trace_id: (i.reason, i.attempts) for i in kept.items if i.source == "ai_run"}


def _kept(db: sqlite_utils.Database) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT trace_id, verdict_reason, verdict_attempts FROM ai_runs WHERE reply_pending = 1"
    ).fetchall()


def _waiting(db: sqlite_utils.Database) -> set[str]:
    return {t for (t,) in db.execute("SELECT trace_id FROM traces_to_judge").fetchall()}


def _wait_until_judged(db: sqlite_utils.Database, seconds: float = 10) -> None:
    """Until the background writer has judged every queued trace (about a second)."""
    deadline = time.monotonic() + seconds
    while _waiting(db) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _waiting(db)


def test_a_delivery_moving_between_traces_sends_both_to_be_judged_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_store(tmp_path / "d.db", create=True)
    _run(db, "tA")
    _attempt(db, "s1", "tA", 1, "failed")
    _judge(db)
    assert _reasons(db, monkeypatch) == {"tA": ("abandoned", 1)}  # 30 min: no retry came
    assert not _waiting(db)

    # Resumed in another trace: the delivery now counts in tB, so tA has no attempt.
    _attempt(db, "s2", "tB", 2, "failed", final=1)
    assert _waiting(db) == {"tA"}
    _judge(db)
    assert _reasons(db, monkeypatch) == {"tA": ("no_attempt", 0)}

    # Renumbered by hand so that tA's attempt is the latest again.
    db.execute("UPDATE attempts SET attempt = 0 WHERE span_id = 's2'")
    db.conn.commit()
    assert _waiting(db) == {"tA"}
    _judge(db)
    assert _reasons(db, monkeypatch) == {"tA": ("failed", 2)}

    # Deleted: what is left of the delivery is tA's attempt alone.
    db.execute("DELETE FROM attempts WHERE span_id = 's2'")
    db.conn.commit()
    assert _waiting(db) == {"tA"}
    _judge(db)
    assert _reasons(db, monkeypatch) == {"tA": ("abandoned", 1)}  # 30 min: no retry came

    # Delivered in tB: the delivery counts there, so tA's reply saw no attempt.
    _attempt(db, "s3", "tB", 3, "delivered")
    assert _waiting(db) == {"tA"}
    _judge(db)
    assert _reasons(db, monkeypatch) == {"tA": ("no_attempt", 0)}
    db.close()


def test_a_verdict_that_depends_on_a_live_writer_is_judged_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_store(tmp_path / "d.db", create=True)
    (writer,) = db.execute(
        "INSERT INTO writers (pid, host, started_at_ms) VALUES (?, ?, ?) RETURNING id",
        [os.getpid(), socket.gethostname(), NOW - 60 * MIN],
    ).fetchone()
    _run(db, "tA")
    _attempt(db, "s1", "tA", 1, "started", writer=writer)
    _judge(db)
    assert _kept(db) == [("tA", None, 1)]
    assert _reasons(db, monkeypatch) == {"tA": ("in_flight", 1)}

    # The same rows, the writer now gone: interrupted, with no judging in between.
    db.execute("UPDATE writers SET ended_at_ms = ? WHERE id = ?", [NOW - MIN, writer])
    db.conn.commit()
    assert not _waiting(db)
    assert _reasons(db, monkeypatch) == {"tA": ("interrupted", 1)}

    # A failure for good decides the trace whatever the started attempt turns out to be.
    db.execute("UPDATE attempts SET delivery_id = 'd0' WHERE span_id = 's1'")
    _attempt(db, "s2", "tA", 1, "failed", final=1)
    _judge(db)
    assert _kept(db) == [("tA", "failed", 2)]
    assert _reasons(db, monkeypatch) == {"tA": ("failed", 2)}
    db.close()


def test_the_background_writer_judges_what_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "d.db"
    writer = StoreWriter(path, service="gw")
    try:
        for k in range(3):
            trace = f"t{k}"
            writer.submit("ai_runs", {
                "trace_id": trace, "span_id": f"r{k}", "channel": "slack", "status": "ok",
                "reply_produced": 1, "started_at_ms": NOW - 40 * MIN,
                "ended_at_ms": NOW - 39 * MIN,
            })
            row = {"delivery_id": f"d{k}", "trace_id": trace, "span_id": f"s{k}",
                   "channel": "slack", "started_at_ms": NOW - 30 * MIN}
            writer.start_attempt(row)
            assert writer.flush()
            # The outcome, in a later batch: an upsert over the queued trace's start row.
            writer.end_attempt({**row, "status": "failed", "error_type": "Forbidden",
                                "final": 1, "ended_at_ms": NOW - 29 * MIN})
            assert writer.flush()
        db = open_store(path)
        _wait_until_judged(db)
        assert sorted(_kept(db)) == [(f"t{k}", "failed", 1) for k in range(3)]
        assert _reasons(db, monkeypatch) == {f"t{k}": ("failed", 1) for k in range(3)}
        assert not writer.stats().get("unwritable_row")
        db.close()
    finally:
        writer.close()


def test_the_writer_judges_later_when_another_process_holds_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "d.db"
    writer = StoreWriter(path, service="gw")
    other = open_store(path)
    try:
        writer.submit("ai_runs", {
            "trace_id": "t0", "span_id": "r0", "status": "ok", "reply_produced": 1,
            "started_at_ms": NOW - 40 * MIN, "ended_at_ms": NOW - 39 * MIN,
        })
        assert writer.flush()
        other.conn.execute("BEGIN IMMEDIATE")  # a prune, say, or someone with sqlite3
        time.sleep(2.2)  # two of the writer's turns to judge
        assert _waiting(other) == {"t0"}
        other.conn.execute("COMMIT")
        _wait_until_judged(other)
        assert _kept(other) == [("t0", "no_attempt", 0)]
        assert "could not judge" not in caplog.text
    finally:
        other.close()
        writer.close()


def test_an_idle_writer_makes_no_sqlite_call_to_judge(tmp_path: Path) -> None:
    """A forked child must not inherit a thread inside SQLite: once it has judged what
    it wrote, an idle writer's background thread leaves its connection alone."""
    writer = StoreWriter(tmp_path / "d.db", service="gw")
    try:
        writer.submit("ai_runs", {
            "trace_id": "t0", "span_id": "r0", "status": "ok", "reply_produced": 1,
            "started_at_ms": NOW - 40 * MIN, "ended_at_ms": NOW - 39 * MIN,
        })
        assert writer.flush()
        db = open_store(tmp_path / "d.db")
        _wait_until_judged(db)
        db.close()
        time.sleep(1.2)  # the turn after the judging one finds the queue empty
        statements: list[str] = []
        assert writer._parts.indexer.conn is not None
        writer._parts.indexer.conn.set_trace_callback(statements.append)
        time.sleep(2.5)  # two more turns
        writer._parts.indexer.conn.set_trace_callback(None)
        assert statements == []
    finally:
        writer.close()
