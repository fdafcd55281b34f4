"""A gateway killed with SIGKILL mid-send leaves an interrupted attempt, never nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import otel_delivery
from local_store import StoreWriter, open_store
from local_store._journal import journal_files
from local_store._rescue import dead_writer_ids
from otel_delivery import arg
from tests import rawdb

from .conftest import make_traced

CHILD = """
import json, sys, time, pathlib
import otel_delivery
from otel_delivery import arg

store, marker, entry_file = sys.argv[1:4]
otel_delivery.configure(service_name="crashy", store=store)

@otel_delivery.deliver(channel="telegram", delivery_id=arg("entry.id"), max_attempts=3,
                       carrier=arg("entry.trace"))
def send(entry):
    pathlib.Path(marker).write_text("sending")
    time.sleep(60)  # killed here, mid-send

@otel_delivery.ai_run(agent="bot")
def run():
    entry = {"id": "dlv-crash", "trace": otel_delivery.carry()}
    pathlib.Path(entry_file).write_text(json.dumps(entry))
    send(entry)

run()
"""


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_seconds: float = 30) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not path.exists():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"child exited early: {err!r}")
        if time.monotonic() > deadline:
            raise AssertionError("child never reached the send")
        time.sleep(0.01)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_send_leaves_an_interrupted_row_and_retry_continues(tmp_path: Path) -> None:
    store, marker, entry_file = tmp_path / "d.db", tmp_path / "marker", tmp_path / "entry.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(store), str(marker), str(entry_file)],
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(marker, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # The attempt row was in the journal before the send ran; any writable open of the
    # store (a restarted gateway, a CLI command) commits it.
    [journal] = journal_files(store)
    assert b'"dlv-crash"' in journal.read_bytes()
    open_store(store).conn.close()
    assert journal_files(store) == []
    conn = rawdb.connect(store)
    rows = conn.execute("SELECT delivery_id, attempt, status FROM attempts").fetchall()
    assert rows == [("dlv-crash", 1, "started")]
    assert len(dead_writer_ids(conn)) == 1  # ... and its process is known to be gone
    conn.close()

    # After a restart, the next writer marks the orphan interrupted, and the retry
    # joins the original trace as attempt 2.
    restarted = make_traced(store)
    try:
        @otel_delivery.deliver(
            channel="telegram", delivery_id=arg("entry.id"), max_attempts=3,
            carrier=arg("entry.trace"),
        )
        def send(entry: dict[str, object]) -> str:
            return "ok"

        entry = json.loads(entry_file.read_text())
        assert send(entry) == "ok"
        rows2 = restarted.rows(
            "SELECT attempt, status, trace_id FROM attempts WHERE delivery_id = 'dlv-crash' "
            "ORDER BY attempt"
        )
        assert [(r["attempt"], r["status"]) for r in rows2] == [
            (1, "interrupted"),
            (2, "delivered"),
        ]
        assert rows2[0]["trace_id"] == rows2[1]["trace_id"]
    finally:
        restarted.handle.shutdown()


def test_store_problems_never_reach_the_gateway(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's directory should be")
    t = make_traced(blocker / "d.db")
    try:
        @otel_delivery.deliver(channel="x")
        def send(n: int) -> int:
            return n * 3

        started = time.monotonic()
        assert [send(i) for i in range(50)] == [i * 3 for i in range(50)]
        assert time.monotonic() - started < 5
        assert t.handle.force_flush(timeout_seconds=0.2) is False
        stats = t.handle.stats()
        assert stats["store.queued"] == 100  # every start and end row, held for retry
        assert stats["store.unjournaled"] == 100  # ...in memory only: no journal there
    finally:
        t.handle.shutdown(timeout_seconds=0.5)


def test_queue_bound_counts_what_it_drops(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    writer = StoreWriter(blocker / "d.db", max_queue=10)
    for i in range(25):
        writer.submit("ai_runs", {"trace_id": "t", "span_id": str(i), "status": "ok",
                                  "started_at_ms": i})
    stats = writer.stats()
    assert stats["queued"] == 10
    assert stats["queue_full"] == 15
    writer.close(timeout_seconds=0.2)


def test_a_row_sqlite_cannot_bind_is_dropped_and_counted_not_retried_forever(
    tmp_path: Path,
) -> None:
    writer = StoreWriter(tmp_path / "d.db")
    try:
        # A value that fits no column loses only itself (bad_value); a row without a
        # value its table requires cannot be written at all (unwritable_row).
        odd = {"delivery_id": "odd", "attempt": 2**70, "trace_id": "t" * 32,
               "span_id": "c" * 16, "status": "delivered", "started_at_ms": 1}
        poison = {"delivery_id": "bad", "attempt": 1, "trace_id": None,
                  "span_id": "b" * 16, "status": "delivered", "started_at_ms": 1}
        good = {"delivery_id": "good", "attempt": 1, "trace_id": "t" * 32,
                "span_id": "a" * 16, "status": "delivered", "started_at_ms": 2}
        writer.end_attempt(odd)
        writer.end_attempt(poison)
        writer.submit("ai_runs", {"trace_id": "t", "span_id": "s", "status": "ok",
                                  "started_at_ms": 2**80})
        writer.submit("ai_runs", {"trace_id": "t", "span_id": "s2", "status": "ok",
                                  "started_at_ms": 3})
        writer.end_attempt(good)
        assert writer.flush(timeout_seconds=5)
        assert writer.stats()["unwritable_row"] == 2
        assert writer.stats()["bad_value"] == 2
        conn = rawdb.connect(tmp_path / "d.db")
        assert conn.execute("SELECT delivery_id, attempt FROM attempts ORDER BY 1").fetchall(
        ) == [("good", 1), ("odd", 1)]
        assert conn.execute("SELECT span_id FROM ai_runs").fetchall() == [("s2",)]
        assert conn.execute(
            "SELECT count FROM drops WHERE reason = 'unwritable_row'"
        ).fetchone() == (2,)
        conn.close()
    finally:
        writer.close()


REPLY_CHILD = """
import os, signal, sys
import otel_delivery
from otel_delivery import arg

store = sys.argv[1]
otel_delivery.configure(service_name="gw-killed", store=store)

@otel_delivery.ai_run(agent="bot")
def run(text):
    return "the reply to " + text

@otel_delivery.inbound(channel="telegram", inbound_id=arg("msg.id"))
def on_message(msg):
    return run(msg["text"])

assert on_message({"id": "in-1", "text": "hello"}) == "the reply to hello"
# Killed the moment the handler returns: no flush interval has passed, nothing has
# been committed, and the reply was never enqueued.
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_right_after_a_run_keeps_its_inbound_and_run_rows(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    proc = subprocess.run([sys.executable, "-c", REPLY_CHILD, str(store)],
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    # Nothing reached the store; both rows are in the dead process's journal.
    conn = rawdb.connect(store)
    assert conn.execute("SELECT COUNT(*) FROM ai_runs").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM inbound_messages").fetchone() == (0,)
    conn.close()
    [journal] = journal_files(store)
    text = journal.read_bytes()
    assert b'["inbound_messages",' in text and b'["ai_runs",' in text

    # The next writable open (a restarted gateway, `otel-delivery upgrade`) commits them.
    open_store(store).conn.close()
    assert journal_files(store) == []
    conn = rawdb.connect(store)
    assert conn.execute(
        "SELECT inbound_id, channel, status FROM inbound_messages").fetchall() == [
        ("in-1", "telegram", "ok")]
    assert conn.execute(
        "SELECT agent, status, reply_produced FROM ai_runs").fetchall() == [("bot", "ok", 1)]
    conn.close()

    # ...and `undelivered` shows the reply the crash kept from its user.
    cli = subprocess.run(
        [sys.executable, "-m", "otel_delivery", "undelivered", "--store", str(store),
         "--since", "1d", "--grace", "0s", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout)
    assert report["replies"] == 1
    assert [(i["source"], i["reason"], i["inbound_id"], i["channel"])
            for i in report["items"]] == [("ai_run", "no_attempt", "in-1", "telegram")]
