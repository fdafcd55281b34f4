"""The attempt journal: rows survive a SIGKILL before their commit, numbers stay in order."""

from __future__ import annotations

import errno
import json
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from local_store import StoreWriter, open_store
from local_store._journal import HEADER, Journal, journal_files
from local_store._replay import replay_orphans
from tests import rawdb


def attempt(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "delivery_id": f"d-{n}", "trace_id": f"{n:032x}", "span_id": f"{n:016x}",
        "channel": "telegram", "started_at_ms": 1_000 + n, "max_attempts": 3, **extra,
    }


def statuses(path: Path) -> dict[str, str]:
    with rawdb.connect(path) as conn:
        return dict(conn.execute("SELECT delivery_id, status FROM attempts"))


KILLED_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from local_store import StoreWriter
    store, n = sys.argv[1], int(sys.argv[2])
    # A background thread that would not commit for an hour: every row is only in
    # the journal when the process dies, the last attempt mid-send.
    w = StoreWriter(store, flush_interval_seconds=3600)
    w._parts.indexer.batch_rows = 10**9
    for i in range(n + 1):
        row = {"delivery_id": f"d-{i}", "trace_id": f"{i:032x}", "span_id": f"{i:016x}",
               "channel": "telegram", "started_at_ms": 1000 + i, "max_attempts": 3}
        assert w.start_attempt(row) == 1
        if i == n:
            os.kill(os.getpid(), signal.SIGKILL)
        w.end_attempt({**row, "status": "delivered" if i % 2 else "failed",
                       "ended_at_ms": 2000 + i, "error_type": None if i % 2 else "Timeout"})
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_outcomes_of_a_killed_process_are_replayed_not_marked_interrupted(
    tmp_path: Path,
) -> None:
    store = tmp_path / "d.db"
    proc = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(store), "150"],
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    # Nothing was committed; every start and every outcome is in the journal.
    assert statuses(store) == {}
    [journal] = journal_files(store)
    lines = journal.read_bytes().splitlines(keepends=True)
    assert lines[0] == HEADER
    assert len(lines) == 1 + 2 * 150 + 1

    w = StoreWriter(store)  # the restarted gateway
    try:
        found = statuses(store)
        assert len(found) == 151
        assert sum(s == "delivered" for s in found.values()) == 75
        assert sum(s == "failed" for s in found.values()) == 75
        assert found["d-150"] == "interrupted"  # only the one cut off mid-send
        assert journal_files(store) == []
        # A retry after the restart continues the numbering.
        assert w.start_attempt({**attempt(150), "span_id": "f" * 16}) == 2
    finally:
        w.close()


def test_a_live_writers_journal_is_left_alone_and_emptied_as_it_commits(
    tmp_path: Path,
) -> None:
    store = tmp_path / "d.db"
    w = StoreWriter(store, flush_interval_seconds=3600)
    try:
        w._parts.indexer.batch_rows = 10**9
        w.start_attempt(attempt(1))
        w.end_attempt({**attempt(1), "status": "delivered", "ended_at_ms": 2_000})
        [journal] = journal_files(store)
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600  # it holds what the store holds
        # Another opener (a CLI command, prune) must not take rows a live writer holds.
        db = open_store(store)
        assert replay_orphans(db.conn, store) == 0
        db.conn.close()
        assert statuses(store) == {}
        assert journal.stat().st_size > len(HEADER)

        assert w.flush()
        assert statuses(store) == {"d-1": "delivered"}
        # Committed: nothing for a replay to redo, only the line that says what it is.
        assert journal.read_bytes() == HEADER
    finally:
        w.close()
    assert journal_files(store) == []  # a clean close leaves no file


def test_rows_the_journal_cannot_take_are_still_committed_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(self: Journal) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Journal, "_next_segment", full_disk)
    w = StoreWriter(tmp_path / "d.db", flush_interval_seconds=3600)
    try:
        assert w.start_attempt(attempt(1)) == 1
        w.end_attempt({**attempt(1), "status": "delivered", "ended_at_ms": 2_000})
        w.submit("inbound_messages", {"trace_id": "a" * 32, "span_id": "b" * 16,
                                      "status": "ok", "received_at_ms": 1})
        # Kept in memory, counted: a crash now would lose them, and stats say so.
        assert w.stats()["unjournaled"] == 3
        assert journal_files(w.path) == []
        assert w.flush()
        assert statuses(w.path) == {"d-1": "delivered"}
        assert w.stats()["queued"] == 0
    finally:
        w.close()
    # Not lost, so not in the drops table that `health` reports.
    with rawdb.connect(tmp_path / "d.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM inbound_messages").fetchone() == (1,)
        assert conn.execute("SELECT COUNT(*) FROM drops").fetchone() == (0,)


def test_rows_the_journal_cannot_take_and_close_cannot_commit_are_lost_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Journal, "append", lambda self, kind, row: None)
    w = StoreWriter(tmp_path / "d.db", flush_interval_seconds=3600)
    other = rawdb.connect(w.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the store stays locked past close()
    try:
        w.start_attempt(attempt(1))
        assert w.close(timeout_seconds=0.3) is False
        assert w.stats()["lost_at_close"] == 1
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_replay_skips_a_torn_line_loses_only_a_bad_value_and_is_idempotent(
    tmp_path: Path,
) -> None:
    store = tmp_path / "d.db"
    db = open_store(store, create=True)
    lines = [
        ["attempts:start", attempt(1, status="started")],
        ["attempts:end", attempt(1, status="delivered", ended_at_ms=2_001)],
        # An attempt number SQLite cannot hold: the number is lost, not the row.
        ["attempts:end", attempt(2, status="failed", attempt=2**70)],
        ["attempts:end", attempt(3, status="failed", final=1)],  # its start row was lost
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '["attempts:end", {"deliv'
    orphan = Path(f"{store}-journal-999999-0000abcd")
    orphan.write_bytes(HEADER + text.encode())
    copy = Path(f"{store}-journal-999999-0000abce")
    copy.write_bytes(HEADER + text.encode())  # the same rows twice, as after a replay cut short

    assert replay_orphans(db.conn, store) == 8
    assert journal_files(store) == []
    assert statuses(store) == {"d-1": "delivered", "d-2": "failed", "d-3": "failed"}
    assert db.execute("SELECT attempt FROM attempts WHERE delivery_id = 'd-2'").fetchone() == (1,)
    assert db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 3
    assert db.execute("SELECT count FROM drops WHERE reason = 'bad_value'").fetchone() == (2,)
    assert db.execute("SELECT count FROM drops WHERE reason = 'unwritable_row'").fetchone() is None
    db.conn.close()


def test_a_backlog_wakes_the_indexer_and_paces_the_caller_instead_of_dropping(
    tmp_path: Path,
) -> None:
    # An indexer that would never write on its own, and a queue of ten rows.
    w = StoreWriter(tmp_path / "d.db", max_queue=10, flush_interval_seconds=3600)
    try:
        w._parts.indexer.batch_rows = 10**9
        for n in range(1, 41):
            assert w.start_attempt(attempt(n)) == 1
            w.end_attempt({**attempt(n), "attempt": 1, "status": "delivered",
                           "ended_at_ms": 2_000 + n})
        # Once half the queue waited, each call woke the indexer and waited for its
        # commit: the rows are in the store, none was dropped.
        assert w.stats()["paced"] > 0
        assert "queue_full" not in w.stats()
        assert w.stats()["queued"] <= 10
        assert w.flush()
        assert statuses(w.path) == {f"d-{n}": "delivered" for n in range(1, 41)}
    finally:
        w.close()


def test_rows_the_full_queue_drops_do_not_pin_the_journal(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "d.db", max_queue=5, flush_interval_seconds=3600,
                    hot_path_timeout_seconds=0.01)
    other = rawdb.connect(w.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the store: rows wait
    try:
        w._parts.indexer.batch_rows = 10**9
        for n in range(1, 9):
            w.start_attempt({**attempt(n), "attempt": 1})
            w.end_attempt({**attempt(n), "attempt": 1, "status": "delivered",
                           "ended_at_ms": 2_000 + n})
        assert w.stats()["queue_full"] == 2 * 8 - 5
        other.execute("ROLLBACK")
        assert w.flush()
        [journal] = journal_files(w.path)
        assert journal.read_bytes() == HEADER
        assert w._parts.numbers._pending == {}  # nor keep the numbers of dropped starts
    finally:
        other.close()
        w.close()


def test_attempt_numbers_count_rows_not_yet_committed(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    w = StoreWriter(store, flush_interval_seconds=3600)
    try:
        w._parts.indexer.batch_rows = 10**9
        numbers = []
        for n in range(3):
            row = {**attempt(1), "span_id": f"{n:016x}"}
            numbers.append(w.start_attempt(row))
            w.end_attempt({**row, "attempt": numbers[-1], "status": "failed", "ended_at_ms": 2})
        assert numbers == [1, 2, 3]
        assert statuses(store) == {}  # all three still pending
        assert w.flush()
        # Committed: the next number now comes from the store.
        assert w.start_attempt({**attempt(1), "span_id": "e" * 16}) == 4
        assert w._parts.numbers._pending == {"d-1": 4}
        assert w.flush()
        assert w._parts.numbers._pending == {}
    finally:
        w.close()
    with rawdb.connect(store) as conn:
        assert [n for (n,) in conn.execute(
            "SELECT attempt FROM attempts ORDER BY started_at_ms, id")] == [1, 2, 3, 4]


def test_a_start_and_its_outcome_committed_together_make_the_same_row_and_rollups(
    tmp_path: Path,
) -> None:
    def write(path: Path, *, flush_between: bool) -> dict[str, list[tuple[Any, ...]]]:
        w = StoreWriter(path, service="gw", flush_interval_seconds=3600)
        try:
            for n in range(1, 41):
                row = attempt(n % 7, span_id=f"{n:016x}", started_at_ms=1_000 * n)
                number = w.start_attempt(row)
                if flush_between:
                    assert w.flush()
                status = ("delivered", "failed", "started")[n % 3]
                if status != "started":
                    w.end_attempt({**row, "attempt": number, "status": status,
                                   "final": int(n % 5 == 0), "ended_at_ms": 1_000 * n + 5,
                                   "error_type": None if status == "delivered" else "Timeout"})
            assert w.flush()
        finally:
            w.close()
        with rawdb.connect(path) as conn:
            return {
                table: conn.execute(f"SELECT {cols} FROM {table} ORDER BY 1, 2, 3").fetchall()
                for table, cols in (
                    # (close() stamps the attempts still open with its own clock)
                    ("attempts", "span_id, delivery_id, attempt, status, final, "
                                 "iif(status = 'interrupted', NULL, ended_at_ms), "
                                 "error_type, started_at_ms"),
                    ("attempt_rollup", "*"), ("delivery_rollup", "*"),
                )
            }

    apart = write(tmp_path / "apart.db", flush_between=True)
    together = write(tmp_path / "together.db", flush_between=False)
    assert apart == together
    assert len(apart["attempts"]) == 40 and apart["attempt_rollup"]
