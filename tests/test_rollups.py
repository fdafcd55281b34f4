"""The trigger-kept rollups and ``reply_pending`` against straightforward references.

Randomised stores (retries, channels that change between attempts, NULL keys,
dead writers' ``started`` rows, rescues, outcomes written without a start row, AI
runs written before, between and after their trace's attempts, deletes and prunes)
are checked three ways after every step: ``summary`` against a computation in plain
Python from the rows; ``health``'s counts by channel against ``summary``'s, and
``undelivered`` against itself with every pending reply judged when asked; and the
rollup tables against a rebuild from scratch. The verdicts kept on pending runs are
judged at random points and checked after every step against judging them now,
before and after the waiting traces are judged.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from local_store import health, open_store, prune, summary, undelivered
from local_store._outcome import liveness_params
from local_store._pending import VERDICT_COLUMNS
from local_store._rescue import DEFAULT_STALE_AFTER_MS, rescue_interrupted
from local_store._rollups import ROLLUP_BACKFILL_SQL
from local_store._verdicts import judge_traces, refresh_verdicts
from tests.store_builder import undelivered_judged_now

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
NOW = 1_800_000_000_000 + 37 * MIN + 12_345  # not on an hour or minute boundary
WINDOWS = [7 * DAY, DAY, 3 * HOUR, HOUR, 90 * MIN + 7_001, 59_999, 30 * DAY]

_COLS = (
    "delivery_id, attempt, max_attempts, trace_id, span_id, channel, status, error_type, "
    "failure_class, final, started_at_ms, writer_id"
)
_START = (
    f"INSERT INTO attempts ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, 'started', NULL, NULL, NULL, "
    "?, ?) ON CONFLICT(span_id) DO NOTHING"
)
# As the writer's end row: an upsert over the start row, or a new row if there was none.
_END = (
    f"INSERT INTO attempts ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(span_id) DO UPDATE SET status = excluded.status, "
    "error_type = excluded.error_type, failure_class = excluded.failure_class, "
    "final = excluded.final"
)
_RUN = (
    "INSERT INTO ai_runs (trace_id, span_id, channel, status, reply_produced, "
    "started_at_ms, ended_at_ms) VALUES (?, ?, ?, 'ok', ?, ?, ?)"
)
_ENQUEUE = (
    "INSERT INTO enqueues (trace_id, span_id, delivery_id, channel, status, error_type, "
    "error_text, started_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
CHANNELS = ["telegram", "slack", None, "", "42"]
ERRORS = [("TimedOut", "transient"), ("Forbidden", "permanent"), (None, None),
          ("TimedOut", None)]


def _writers(conn: sqlite3.Connection) -> list[int]:
    """A live writer (this process), a closed one, and one whose pid is gone."""
    host = socket.gethostname()
    ids = []
    for pid, ended in ((os.getpid(), None), (os.getpid(), NOW - DAY), (2**22 + 12345, None)):
        cur = conn.execute(
            "INSERT INTO writers (pid, host, started_at_ms, ended_at_ms) VALUES (?, ?, ?, ?)",
            (pid, host, NOW - 40 * DAY, ended),
        )
        ids.append(int(cur.lastrowid or 0))
    return ids


def _judge(db: sqlite_utils.Database) -> None:
    """What the background writer does now and then: judge the waiting traces."""
    db.conn.execute("BEGIN IMMEDIATE")
    refresh_verdicts(db)
    db.conn.execute("COMMIT")


def _populate(
    db: sqlite_utils.Database, rng: random.Random, deliveries: int, judge: float = 0.0
) -> None:
    """``judge``: the chance that the waiting traces are judged after each write."""
    conn = db.conn
    writers = _writers(conn)
    ops: list[tuple[float, str, tuple[Any, ...]]] = []
    span = 0
    for d in range(deliveries):
        trace = f"t{d // 2 if rng.random() < 0.3 else d + 10_000}"
        channel = rng.choice(CHANNELS)
        if rng.random() < 0.5:
            t0 = NOW - rng.randrange(10 * DAY) + rng.randrange(2 * HOUR)  # some in the future
        else:  # around the edges of the windows check() asks about
            t0 = NOW - rng.choice(WINDOWS) + rng.randrange(-2 * HOUR, 2 * HOUR)
        max_attempts = rng.choice([None, 2, 3])
        at = t0
        for n in range(1, rng.choice([1, 1, 1, 2, 3, 4]) + 1):
            span += 1
            if rng.random() < 0.1:
                channel = rng.choice(CHANNELS)
            if n > 1 and rng.random() < 0.15:  # resumed by another process, in its trace
                trace = f"t{rng.randrange(deliveries) + 10_000}"
            number = n if rng.random() < 0.9 else rng.randint(1, 4)
            status = rng.choices(
                ["delivered", "failed", "interrupted", "started", "rejected"],
                [5, 4, 1, 1.5, 0.3],
            )[0]
            error_type, failure_class = rng.choice(ERRORS) if status == "failed" else (None, None)
            final = rng.choice([None, 0, 1]) if status == "failed" else None
            writer = rng.choice(writers)
            key = (f"d{d}", number, max_attempts, trace, f"s{span}", channel)
            if rng.random() < 0.85:
                ops.append((at, _START, (*key, at, writer)))
            if status != "started":
                ops.append((at + 1, _END, (*key, status, error_type, failure_class, final,
                                           at, writer)))
            at += rng.choice([1, 500, MIN, 7 * MIN, HOUR, 3 * HOUR])
        # The run: before its attempts, among them, or long after (background batches).
        when = rng.choice([t0 - 10, t0 + 2, at + HOUR])
        ops.append((when, _RUN, (trace, f"r{d}", channel, rng.choice([1, 1, 1, 0, None]),
                                 t0 - 5_000, t0 - 1_000)))
        # An enqueue, now and then: of this delivery, of none, or of one never tried.
        if rng.random() < 0.3:
            failed = rng.random() < 0.6
            when = rng.choice([t0 - 500, at + 2 * HOUR])  # before its run, or long after
            ops.append((when, _ENQUEUE, (
                trace, f"e{d}", rng.choice([f"d{d}", None, f"never{d}"]), channel,
                "failed" if failed else "ok", "QueueFull" if failed else None,
                f"queue full ({d})" if failed else None, when,
            )))
    ops.sort(key=lambda op: op[0])
    for _, sql, params in ops:
        conn.execute(sql, params)
        if judge and rng.random() < judge:
            conn.commit()
            _judge(db)
    conn.commit()


def _status(a: dict[str, Any], dead: set[int], stale: int) -> str:
    if a["status"] != "started":
        return str(a["status"])
    if a["started_at_ms"] < stale or a["writer_id"] in dead:
        return "interrupted"
    return "in_flight"


def _outcome(
    attempts: list[dict[str, Any]], dead: set[int], stale: int, abandon_before: int
) -> str:
    if any(a["status"] == "delivered" for a in attempts):
        return "delivered"
    if any(
        a["status"] == "failed"
        and (a["final"] == 1 or (a["max_attempts"] is not None
                                 and a["attempt"] >= a["max_attempts"]))
        for a in attempts
    ):
        return "failed"
    latest = max(attempts, key=lambda a: (a["attempt"], a["started_at_ms"], a["id"]))
    status = _status(latest, dead, stale)
    if status == "failed":
        return "abandoned" if latest["started_at_ms"] < abandon_before else "pending_retry"
    return {"interrupted": "interrupted", "in_flight": "in_flight"}.get(status, "other")


def reference_summary(db: sqlite_utils.Database, by: str, since: int) -> dict[str, Any]:
    """summary() computed in Python from every attempt row."""
    live = liveness_params(db, NOW)
    dead, stale = set(eval(live["dead"])), live["stale"]  # a JSON list of ints
    rows = [dict(r) for r in db.query("SELECT * FROM attempts")]
    by_delivery: dict[str, list[dict[str, Any]]] = {}
    for a in rows:
        by_delivery.setdefault(a["delivery_id"], []).append(a)
    outcome = {
        d: _outcome(v, dead, stale, live["abandon_before"]) for d, v in by_delivery.items()
    }
    statuses: dict[tuple[Any, ...], Counter[str]] = {}
    pairs: set[tuple[tuple[Any, ...], str]] = set()
    for a in rows:
        if a["started_at_ms"] < since:
            continue
        status = _status(a, dead, stale)
        failed = a["status"] == "failed"
        key = {"channel": (a["channel"],), "status": (status,),
               "error": (a["error_type"] if failed else None,
                         a["failure_class"] if failed else None)}[by]
        statuses.setdefault(key, Counter())[status] += 1
        pairs.add((key, a["delivery_id"]))
    deliveries: dict[tuple[Any, ...], Counter[str]] = {}
    for key, d in pairs:
        if by == "channel":
            deliveries.setdefault(key, Counter())[outcome[d]] += 1
    total = Counter(outcome[d] for d in {d for _, d in pairs})
    return {"statuses": statuses, "deliveries": deliveries, "total": total}


def _nonzero(counts: dict[str, int]) -> Counter[str]:
    return Counter({k: v for k, v in counts.items() if v})


def _as_reference(s: Any) -> dict[str, Any]:
    return {
        "statuses": {tuple(g.key.values()): _nonzero(g.statuses) for g in s.groups},
        "deliveries": {tuple(g.key.values()): _nonzero(g.deliveries) for g in s.groups
                       if any(g.deliveries.values())},
        "total": _nonzero(s.total.deliveries),
    }


def check(db: sqlite_utils.Database, monkeypatch: pytest.MonkeyPatch) -> None:
    for since_ms in WINDOWS:
        since_seconds = since_ms / 1000
        for by in ("channel", "error", "status"):
            fast = summary(db, since_seconds=since_seconds, by=by, now_ms=NOW)
            assert _as_reference(fast) == reference_summary(db, by, fast.window_start_ms), (
                by, since_ms)
        fast_u = undelivered(db, since_seconds=since_seconds, now_ms=NOW)
        assert undelivered_judged_now(db, since_seconds=since_seconds, now_ms=NOW) == fast_u
        # health's attempts and failures by channel are summary's (checked above)
        by_channel = summary(db, since_seconds=since_seconds, by="channel", now_ms=NOW)
        fast_h = health(db, since_seconds=since_seconds, now_ms=NOW)
        assert sorted(((c["channel"], c["attempts"], c["failed"]) for c in fast_h.channels),
                      key=str) == sorted(
            ((g.key["channel"], g.attempts, g.statuses["failed"]) for g in by_channel.groups
             if g.attempts), key=str)
    check_verdicts(db)
    # Judged now, every pending trace's verdict is kept, and the answers stay the same.
    _judge(db)
    assert db.execute("SELECT COUNT(*) FROM traces_to_judge").fetchone()[0] == 0
    check_verdicts(db)
    for since_ms in WINDOWS:
        judged_now = undelivered_judged_now(db, since_seconds=since_ms / 1000, now_ms=NOW)
        assert undelivered(db, since_seconds=since_ms / 1000, now_ms=NOW) == judged_now
    # reply_pending is exactly its definition.
    wrong = db.execute(
        "SELECT COUNT(*) FROM ai_runs r WHERE r.reply_pending IS NOT (r.reply_produced IS 1 "
        "AND NOT EXISTS (SELECT 1 FROM attempts a WHERE a.trace_id = r.trace_id "
        "AND a.status = 'delivered'))"
    ).fetchone()[0]
    assert wrong == 0
    # split_deliveries holds every delivery with attempts in more than one trace.
    unlisted = db.execute(
        "SELECT COUNT(*) FROM (SELECT delivery_id FROM attempts GROUP BY delivery_id "
        "HAVING COUNT(DISTINCT trace_id) > 1) WHERE delivery_id NOT IN "
        "(SELECT delivery_id FROM split_deliveries)"
    ).fetchone()[0]
    assert unlisted == 0
    # The rollups are what a rebuild from the rows would make.
    kept = _rollups(db)
    db.conn.execute("SAVEPOINT rebuild")
    for statement in ROLLUP_BACKFILL_SQL.split(";"):
        if statement.strip():
            db.conn.execute(statement)
    rebuilt = _rollups(db)
    db.conn.execute("ROLLBACK TO rebuild")
    db.conn.execute("RELEASE rebuild")
    assert kept == rebuilt


def check_verdicts(db: sqlite_utils.Database) -> None:
    """Every pending run's trace waits to be judged, or the run has the verdict judging
    it now would give; no other run has one, and no other trace waits."""
    pending = {t for (t,) in db.execute(
        "SELECT trace_id FROM ai_runs WHERE reply_pending = 1").fetchall()}
    waiting = {t for (t,) in db.execute("SELECT trace_id FROM traces_to_judge").fetchall()}
    no_liveness = {"dead": "[]", "stale": None, "abandon_before": None}
    fresh = judge_traces(db, pending, no_liveness, covered=True)
    for run_id, t, pending_now, *kept in db.execute(
        f"SELECT id, trace_id, reply_pending, {', '.join(VERDICT_COLUMNS)} FROM ai_runs"
    ).fetchall():
        if not pending_now:
            assert kept == [None] * len(kept), run_id
        elif t not in waiting:
            reason, *rest, live = fresh[t]
            assert kept == [None if live else reason, *rest], run_id
    assert waiting <= pending


def _rollups(db: sqlite_utils.Database) -> tuple[list[Any], list[Any]]:
    return (
        db.execute("SELECT * FROM attempt_rollup WHERE n != 0 ORDER BY 1, 2, 3, 4, 5, 6")
        .fetchall(),
        db.execute("SELECT * FROM delivery_rollup WHERE n != 0 ORDER BY 1, 2, 3, 4, 5, 6")
        .fetchall(),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_answer_as_the_rows_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    db = open_store(tmp_path / "d.db", create=True)
    _populate(db, rng, deliveries=160, judge=0.2)
    assert db.execute("SELECT COUNT(*) FROM attempts WHERE status = 'started'").fetchone()[0]
    check(db, monkeypatch)

    # A later writer rescues the dead writers' started rows.
    assert rescue_interrupted(db.conn, DEFAULT_STALE_AFTER_MS) > 0
    check(db, monkeypatch)

    # Rows changed and deleted by hand (an operator with sqlite3).
    ids = [r[0] for r in db.execute("SELECT id FROM attempts").fetchall()]
    for i in rng.sample(ids, 15):
        db.execute("UPDATE attempts SET status = 'delivered' WHERE id = ?", [i])
    for i in rng.sample(ids, 5):
        db.execute("UPDATE attempts SET delivery_id = 'd3', channel = 'moved' WHERE id = ?", [i])
    for i in rng.sample(ids, 20):
        db.execute("DELETE FROM attempts WHERE id = ?", [i])
    db.conn.commit()
    check(db, monkeypatch)

    # ...and enqueues, runs and attempts moved between traces, with some judged between.
    enqueue_ids = [r[0] for r in db.execute("SELECT id FROM enqueues").fetchall()]
    traces = [r[0] for r in db.execute("SELECT DISTINCT trace_id FROM ai_runs").fetchall()]
    for i in rng.sample(enqueue_ids, 10):
        db.execute("UPDATE enqueues SET status = CASE status WHEN 'failed' THEN 'ok' "
                   "ELSE 'failed' END WHERE id = ?", [i])
    for i in rng.sample(enqueue_ids, 5):
        db.execute("UPDATE enqueues SET delivery_id = 'd7', error_text = 'moved' WHERE id = ?",
                   [i])
    _judge(db)
    for i in rng.sample(enqueue_ids, 5):
        db.execute("DELETE FROM enqueues WHERE id = ?", [i])
    for i in rng.sample(ids, 8):
        db.execute("UPDATE attempts SET trace_id = ? WHERE id = ?", [rng.choice(traces), i])
    for i in rng.sample(ids, 8):
        db.execute("UPDATE attempts SET error_text = 'changed', final = 1 WHERE id = ?", [i])
    run_ids = [r[0] for r in db.execute("SELECT id FROM ai_runs").fetchall()]
    for i in rng.sample(run_ids, 8):
        db.execute("UPDATE ai_runs SET reply_produced = 1 - COALESCE(reply_produced, 0) "
                   "WHERE id = ?", [i])
    for i in rng.sample(run_ids, 4):
        db.execute("UPDATE ai_runs SET trace_id = ? WHERE id = ?", [rng.choice(traces), i])
    for i in rng.sample(run_ids, 4):
        db.execute("DELETE FROM ai_runs WHERE id = ?", [i])
    # Runs written pending from the start (by hand), where no attempt delivered.
    unsent = [r[0] for r in db.execute(
        "SELECT DISTINCT trace_id FROM ai_runs r WHERE NOT EXISTS (SELECT 1 FROM attempts a "
        "WHERE a.trace_id = r.trace_id AND a.status = 'delivered')").fetchall()]
    for n, trace in enumerate(rng.sample(unsent, 6)):
        db.execute(
            "INSERT INTO ai_runs (trace_id, span_id, status, reply_produced, reply_pending, "
            "started_at_ms) VALUES (?, ?, 'ok', 1, 1, ?)", [trace, f"hand{n}", NOW - HOUR])
    db.conn.commit()
    check(db, monkeypatch)

    # Prune: delivered attempts go before failed ones, so outcomes change.
    result = prune(db, older_than_seconds=4 * 86400, keep_failed_for_seconds=6 * 86400,
                   now_ms=NOW, batch_size=7)
    assert result.deleted["attempts"] > 0
    # Prune leaves no empty rollup rows behind in the buckets it cleared.
    for table in ("attempt_rollup", "delivery_rollup"):
        assert db.execute(
            f"SELECT COUNT(*) FROM {table} WHERE n = 0 AND (bucket + 1) * res <= ?",
            [result.older_than_ms],
        ).fetchone()[0] == 0, table
    assert db.execute("SELECT COUNT(*) FROM delivery_rollup WHERE n = 0").fetchone()[0] > 0
    check(db, monkeypatch)
    prune(db, older_than_seconds=86400, keep_failed_for_seconds=86400, max_attempts=40,
          now_ms=NOW)
    check(db, monkeypatch)
    db.close()


@pytest.mark.parametrize("analyzed", [False, True])
def test_undelivered_reads_only_its_covering_indexes(tmp_path: Path, analyzed: bool) -> None:
    """Whatever the planner knows (prune runs ANALYZE), undelivered
    reads its runs, attempts and failed enqueues from the small covering indexes, never
    from the tables or the full-size indexes."""
    db = open_store(tmp_path / "d.db", create=True)
    _populate(db, random.Random(5), deliveries=300)
    # Enqueues as in a real store: most succeed (ten per run here), a few fail.
    db.execute(
        "INSERT INTO enqueues (trace_id, span_id, status, started_at_ms) "
        "SELECT r.trace_id, 'e' || r.id || '.' || k.value, "
        "CASE WHEN r.id % 3 = 0 AND k.value = 0 THEN 'failed' ELSE 'ok' END, r.started_at_ms "
        "FROM ai_runs r, json_each('[0,1,2,3,4,5,6,7,8,9]') k"
    )
    db.conn.commit()
    if analyzed:
        db.execute("ANALYZE")
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    report = undelivered(db, since_seconds=30 * 86400, now_ms=NOW)
    db.conn.set_trace_callback(None)
    assert report.replies and report.enqueue_failures

    def plan(sql: str) -> str:
        return " | ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())

    plans = [plan(s) for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    wanted = {
        "ai_runs": "COVERING INDEX idx_runs_pending_verdict",
        "attempts": "COVERING INDEX idx_attempts_unsent",
        "enqueues": "COVERING INDEX idx_enqueues_failed_trace",
    }
    for table, index in wanted.items():
        assert any(index in p for p in plans), (table, plans)
    db.close()
