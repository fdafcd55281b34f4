"""Retention: what prune deletes, what it keeps, in batches, and the space it gives back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from local_store import (
    InvalidArgumentError,
    StoreError,
    StoreWriter,
    compact,
    open_store,
    prune,
    readonly_query,
    trace_story,
)
from tests import rawdb
from tests.store_builder import DAY_MINUTES, StoreBuilder

DAY = 86400


@pytest.fixture
def builder(tmp_path: Path) -> Iterator[StoreBuilder]:
    b = StoreBuilder(tmp_path / "deliveries.db")
    yield b
    b.close()


def opened(b: StoreBuilder) -> sqlite_utils.Database:
    b.flush()
    return open_store(b.path)


def count(path: Path, table: str, where: str = "1") -> int:
    conn = rawdb.connect(path)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}").fetchone()[0])
    finally:
        conn.close()


def delivery_ids(path: Path) -> set[str]:
    conn = rawdb.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT DISTINCT delivery_id FROM attempts")}
    finally:
        conn.close()


def traces(path: Path, table: str) -> set[str]:
    conn = rawdb.connect(path)
    try:
        return {r[0] for r in conn.execute(f"SELECT trace_id FROM {table}")}
    finally:
        conn.close()


def test_prune_keeps_failures_longer_than_successes(builder: StoreBuilder) -> None:
    b = builder
    plans = {
        # name: (plan, age in days)
        "delivered_40d": ("delivered_first", 40),
        "delivered_10d": ("delivered_first", 10),
        "failed_40d": ("failed_final", 40),
        "failed_100d": ("failed_final", 100),
        "interrupted_40d": ("interrupted", 40),
        "interrupted_100d": ("interrupted", 100),
    }
    written = {
        name: b.delivery(plan, minutes_ago=days * DAY_MINUTES)
        for name, (plan, days) in plans.items()
    }
    # A failed enqueue is a failure too: it (and its message) is kept as long.
    swallowed = b.message(minutes_ago=40 * DAY_MINUTES)
    b.enqueue(swallowed.trace_id, None, minutes_ago=40 * DAY_MINUTES - 1, failed=True)
    db = opened(b)

    result = prune(db, older_than_seconds=30 * DAY, keep_failed_for_seconds=90 * DAY,
                   now_ms=b.now_ms)

    kept = {"delivered_10d", "failed_40d", "interrupted_40d"}
    assert delivery_ids(b.path) == {written[name][1] for name in kept}
    kept_traces = {written[name][0].trace_id for name in kept} | {swallowed.trace_id}
    # The kept failures keep their story; the pruned deliveries lose theirs.
    assert traces(b.path, "inbound_messages") == kept_traces
    assert traces(b.path, "ai_runs") == kept_traces
    assert traces(b.path, "enqueues") == {swallowed.trace_id}
    assert trace_story(db, delivery_id=written["failed_40d"][1]).verdict.startswith(
        "failed permanently after 2 attempts"
    )
    # failed_final has two attempts; the others one each.
    assert result.deleted == {
        "attempts": 1 + 2 + 1, "inbound_messages": 3, "ai_runs": 3, "enqueues": 0,
        "receipts": 0,
        "writers": 0,
    }
    assert not result.dry_run
    db.close()


def test_prune_deletes_everything_older_than_keep_failed_for(builder: StoreBuilder) -> None:
    for days in (95, 100):
        builder.delivery("failed_final", minutes_ago=days * DAY_MINUTES)
        m = builder.message(minutes_ago=days * DAY_MINUTES)
        builder.enqueue(m.trace_id, None, minutes_ago=days * DAY_MINUTES, failed=True)
    db = opened(builder)
    prune(db, older_than_seconds=30 * DAY, keep_failed_for_seconds=90 * DAY, now_ms=builder.now_ms)
    for table in ("attempts", "inbound_messages", "ai_runs", "enqueues"):
        assert count(builder.path, table) == 0, table
    db.close()


def test_prune_goes_in_batches(builder: StoreBuilder) -> None:
    for _ in range(230):
        builder.delivery("delivered_first", minutes_ago=40 * DAY_MINUTES)
    for _ in range(5):
        builder.delivery("delivered_first", minutes_ago=DAY_MINUTES)
    db = opened(builder)

    result = prune(db, older_than_seconds=30 * DAY, keep_failed_for_seconds=30 * DAY,
                   batch_size=50, now_ms=builder.now_ms)

    assert result.deleted["attempts"] == 230
    assert result.deleted["inbound_messages"] == result.deleted["ai_runs"] == 230
    # 230 rows in 50s is 5 batches, for attempts, inbound messages and runs alike
    # (more if a loaded machine made a delete slow enough to shrink the batch).
    assert result.batches >= 3 * 5
    assert count(builder.path, "attempts") == 5
    db.close()


def test_batches_shrink_when_deletes_hold_the_lock_too_long() -> None:
    from local_store._prune import _BATCH_HOLD_SECONDS, _MIN_BATCH, _next_batch_size

    # 500 rows took 100 ms: aim the next batch at the hold target.
    assert _next_batch_size(500, 500, 0.1, 500) == int(500 * _BATCH_HOLD_SECONDS / 0.1)
    # Never below the floor, however slow.
    assert _next_batch_size(500, 500, 60.0, 500) == _MIN_BATCH
    # Quick deletes grow the batch back, up to the largest allowed.
    assert _next_batch_size(100, 100, 0.001, 500) == 200
    assert _next_batch_size(400, 400, 0.001, 500) == 500
    # A short final batch says nothing about speed.
    assert _next_batch_size(100, 7, 0.001, 500) == 100
    # Within the target: unchanged.
    assert _next_batch_size(100, 100, _BATCH_HOLD_SECONDS * 0.75, 500) == 100


def test_dry_run_changes_nothing_and_predicts_the_real_run(builder: StoreBuilder) -> None:
    for days, plan in ((40, "delivered_first"), (40, "failed_final"), (100, "interrupted"),
                       (5, "delivered_first"), (50, "delivered_after_retry")):
        for _ in range(3):
            builder.delivery(plan, minutes_ago=days * DAY_MINUTES)
    db = opened(builder)
    before = {t: count(builder.path, t) for t in ("attempts", "inbound_messages", "ai_runs")}
    args = {"older_than_seconds": 30 * DAY, "keep_failed_for_seconds": 90 * DAY,
            "max_attempts": 8, "batch_size": 4, "now_ms": builder.now_ms}

    dry = prune(db, dry_run=True, **args)  # type: ignore[arg-type]

    assert dry.dry_run and dry.batches == 0 and dry.pages_freed == 0
    assert {t: count(builder.path, t) for t in before} == before
    real = prune(db, **args)  # type: ignore[arg-type]
    assert real.deleted == dry.deleted
    assert sum(real.deleted.values()) > 0
    db.close()


def test_max_attempts_deletes_the_oldest_delivered_first(builder: StoreBuilder) -> None:
    b = builder
    failed = [b.delivery("failed_final", minutes_ago=(20 + i) * DAY_MINUTES)[1] for i in range(2)]
    delivered = [b.delivery("delivered_first", minutes_ago=(10 - i) * DAY_MINUTES)[1]
                 for i in range(6)]
    db = opened(b)  # 4 failed attempts + 6 delivered, all younger than older_than

    prune(db, older_than_seconds=60 * DAY, keep_failed_for_seconds=90 * DAY, max_attempts=7,
          now_ms=b.now_ms)
    # Three over the cap: the three oldest delivered go; every failure stays.
    assert delivery_ids(b.path) == set(failed) | set(delivered[3:])

    prune(db, older_than_seconds=60 * DAY, keep_failed_for_seconds=90 * DAY, max_attempts=2,
          now_ms=b.now_ms)
    # Five over: the three delivered left, then the two oldest failed attempts (both
    # of the 21-day-old delivery).
    assert delivery_ids(b.path) == {failed[0]}
    assert count(b.path, "attempts") == 2
    db.close()


def test_prune_never_deletes_an_attempt_that_may_still_be_sending(
    builder: StoreBuilder,
) -> None:
    b = builder
    _, sending = b.delivery("in_flight", minutes_ago=10)  # live writer, fresh
    _, abandoned = b.delivery("in_flight", minutes_ago=180)  # past the stale limit
    db = opened(b)
    prune(db, older_than_seconds=60, keep_failed_for_seconds=60, max_attempts=1,
          now_ms=b.now_ms)
    assert delivery_ids(b.path) == {sending}
    assert abandoned not in delivery_ids(b.path)
    db.close()


def test_prune_drops_closed_writers_with_nothing_left_open(tmp_path: Path) -> None:
    path = tmp_path / "deliveries.db"
    old = StoreBuilder(path)
    old.close()
    old_writer = count(path, "writers")
    live = StoreBuilder(path)
    live.delivery("in_flight", minutes_ago=1)
    db = opened(live)
    # The closed writer ended "100 days ago" as far as this prune is concerned.
    result = prune(db, older_than_seconds=1, keep_failed_for_seconds=1,
                   now_ms=live.now_ms + 100 * DAY * 1000)
    assert result.deleted["writers"] == old_writer == 1
    assert count(path, "writers") == 1  # the live one, still open
    db.close()
    live.close()


def test_prune_gives_the_space_back(builder: StoreBuilder) -> None:
    bulky = {"provider_message_id": "x" * 2000}
    for i in range(400):
        m = builder.message(minutes_ago=40 * DAY_MINUTES)
        builder.attempt(m.trace_id, f"d{i}", status="delivered", minutes_ago=40 * DAY_MINUTES,
                        extra=bulky)
    builder.delivery("delivered_first", minutes_ago=DAY_MINUTES)
    db = opened(builder)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_before = builder.path.stat().st_size

    result = prune(db, older_than_seconds=30 * DAY, keep_failed_for_seconds=30 * DAY,
                   vacuum_pages_per_step=16, now_ms=builder.now_ms)

    assert result.deleted["attempts"] == 400
    assert result.page_count_after < result.page_count_before / 4
    assert result.pages_freed == result.page_count_before - result.page_count_after
    assert result.freelist_after == 0
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert builder.path.stat().st_size < size_before / 4
    db.close()


def test_prune_leaves_statistics_that_keep_the_views_on_the_trace_index(
    builder: StoreBuilder,
) -> None:
    for _ in range(50):
        builder.delivery("delivered_first", minutes_ago=10)
    db = opened(builder)
    plan = "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM v_undelivered"

    def index_used() -> str:
        return " ".join(str(row[-1]) for row in db.execute(plan).fetchall())

    prune(db, older_than_seconds=30 * DAY, keep_failed_for_seconds=30 * DAY)
    db.close()
    db = open_store(builder.path)  # a new connection reads the new statistics
    assert "idx_attempts_trace" in index_used()
    # Read-only SQL still works on a store that now has sqlite_stat1.
    assert readonly_query(builder.path, "SELECT COUNT(*) FROM v_undelivered")[1] == [(0,)]
    db.close()


def test_prune_while_a_gateway_writes_loses_nothing(builder: StoreBuilder) -> None:
    for _ in range(300):
        builder.delivery("delivered_first", minutes_ago=40 * DAY_MINUTES)
    db = opened(builder)
    gateway = StoreWriter(builder.path, service="live-gateway")
    now = builder.now_ms

    def send(n: int) -> None:
        for i in range(n):
            # Ids apart from the builder's, which count up from 1 in the same format.
            row = {"delivery_id": f"live-{i}", "trace_id": f"f{i:031x}", "span_id": f"f{i:015x}",
                   "channel": "telegram", "started_at_ms": now}
            gateway.start_attempt(row)
            gateway.end_attempt({**row, "status": "delivered", "ended_at_ms": now + 1})

    sender = threading.Thread(target=send, args=(200,))
    sender.start()
    result = prune(db, older_than_seconds=30 * DAY, keep_failed_for_seconds=30 * DAY,
                   batch_size=20, now_ms=now)
    sender.join()
    assert gateway.flush(10)

    assert result.deleted["attempts"] == 300
    assert count(builder.path, "attempts", "delivery_id LIKE 'live-%'") == 200
    assert count(builder.path, "attempts", "status = 'delivered'") == 200
    lost = {k: v for k, v in gateway.stats().items() if k not in ("paced", "queued")}
    assert lost == {}
    gateway.close()
    db.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"older_than_seconds": 30 * DAY, "keep_failed_for_seconds": 7 * DAY},
         "failures are kept longer"),
        ({"older_than_seconds": 0, "keep_failed_for_seconds": DAY}, "older_than_seconds"),
        ({"older_than_seconds": DAY, "keep_failed_for_seconds": DAY, "max_attempts": 0},
         "max_attempts"),
        ({"older_than_seconds": DAY, "keep_failed_for_seconds": DAY, "batch_size": 0},
         "batch_size"),
    ],
)
def test_prune_rejects_bad_limits(
    builder: StoreBuilder, kwargs: dict[str, float], message: str
) -> None:
    db = opened(builder)
    with pytest.raises(InvalidArgumentError, match=message):
        prune(db, **kwargs)  # type: ignore[arg-type]
    db.close()


def test_prune_checkpoints_itself_and_restores_the_connections_autocheckpoint(
    builder: StoreBuilder,
) -> None:
    for days in (40, 41, 42):
        builder.delivery("delivered_first", minutes_ago=days * DAY_MINUTES)
    db = opened(builder)
    db.execute("PRAGMA wal_autocheckpoint = 123")
    result = prune(db, older_than_seconds=30 * DAY, keep_failed_for_seconds=90 * DAY,
                   now_ms=builder.now_ms)
    assert result.deleted["attempts"] == 3
    assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 123
    # Every frame the prune wrote is already in the database file.
    busy, frames, checkpointed = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, frames) == (0, checkpointed)
    db.close()


def test_warming_reads_touch_every_full_index_of_the_table(builder: StoreBuilder) -> None:
    from local_store._prune import _warming_reads

    db = opened(builder)
    reads = " ".join(_warming_reads(db, "attempts", "1"))
    for _, index, _, _, partial in db.execute("PRAGMA index_list(attempts)").fetchall():
        assert partial or f"INDEXED BY {index} " in reads
    for sql in _warming_reads(db, "inbound_messages", "1"):  # plain reads that run
        db.execute(sql, {"ids": "[1, 2]"}).fetchall()
    db.close()


# -- compact: the documented step that gives back the share pruned -------------------


def _gateway_traffic(path: Path, messages: int, *, start_ms: int, step_ms: int) -> None:
    """What a gateway writes per message, with random trace, span and delivery ids
    (so index pages are shared by old and new rows, as in a real store)."""
    import uuid

    writer = StoreWriter(path, service="gateway")
    for i in range(messages):
        at = start_ms + i * step_ms
        trace = uuid.uuid4().hex
        run_span, attempt_span = uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
        writer.submit("inbound_messages", {
            "trace_id": trace, "span_id": uuid.uuid4().hex[:16], "inbound_id": f"in-{i}",
            "channel": "telegram", "status": "ok", "received_at_ms": at, "ended_at_ms": at + 2})
        writer.submit("ai_runs", {
            "trace_id": trace, "span_id": run_span, "inbound_id": f"in-{i}", "channel": "telegram",
            "status": "ok", "reply_produced": 1, "started_at_ms": at + 3, "ended_at_ms": at + 900})
        row = {"delivery_id": uuid.uuid4().hex, "trace_id": trace, "span_id": attempt_span,
               "parent_span_id": run_span, "channel": "telegram", "recipient": f"telegram:{i}",
               "started_at_ms": at + 901}
        writer.start_attempt(row)
        writer.end_attempt({**row, "status": "delivered", "ended_at_ms": at + 950,
                            "provider_message_id": f"pm-{i}"})
    assert writer.flush(30)
    writer.close()


def test_compact_gives_back_the_share_pruned(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    now = int(time.time() * 1000)
    # 3 000 messages 40 to 20 days ago, one every 10 minutes: prune takes the older half.
    _gateway_traffic(path, 3000, start_ms=now - 40 * DAY * 1000, step_ms=20 * DAY * 1000 // 3000)
    db = open_store(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = path.stat().st_size
    result = prune(db, older_than_seconds=30 * DAY, keep_failed_for_seconds=30 * DAY, now_ms=now)
    assert result.deleted["attempts"] == 1500
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after_prune = path.stat().st_size
    compacted = compact(db, path)
    assert path.with_name("d.db-wal").stat().st_size == 0
    db.close()
    assert compacted.bytes_before == after_prune
    assert compacted.bytes_after == path.stat().st_size
    given_back = 1 - compacted.bytes_after / before
    # Half the rows went; the file gives back half of itself, within 5 points.
    assert abs(given_back - 0.5) <= 0.05, (before, after_prune, compacted)
    # The rows kept are all there, and the store works as before.
    assert count(path, "attempts") == 1500
    assert count(path, "ai_runs") == 1500
    assert readonly_query(path, "SELECT COUNT(*) FROM v_attempts")[1] == [(1500,)]
    db = open_store(path)
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_compact_while_a_gateway_writes_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    now = int(time.time() * 1000)
    _gateway_traffic(path, 1500, start_ms=now - 40 * DAY * 1000, step_ms=60_000)
    db = open_store(path)
    prune(db, older_than_seconds=30 * DAY, keep_failed_for_seconds=30 * DAY, now_ms=now)
    done = threading.Event()
    live = threading.Thread(
        target=lambda: (_gateway_traffic(path, 300, start_ms=now, step_ms=1000), done.set()))
    live.start()
    compact(db, path)
    live.join(60)
    assert done.is_set()
    db.close()
    assert count(path, "attempts") == 300
    assert count(path, "drops") == 0


def test_compact_refuses_to_start_without_the_space_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import local_store._compact as compacting

    path = tmp_path / "d.db"
    _gateway_traffic(path, 50, start_ms=int(time.time() * 1000), step_ms=1000)
    real = os.statvfs(tmp_path)

    class Full:
        f_bavail, f_frsize = 1, real.f_frsize

    monkeypatch.setattr(compacting.os, "statvfs", lambda p: Full())
    db = open_store(path)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"needs about .* free next to it"):
        compact(db, path)
    db.close()
    assert path.read_bytes() == before


def test_the_cli_compacts_after_pruning_and_refuses_compact_with_dry_run(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from otel_delivery.cli import main

    path = tmp_path / "d.db"
    _gateway_traffic(path, 200, start_ms=1_000_000, step_ms=1000)  # 1970: all old
    args = ["prune", "--store", str(path), "--older-than", "30d", "--keep-failed-for", "30d"]
    refused = CliRunner().invoke(main, [*args, "--compact", "--dry-run"])
    assert refused.exit_code == 2 and "--compact" in refused.output
    result = CliRunner().invoke(main, [*args, "--compact"])
    assert result.exit_code == 0, result.output
    assert "compacted: " in result.output
    assert count(path, "attempts") == 0
