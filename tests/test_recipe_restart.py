"""The durable-queue recipe across real process restarts, one of them a SIGKILL mid-send.

Life 1 receives a message, queues the reply and tries it: Slack says ``ratelimited``
(Retry-After 30). Life 2 starts later and retries; the send hangs and the process is
killed with SIGKILL. Life 3 retries again and delivers. One trace, attempts 1-2-3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_delivery.recipes import DurableQueue
from tests import rawdb

from .chat_stubs import HANG, SLACK_RATELIMITED, SLACK_SENT, SlackStub

ROOT = Path(__file__).resolve().parent.parent
DELIVERY = "dlv-1700000000.000001"


@pytest.fixture
def slack_stub() -> Iterator[SlackStub]:
    stub = SlackStub({"C0RESTART": [SLACK_RATELIMITED, HANG, SLACK_SENT]}).start()
    yield stub
    stub.stop()


def gateway(tmp_path: Path, stub: SlackStub, phase: str, offset_seconds: float) -> list[str]:
    return [
        sys.executable, "-m", "tests.recipe_gateway", phase,
        "--store", str(tmp_path / "deliveries.db"), "--queue", str(tmp_path / "outbox.db"),
        "--slack-url", stub.base_url, "--clock-offset-seconds", str(offset_seconds),
    ]


def run_life(cmd: list[str]) -> dict[str, Any]:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rows(db: Path, sql: str) -> list[dict[str, Any]]:
    conn = rawdb.connect(db)
    conn.row_factory = rawdb.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def test_retries_after_restarts_join_the_trace_and_continue_the_count(
    tmp_path: Path, slack_stub: SlackStub
) -> None:
    # Life 1: receive, queue, first attempt (rate limited).
    life1 = run_life(gateway(tmp_path, slack_stub, "receive", 0))
    assert life1["outcomes"] == {DELIVERY: "retry"}

    # Life 2, after the requested 30 s: the send hangs; SIGKILL while it does.
    life2 = subprocess.Popen(gateway(tmp_path, slack_stub, "work", 60), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert slack_stub.wait_for_calls(2, timeout_seconds=30), "life 2 never sent"
    finally:
        os.kill(life2.pid, signal.SIGKILL)
        life2.wait(timeout=10)

    # Life 3: the interrupted attempt counts, and this one delivers.
    life3 = run_life(gateway(tmp_path, slack_stub, "work", 120))
    assert life3["outcomes"] == {DELIVERY: "delivered"}
    assert len(slack_stub.calls_to("C0RESTART")) == 3

    store = tmp_path / "deliveries.db"
    (inbound,) = rows(store, "SELECT trace_id FROM inbound_messages")
    (queued,) = rows(store, "SELECT span_id, trace_id FROM enqueues")
    attempts = rows(
        store,
        "SELECT attempt, status, error_type, failure_class, retry_after_seconds, final, "
        "trace_id, parent_span_id, span_id, writer_id FROM attempts "
        f"WHERE delivery_id = '{DELIVERY}' ORDER BY attempt",
    )
    assert [
        (a["attempt"], a["status"], a["error_type"], a["failure_class"],
         a["retry_after_seconds"], a["final"]) for a in attempts
    ] == [
        (1, "failed", "slack_sdk.errors.SlackApiError", "transient", 30.0, 0),
        (2, "interrupted", None, None, None, None),
        (3, "delivered", None, None, None, 1),
    ]
    # One trace; every attempt, in every life, a child of the span that queued it.
    assert {a["trace_id"] for a in attempts} == {inbound["trace_id"]} == {queued["trace_id"]}
    assert {a["parent_span_id"] for a in attempts} == {queued["span_id"]}
    assert len({a["writer_id"] for a in attempts}) == 3  # three processes wrote them

    # Life 3's span links to both earlier attempts, the killed one included.
    (send3,) = [s for s in life3["spans"] if s["name"] == "send slack"]
    assert send3["links"] == [attempts[0]["span_id"], attempts[1]["span_id"]]
    assert send3["attributes"]["otel_delivery.attempt"] == 3
    (send1,) = [s for s in life1["spans"] if s["name"] == "send slack"]
    assert send1["links"] == [] and send1["span_id"] == attempts[0]["span_id"]

    # The queue itself only ever appended.
    events = rows(
        tmp_path / "outbox.db",
        "SELECT event FROM delivery_events ORDER BY id",
    )
    assert [e["event"] for e in events] == [
        "started", "sending", "retry",      # life 1
        "started", "sending",               # life 2, killed
        "started", "sending", "delivered",  # life 3
    ]
    with DurableQueue(tmp_path / "outbox.db") as queue:
        assert queue.state(DELIVERY) == "delivered"
        assert queue.due(now_ms=10**15) == []


def test_a_retry_waits_for_the_services_hint_and_permanent_errors_end_the_entry(
    tmp_path: Path,
) -> None:
    class Flood(Exception):
        retry_after = 90

    class Blocked(Exception):
        pass

    def blocked_is_permanent(exc: BaseException) -> str:
        return "permanent" if isinstance(exc, Blocked) else "transient"

    with DurableQueue(tmp_path / "q.db", backoff_seconds=1, classifier=blocked_is_permanent,
                      max_attempts=3) as queue:
        queue.put("flood", channel="c", recipient="r", payload={})
        queue.put("blocked", channel="c", recipient="r", payload={})
        queue.put("flaky", channel="c", recipient="r", payload={})

        def attempt(item: Any) -> None:
            raise {"flood": Flood(), "blocked": Blocked(), "flaky": TimeoutError()}[item.id]

        t0 = 1_000_000_000_000
        assert queue.run_due(attempt, now_ms=t0) == {
            "flood": "retry", "blocked": "dead", "flaky": "retry",
        }
        # Backoff 1 s for the flaky one; the flood waits the 90 s it was told to.
        assert [i.id for i in queue.due(now_ms=t0 + 1_500)] == ["flaky"]
        assert [i.id for i in queue.due(now_ms=t0 + 90_000)] == ["flood", "flaky"]
        assert queue.run_due(attempt, now_ms=t0 + 90_000) == {"flood": "retry", "flaky": "retry"}
        assert queue.run_due(attempt, now_ms=t0 + 200_000) == {"flood": "dead", "flaky": "dead"}
        assert queue.due(now_ms=t0 + 10**9) == []
    assert oct((tmp_path / "q.db").stat().st_mode & 0o777) == "0o600"


def test_old_entries_expire_instead_of_being_sent_late(tmp_path: Path) -> None:
    with DurableQueue(tmp_path / "q.db", expire_after_seconds=3600) as queue:
        item = queue.put("late", channel="c", recipient="r", payload={})
        assert [i.id for i in queue.due(now_ms=item.queued_at_ms + 1000)] == ["late"]
        assert queue.due(now_ms=item.queued_at_ms + 3601_000) == []
        assert queue.state("late") == "dead"
