"""StoreWriter under its own load: one write path, pacing, its own batches, WAL checkpoints."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from local_store import StoreWriter, open_store
from local_store import _indexer as I
from local_store._journal import HEADER, journal_files
from tests import rawdb


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[StoreWriter]:
    w = StoreWriter(tmp_path / "store.db", service="test")
    yield w
    w.close()


def attempt(n: int) -> dict[str, Any]:
    return {
        "delivery_id": f"d-{n}", "trace_id": f"{n:032x}", "span_id": f"{n:016x}",
        "channel": "telegram", "started_at_ms": 1_000 + n, "max_attempts": 3,
    }


def count(path: Path, sql: str) -> int:
    with rawdb.connect(path) as conn:
        return int(conn.execute(sql).fetchone()[0])


def inbound(n: int) -> dict[str, Any]:
    return {"trace_id": f"{n:032x}", "span_id": f"{n:016x}", "channel": "slack",
            "status": "ok", "received_at_ms": n}


def journaled(path: Path) -> bytes:
    return b"".join(j.read_bytes() for j in journal_files(path))


def test_every_kind_of_row_is_in_the_journal_when_the_call_returns(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "store.db", service="test", flush_interval_seconds=3600)
    try:
        writer.submit("inbound_messages", inbound(1))
        writer.submit("ai_runs", {"trace_id": "a" * 32, "span_id": "b" * 16, "status": "ok",
                                  "started_at_ms": 1, "reply_produced": 1})
        writer.submit("enqueues", {"trace_id": "a" * 32, "span_id": "c" * 16, "status": "ok",
                                   "started_at_ms": 2, "delivery_id": "d-1"})
        writer.submit("receipts", {"channel": "slack", "provider_message_id": "m1",
                                   "status": "delivered", "at_ms": 3, "recorded_at_ms": 3})
        assert writer.start_attempt(attempt(1)) == 1
        writer.end_attempt({**attempt(1), "status": "delivered", "ended_at_ms": 2_000})
        lines = journaled(writer.path).splitlines()[1:]
        assert [line.split(b",")[0] for line in lines] == [
            b'["inbound_messages"', b'["ai_runs"', b'["enqueues"', b'["receipts"',
            b'["attempts:start"', b'["attempts:end"',
        ]
        assert count(writer.path, "SELECT COUNT(*) FROM ai_runs") == 0  # not committed yet
        assert writer.flush()
        for table in ("inbound_messages", "ai_runs", "enqueues", "receipts", "attempts"):
            assert count(writer.path, f"SELECT COUNT(*) FROM {table} WHERE service = 'test'") == 1
        assert journaled(writer.path).splitlines()[1:] == []  # committed: emptied
    finally:
        writer.close()


def test_submit_never_raises(writer: StoreWriter) -> None:
    writer.submit("attempts", inbound(1))  # attempts go through start/end_attempt
    writer.submit("no_such_table", inbound(2))
    writer.submit("ai_runs", None)  # type: ignore[arg-type]
    writer.submit("ai_runs", {"trace_id": "t", "span_id": "s", "status": "ok",
                              "started_at_ms": 1})
    assert writer.flush()
    assert writer.stats()["unwritable_row"] == 2
    assert count(writer.path, "SELECT count FROM drops WHERE reason = 'unwritable_row'") == 2
    assert count(writer.path, "SELECT COUNT(*) FROM ai_runs") == 1


def test_a_replayed_line_already_committed_leaves_one_row(tmp_path: Path) -> None:
    # A process killed after the indexer's commit, before its journal was emptied.
    store = tmp_path / "store.db"
    rows = [
        ["inbound_messages", inbound(1)],
        ["ai_runs", {"trace_id": "a" * 32, "span_id": "b" * 16, "status": "ok",
                     "started_at_ms": 1}],
        ["enqueues", {"trace_id": "a" * 32, "span_id": "c" * 16, "status": "ok",
                      "started_at_ms": 2}],
        ["receipts", {"channel": "slack", "provider_message_id": "m1", "status": "delivered",
                      "at_ms": 3, "recorded_at_ms": 3}],
    ]
    writer = StoreWriter(store)
    for kind, row in rows:
        writer.submit(kind, row)
    writer.close()
    lines = b"".join(json.dumps(line).encode() + b"\n" for line in rows)
    Path(f"{store}-journal-999999-0000abcd").write_bytes(HEADER + lines)
    open_store(store).close()  # replays it
    assert journal_files(store) == []
    for table in ("inbound_messages", "ai_runs", "enqueues", "receipts"):
        assert count(store, f"SELECT COUNT(*) FROM {table}") == 1


def test_a_producer_that_outruns_the_store_is_slowed_not_dropped(tmp_path: Path) -> None:
    # A queue of 40 rows, and an indexer that would only wake every 10 s on its own:
    # without pacing, 5,000 rows in a tight loop would overflow it almost at once.
    writer = StoreWriter(tmp_path / "store.db", max_queue=40, flush_interval_seconds=10)
    try:
        for n in range(5_000):
            writer.submit("inbound_messages", inbound(n))
        stats = writer.stats()
        assert stats.get("paced", 0) > 0
        assert "queue_full" not in stats
        assert stats["queued"] <= 40
        assert writer.flush()
    finally:
        writer.close()
    assert count(tmp_path / "store.db", "SELECT COUNT(*) FROM inbound_messages") == 5_000


def test_a_stuck_store_costs_one_paced_wait_then_the_queue_bound(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "store.db", max_queue=100, hot_path_timeout_seconds=0.05)
    other = rawdb.connect(writer.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the store for long
    try:
        t0 = time.monotonic()
        for n in range(300):
            writer.submit("inbound_messages", inbound(n))
        elapsed = time.monotonic() - t0
        stats = writer.stats()
        # At most one call waited (until the indexer found the store locked); the
        # others went on at once, until the queue bound, past which rows are counted.
        assert stats["paced"] <= 1
        assert stats["queue_full"] == 200
        assert elapsed < 0.5, elapsed
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert writer.flush()
    writer.close()
    assert count(tmp_path / "store.db", "SELECT COUNT(*) FROM inbound_messages") == 100
    assert count(tmp_path / "store.db", "SELECT count FROM drops WHERE reason = 'queue_full'") \
        == 200


def test_batches_shrink_to_their_lock_time_and_grow_back(writer: StoreWriter) -> None:
    indexer = writer._parts.indexer
    indexer.batch_rows = I.BATCH_SIZE
    indexer._adapt_batch(I.BATCH_SIZE, I.BATCH_HOLD_SECONDS * 4)
    assert indexer.batch_rows == I.BATCH_SIZE // 4
    indexer._adapt_batch(indexer.batch_rows, 30.0)
    assert indexer.batch_rows == I.MIN_BATCH
    for _ in range(20):
        indexer._adapt_batch(indexer.batch_rows, 0.0001)
    assert indexer.batch_rows == I.BATCH_SIZE


def test_commits_never_checkpoint_on_their_own(writer: StoreWriter) -> None:
    writer.start_attempt(attempt(1))
    assert writer.flush()
    conn = writer._parts.indexer.conn
    assert conn is not None
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0


def test_the_indexer_checkpoints_under_steady_traffic(writer: StoreWriter) -> None:
    wal = Path(f"{writer.path}-wal")
    sizes = []
    for n in range(1, 2_001):
        writer.start_attempt(attempt(n))
        writer.end_attempt({**attempt(n), "status": "delivered", "ended_at_ms": 2_000 + n})
        if n % 20 == 0:
            time.sleep(0.01)  # real sends take time; the indexer commits as they go
        if n % 200 == 0:
            sizes.append(wal.stat().st_size)
    # Hundreds of commits of several pages each; checkpoints let SQLite reuse the WAL
    # from the start instead of growing it for as long as traffic lasts.
    assert max(sizes) < 16 * 1024 * 1024, sizes
    assert writer.flush()
    assert count(writer.path, "SELECT COUNT(*) FROM attempts WHERE status = 'delivered'") == 2_000


def test_callers_never_wait_while_another_process_holds_the_store(
    writer: StoreWriter,
) -> None:
    writer.start_attempt(attempt(1))  # the store exists and is registered
    assert writer.flush()
    other = rawdb.connect(writer.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process takes the write lock
    try:
        waits = []
        for n in range(100):
            t0 = time.monotonic()
            writer.submit("inbound_messages", inbound(n))
            waits.append(time.monotonic() - t0)
            if n % 10 == 0:
                time.sleep(0.01)  # the indexer is now waiting for the store
        assert max(waits) < 0.045, waits
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert writer.flush()
    assert count(writer.path, "SELECT COUNT(*) FROM inbound_messages") == 100
    assert not writer.stats().get("write_errors")


def test_the_callers_thread_never_upgrades_an_older_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    from local_store import _schema

    path = tmp_path / "old.db"
    first = StoreWriter(path, service="old")
    first.start_attempt(attempt(1))
    first.close()
    # This build's schema is one migration newer than the store's.
    request.getfixturevalue("next_migration")
    upgraded_on: list[str] = []
    real_migrate = _schema._migrate

    def migrate(db: Any) -> None:
        upgraded_on.append(threading.current_thread().name)
        real_migrate(db)

    monkeypatch.setattr(_schema, "_migrate", migrate)

    w = StoreWriter(path, service="new")
    try:
        # Journaled and numbered, not upgraded on the caller's thread...
        assert w.start_attempt(attempt(2)) == 1
        assert w.flush()
        assert upgraded_on == ["otel-delivery-store-indexer"]
        assert w.start_attempt(attempt(3)) == 1
    finally:
        w.close()
    assert count(path, "SELECT COUNT(*) FROM _sqlite_migrations") == _schema.SCHEMA_VERSION
    assert count(path, "SELECT COUNT(*) FROM attempts") == 3
