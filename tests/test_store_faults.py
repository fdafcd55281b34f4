"""Store faults while the gateway runs: read-only, full, locked, corrupt, deleted.

In every case the wrapped calls all run and return what they would without the
plugin, none blocks past HOT_PATH_BOUND_SECONDS, every row that could not be written
is accounted for (held in the queue, or counted as dropped), and once the fault
clears the held rows reach the store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

import otel_delivery
from otel_delivery import arg
from tests import rawdb

# The documented bound on any one wrapped call's extra wait (docs/guarantees.md).
HOT_PATH_BOUND_SECONDS = 0.1
CALLS = 200


@otel_delivery.deliver(channel="telegram", delivery_id=arg("n"))
def send(n: int) -> dict[str, int]:
    return {"message_id": n * 7}


def burst(start: int, calls: int = CALLS) -> float:
    """Make ``calls`` wrapped calls; check every result; return the slowest call's time."""
    worst = 0.0
    for n in range(start, start + calls):
        t0 = time.perf_counter()
        result = send(n)
        worst = max(worst, time.perf_counter() - t0)
        assert result == {"message_id": n * 7}
    if start:  # the burst under the fault; `pytest -s` shows the figure
        print(f"\nslowest of {calls} calls under the fault: {worst * 1000:.1f} ms")
    return worst


def attempts_in(store: Path) -> set[str]:
    conn = rawdb.connect(store)
    try:
        rows = conn.execute("SELECT delivery_id, status FROM attempts").fetchall()
    finally:
        conn.close()
    assert all(status == "delivered" for _, status in rows)
    return {d for d, _ in rows}


def configure(store: Path) -> otel_delivery.Instrumentation:
    return otel_delivery.configure(store=store, tracer_provider=TracerProvider())


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/otel-delivery-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return ok


needs_mount = pytest.mark.skipif(
    not _can_mount(), reason="needs root and tmpfs mounts to make a real full or read-only disk"
)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real filesystem the test can fill and remount read-only."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _check_recovery(
    otel: otel_delivery.Instrumentation, store: Path, expected: set[str]
) -> None:
    assert otel.force_flush(timeout_seconds=10), otel.stats()
    assert attempts_in(store) >= expected
    stats = otel.stats()
    assert stats["store.queued"] == 0
    assert stats.get("store.queue_full", 0) == 0


@needs_mount
def test_read_only_filesystem(small_disk: Path) -> None:
    store = small_disk / "d.db"
    otel = configure(store)
    try:
        burst(0, 20)
        assert otel.force_flush(timeout_seconds=5)  # outcomes are committed in the background
        # A read-only filesystem mounted over the store's directory (the kernel will not
        # remount a filesystem read-only under files open for writing, and root ignores
        # file modes): the store path now lives on a disk that refuses every write.
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(small_disk)], check=True
        )
        try:
            worst = burst(1000)
            assert otel.force_flush(timeout_seconds=0.3) is False  # nothing can be written
            assert otel.stats()["store.queued"] == 2 * CALLS  # ...but nothing is lost
        finally:
            subprocess.run(["umount", str(small_disk)], check=True)
        assert worst < HOT_PATH_BOUND_SECONDS, worst
        _check_recovery(otel, store, {str(n) for n in range(1000, 1000 + CALLS)})
    finally:
        otel.shutdown()


@needs_mount
def test_disk_full(small_disk: Path) -> None:
    store = small_disk / "d.db"
    otel = configure(store)
    try:
        burst(0, 20)
        filler = small_disk / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass  # ENOSPC: the disk is full
        try:
            worst = burst(1000)
            otel.force_flush(timeout_seconds=0.3)
            assert otel.stats()["store.queued"] > 0  # held, not lost
        finally:
            filler.unlink()
        assert worst < HOT_PATH_BOUND_SECONDS, worst
        _check_recovery(otel, store, {str(n) for n in range(1000, 1000 + CALLS)})
    finally:
        otel.shutdown()


def test_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    otel = configure(store)
    try:
        burst(0, 20)
        holder = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(
                """
                import sqlite3, sys, time
                conn = sqlite3.connect(sys.argv[1], isolation_level=None)
                conn.execute("BEGIN IMMEDIATE")
                print("locked", flush=True)
                time.sleep(3)
                conn.execute("ROLLBACK")
                """), str(store)],
            stdout=subprocess.PIPE, text=True,
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        worst = burst(1000)
        holder.wait(timeout=30)
        assert worst < HOT_PATH_BOUND_SECONDS, worst
        _check_recovery(otel, store, {str(n) for n in range(1000, 1000 + CALLS)})
    finally:
        otel.shutdown()


@pytest.mark.parametrize("when", ["while_running", "at_start"])
def test_corrupt_store_is_moved_aside_and_a_new_one_started(tmp_path: Path, when: str) -> None:
    store = tmp_path / "state" / "d.db"
    garbage = b"this is no longer a SQLite database" * 200
    if when == "at_start":
        store.parent.mkdir()
        store.write_bytes(garbage)
    otel = configure(store)
    try:
        burst(0, 20)
        if when == "while_running":
            # A bad restore puts a damaged file where the store and its WAL were. (With
            # the old WAL left beside it, SQLite would read through it and not notice.)
            for suffix in ("-wal", "-shm"):
                Path(f"{store}{suffix}").unlink()
            (tmp_path / "state" / "incoming").write_bytes(garbage)
            os.replace(tmp_path / "state" / "incoming", store)
        worst = burst(1000)
        assert worst < HOT_PATH_BOUND_SECONDS, worst
        _check_recovery(otel, store, {str(n) for n in range(1000, 1000 + CALLS)})
        aside = [p.name for p in store.parent.iterdir() if ".corrupt-" in p.name]
        assert any(name.endswith(tuple("0123456789")) for name in aside), aside
        assert otel.stats()["store.store_moved_aside"] == 1
        conn = rawdb.connect(store)
        reasons = dict(conn.execute("SELECT reason, count FROM drops"))
        conn.close()
        assert reasons["store_moved_aside"] == 1
    finally:
        otel.shutdown()


def test_store_directory_deleted(tmp_path: Path) -> None:
    store = tmp_path / "state" / "d.db"
    otel = configure(store)
    try:
        burst(0, 20)
        shutil.rmtree(store.parent)
        worst = burst(1000)
        assert worst < HOT_PATH_BOUND_SECONDS, worst
        # Rows written after the deletion are in the new store, none went to the
        # unlinked file.
        _check_recovery(otel, store, {str(n) for n in range(1000, 1000 + CALLS)})
    finally:
        otel.shutdown()


@pytest.mark.parametrize("fault", ["directory_is_a_file", "newer_schema"])
def test_store_that_never_opens_counts_what_it_drops(tmp_path: Path, fault: str) -> None:
    store = tmp_path / "state" / "d.db"
    setups: dict[str, Callable[[], None]] = {
        "directory_is_a_file": lambda: (tmp_path / "state").write_text("not a directory"),
        "newer_schema": lambda: _newer_schema_store(store),
    }
    setups[fault]()
    otel = otel_delivery.configure(
        store=store, tracer_provider=TracerProvider(), max_queue=50
    )
    try:
        worst = burst(0)
        assert worst < HOT_PATH_BOUND_SECONDS, worst
        stats = otel.stats()
        # 200 start and 200 end rows: 50 held in the queue, the rest counted as dropped.
        assert stats["store.queued"] == 50
        assert stats["store.queue_full"] == 2 * CALLS - 50
    finally:
        otel.shutdown(timeout_seconds=0.5)


def _newer_schema_store(store: Path) -> None:
    from local_store import open_store

    db = open_store(store, create=True)
    db.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('otel_delivery', 'm999_future', '2030-01-01')"
    )
    db.conn.commit()
    db.close()
