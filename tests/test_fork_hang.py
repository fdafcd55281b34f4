"""Issue 15: a plain ``os.fork()`` child, forked while the parent's threads send, must
not hang in its first send (it inherited no lock held by a thread that is gone)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from local_store import StoreWriter, open_store
from tests import rawdb

FORKS = 200
CHILD_TIMEOUT_SECONDS = 15.0


def row(prefix: str, n: int) -> dict[str, Any]:
    return {
        "delivery_id": f"{prefix}-{n % 50}", "trace_id": f"{n:032x}",
        "span_id": f"{prefix}-{n:016x}", "channel": "telegram", "started_at_ms": 1_000 + n,
    }


def _child(w: StoreWriter, i: int) -> None:
    """Send once (numbering it reads the store: a new connection), then half the
    children commit through their own background thread and close; the others exit
    at once, leaving their rows in their journal for the parent to replay."""
    try:
        r = row(f"child{i}", i)
        ok = w.start_attempt(r) is not None
        w.end_attempt({**r, "status": "delivered", "ended_at_ms": 2_000})
        if i % 2:
            ok = w.flush(CHILD_TIMEOUT_SECONDS) and ok
            w.close()
        os._exit(0 if ok else 3)
    except BaseException:
        os._exit(4)


def _wait(pid: int) -> int | None:
    """The child's exit status, or None if it had not exited by the deadline."""
    deadline = time.monotonic() + CHILD_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads, on purpose
def test_children_forked_while_threads_send_never_hang(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "d.db")
    stop = threading.Event()
    sent = [0]

    def sender(k: int) -> None:
        n = 0
        while not stop.is_set():
            r = row(f"parent{k}", n)
            w.start_attempt(r)
            w.end_attempt({**r, "status": "delivered", "ended_at_ms": 2_000})
            n += 1
            sent[0] += 1

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    hangs, failures = 0, []
    try:
        for i in range(FORKS):
            pid = os.fork()
            if pid == 0:
                _child(w, i)
            status = _wait(pid)
            if status is None:
                hangs += 1
            elif status != 0:
                failures.append((i, status))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        flushed = w.flush(60)
        stats = w.stats()
        assert w.close() and flushed, stats
    assert sent[0] > FORKS  # the parent really was sending throughout
    assert hangs == 0, f"{hangs} of {FORKS} children hung"
    assert failures == []
    open_store(w.path).close()  # replays the journals the children left
    with rawdb.connect(w.path) as conn:
        (children,) = conn.execute(
            "SELECT COUNT(*) FROM attempts WHERE span_id LIKE 'child%' AND status = 'delivered'"
        ).fetchone()
    assert children == FORKS
