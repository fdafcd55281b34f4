"""StoreWriter under its own load: lazy rows, its own batches, WAL checkpoints."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from local_store import StoreWriter
from local_store import _writer as W


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[StoreWriter]:
    w = StoreWriter(tmp_path / "store.db", service="test")
    yield w
    w.close()


@pytest.fixture
def sync_writer(tmp_path: Path) -> Iterator[StoreWriter]:
    """Attempt rows committed on the caller's thread (no journal): the hot path's lock."""
    w = StoreWriter(tmp_path / "store.db", service="test", journal=False)
    yield w
    w.close()


def attempt(n: int) -> dict[str, Any]:
    return {
        "delivery_id": f"d-{n}", "trace_id": f"{n:032x}", "span_id": f"{n:016x}",
        "channel": "telegram", "started_at_ms": 1_000 + n, "max_attempts": 3,
    }


def count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql).fetchone()[0])


def test_lazy_rows_are_built_on_the_background_thread(writer: StoreWriter) -> None:
    built_on: list[str] = []

    def make(n: int) -> Mapping[str, Any]:
        built_on.append(threading.current_thread().name)
        return {"trace_id": f"{n:032x}", "span_id": f"{n:016x}", "channel": "slack",
                "status": "ok", "received_at_ms": n}

    for n in range(50):
        writer.submit_lazy("inbound_messages", lambda n=n: make(n))
    assert writer.flush()

    assert count(writer.path, "SELECT COUNT(*) FROM inbound_messages") == 50
    assert set(built_on) == {"otel-delivery-store-writer"}
    assert count(writer.path, "SELECT COUNT(*) FROM inbound_messages WHERE service = 'test'") == 50


def test_a_lazy_row_that_cannot_be_built_is_counted_and_the_rest_written(
    writer: StoreWriter,
) -> None:
    def broken() -> Mapping[str, Any]:
        raise KeyError("no such attribute")

    writer.submit_lazy("ai_runs", broken)
    writer.submit_lazy("ai_runs", lambda: {"trace_id": "t", "span_id": "s", "status": "ok",
                                          "started_at_ms": 1})
    assert writer.flush()

    assert count(writer.path, "SELECT COUNT(*) FROM ai_runs") == 1
    assert writer.stats()["unbuildable_row"] == 1
    assert count(writer.path, "SELECT count FROM drops WHERE reason = 'unbuildable_row'") == 1
    with pytest.raises(ValueError, match="unknown table"):
        writer.submit_lazy("attempts", broken)


def _hold_lock(writer: StoreWriter, seconds: float, *, as_background: bool) -> threading.Thread:
    """Hold the writer's lock from another thread, as a background batch would."""
    taken = threading.Event()

    def hold() -> None:
        with writer._lock:
            if as_background:
                writer._bg_lock_since = time.monotonic()
            taken.set()
            time.sleep(seconds)
            writer._bg_lock_since = 0.0

    t = threading.Thread(target=hold)
    t.start()
    taken.wait()
    return t


def test_a_long_batch_of_our_own_defers_one_row_not_the_next_second(
    sync_writer: StoreWriter,
) -> None:
    writer = sync_writer
    # Longer than the 50 ms hot-path bound, far shorter than "stuck".
    holder = _hold_lock(writer, 0.12, as_background=True)
    assert writer.start_attempt(attempt(1)) is None  # waited 50 ms, then deferred
    holder.join()
    # The lock is free again: the very next call is written on the hot path.
    assert writer.start_attempt(attempt(2)) == 1
    assert writer.stats()["deferred"] == 1


def test_a_background_thread_stuck_on_the_store_opens_the_circuit(
    sync_writer: StoreWriter,
) -> None:
    writer = sync_writer
    # The background thread has held the lock for 300 ms when the call gives up:
    # it is waiting on another process, so later calls skip the wait for a while.
    holder = _hold_lock(writer, 0.35, as_background=True)
    time.sleep(0.25)
    t0 = time.monotonic()
    assert writer.start_attempt(attempt(1)) is None
    holder.join()
    assert writer.start_attempt(attempt(2)) is None
    assert time.monotonic() - t0 < 0.3  # only the first call waited
    assert writer.stats()["deferred"] == 2
    assert writer.flush()
    assert count(writer.path, "SELECT COUNT(*) FROM attempts") == 2


def test_batches_shrink_to_their_lock_time_and_grow_back(writer: StoreWriter) -> None:
    writer._batch_rows = W._BATCH_SIZE
    writer._adapt_batch(W._BATCH_SIZE, W._BATCH_HOLD_SECONDS * 4)
    assert writer._batch_rows == W._BATCH_SIZE // 4
    writer._adapt_batch(writer._batch_rows, 30.0)
    assert writer._batch_rows == W._MIN_BATCH
    for _ in range(20):
        writer._adapt_batch(writer._batch_rows, 0.0001)
    assert writer._batch_rows == W._BATCH_SIZE


def test_commits_on_the_callers_thread_never_checkpoint(sync_writer: StoreWriter) -> None:
    writer = sync_writer
    writer.start_attempt(attempt(1))
    conn = writer._hot_conn
    assert conn is not None
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0


def test_the_background_thread_checkpoints_a_hot_path_only_writer(
    sync_writer: StoreWriter,
) -> None:
    writer = sync_writer
    wal = Path(f"{writer.path}-wal")
    sizes = []
    for n in range(1, 2_001):
        writer.start_attempt(attempt(n))
        writer.end_attempt({**attempt(n), "status": "delivered", "ended_at_ms": 2_000 + n})
        if n % 200 == 0:
            time.sleep(0.05)  # give the background thread its turn, as real sends would
            sizes.append(wal.stat().st_size)
    # 4,000 commits of several pages each make a WAL of about 70 MB; checkpoints
    # every few hundred commits let SQLite reuse it from the start.
    assert max(sizes) < 16 * 1024 * 1024, sizes
    assert count(writer.path, "SELECT COUNT(*) FROM attempts WHERE status = 'delivered'") == 2_000


def test_waiting_on_another_process_does_not_hold_our_lock(writer: StoreWriter) -> None:
    writer.start_attempt(attempt(1))  # the store exists and is registered
    other = sqlite3.connect(writer.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process takes the write lock
    try:
        for n in range(100):
            writer.submit("inbound_messages", {"trace_id": f"{n:032x}", "span_id": f"{n:016x}",
                                               "status": "ok", "received_at_ms": n})
        time.sleep(0.1)  # the background thread is now waiting for the store
        waits = []
        for _ in range(20):
            t0 = time.monotonic()
            got = writer._lock.acquire(timeout=1.0)
            waits.append(time.monotonic() - t0)
            assert got
            writer._lock.release()
            time.sleep(0.01)
        # It tries in short turns with our lock let go in between, so a hot-path call
        # is never queued behind its wait (it meets the busy store itself, and defers).
        assert max(waits) < 0.045, waits
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert writer.flush()
    assert count(writer.path, "SELECT COUNT(*) FROM inbound_messages") == 100
    assert not writer.stats().get("write_errors")


@pytest.mark.parametrize("journal", [True, False])
def test_the_callers_thread_never_upgrades_an_older_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
    journal: bool,
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

    w = StoreWriter(path, service="new", hot_path_cooldown_seconds=0.0, journal=journal)
    try:
        # Journaled, or deferred without a number, not upgraded on the caller's thread...
        assert w.start_attempt(attempt(2)) == (1 if journal else None)
        assert w.flush()
        assert upgraded_on == ["otel-delivery-store-writer"]
        # ...and once the background thread has upgraded it, the hot path is back.
        assert w.start_attempt(attempt(3)) == 1
    finally:
        w.close()
    assert count(path, "SELECT COUNT(*) FROM _sqlite_migrations") == _schema.SCHEMA_VERSION
    assert count(path, "SELECT COUNT(*) FROM attempts") == 3
