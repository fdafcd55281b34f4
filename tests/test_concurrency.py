"""Many writers, live readers and a prune on one store: nothing lost, nothing locked.

Four gateway processes, each with threads and asyncio tasks, write through the real
decorators while the CLI, the sqlite3 shell and sqlite-utils query the same file and
a prune deletes old rows in batches.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from local_store import StoreWriter
from tests import rawdb

PROCESSES = 4
THREADS = 4
TASKS = 8
PER_WORKER = 60  # deliveries per thread and per task
OLD_ROWS = 3000

WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, threading
    from opentelemetry.sdk.trace import TracerProvider
    import otel_delivery
    from otel_delivery import arg

    store, name, threads, tasks, per = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    otel = otel_delivery.configure(service_name=name, store=store,
                                   tracer_provider=TracerProvider())
    errors = []

    @otel_delivery.inbound(channel="telegram", inbound_id=arg("mid"))
    def handle(mid):
        return run(mid)

    @otel_delivery.ai_run(agent="bot")
    def run(mid):
        send(mid)
        return "reply"

    @otel_delivery.deliver(delivery_id=arg("mid"))
    def send(mid):
        return {"message_id": mid}

    @otel_delivery.inbound(channel="slack", inbound_id=arg("mid"))
    async def ahandle(mid):
        return await arun(mid)

    @otel_delivery.ai_run(agent="bot")
    async def arun(mid):
        await asend(mid)
        return "reply"

    @otel_delivery.deliver(delivery_id=arg("mid"))
    async def asend(mid):
        await asyncio.sleep(0)
        return {"message_id": mid}

    def thread_main(t):
        for i in range(per):
            try:
                assert handle(f"{name}-t{t}-{i}") == "reply"
            except BaseException as exc:
                errors.append(repr(exc))

    async def task_main(k):
        for i in range(per):
            try:
                assert await ahandle(f"{name}-a{k}-{i}") == "reply"
            except BaseException as exc:
                errors.append(repr(exc))

    async def all_tasks():
        await asyncio.gather(*(task_main(k) for k in range(tasks)))

    workers = [threading.Thread(target=thread_main, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    asyncio.run(all_tasks())
    for w in workers:
        w.join()
    flushed = otel.force_flush(timeout_seconds=30)
    stats = otel.stats()
    otel.shutdown()
    print(json.dumps({"errors": errors, "flushed": flushed, "stats": stats}))
    """
)


def _old_rows(store: Path) -> None:
    """Rows from 60 days ago, for the prune to delete while the gateways write."""
    writer = StoreWriter(store, service="old")
    old_ms = int((time.time() - 60 * 86400) * 1000)
    for i in range(OLD_ROWS):
        span = format(i + 1, "016x")
        writer.end_attempt({
            "delivery_id": f"old-{i}", "attempt": 1, "trace_id": format(i + 1, "032x"),
            "span_id": span, "status": "delivered", "started_at_ms": old_ms + i,
            "ended_at_ms": old_ms + i + 5, "channel": "telegram",
        })
    writer.close()


def test_processes_threads_tasks_readers_and_prune_together(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    _old_rows(store)
    cli = [sys.executable, "-m", "otel_delivery"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(store), f"p{p}", str(THREADS), str(TASKS),
             str(PER_WORKER)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for p in range(PROCESSES)
    ]
    readers: list[list[str]] = [
        [*cli, "summary", "--since", "1h", "--json", "--store", str(store)],
        [*cli, "failures", "--since", "1h", "--json", "--store", str(store)],
        [*cli, "query", "SELECT COUNT(*) FROM v_attempts", "--store", str(store)],
        [*cli, "prune", "--older-than", "30d", "--keep-failed-for", "30d", "--batch-size", "200",
         "--store", str(store)],
    ]
    if shutil.which("sqlite3"):
        readers.append(["sqlite3", str(store), "SELECT COUNT(*) FROM attempts"])
    sqlite_utils_cli = Path(sys.executable).parent / "sqlite-utils"
    if sqlite_utils_cli.exists():
        readers.append([str(sqlite_utils_cli), "query", str(store),
                        "select channel, count(*) from inbound_messages group by channel"])
    reader_runs = 0
    while any(w.poll() is None for w in workers) or reader_runs < len(readers):
        for command in readers:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, (command, done.stderr)
            assert "locked" not in done.stderr
            reader_runs += 1
    results = []
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        assert r["errors"] == []  # no exception, "database is locked" or other, reached a caller
        assert r["flushed"] is True
        assert r["stats"].get("store.queue_full", 0) == 0


    conn = rawdb.connect(store)
    per_process = (THREADS + TASKS) * PER_WORKER
    expected = PROCESSES * per_process
    new = conn.execute("SELECT COUNT(*) FROM attempts WHERE service != 'old'").fetchone()[0]
    distinct = conn.execute(
        "SELECT COUNT(DISTINCT delivery_id) FROM attempts WHERE service != 'old'"
    ).fetchone()[0]
    delivered = conn.execute(
        "SELECT COUNT(*) FROM attempts WHERE service != 'old' AND status = 'delivered'"
    ).fetchone()[0]
    inbound = conn.execute("SELECT COUNT(*) FROM inbound_messages").fetchone()[0]
    runs = conn.execute("SELECT COUNT(*) FROM ai_runs").fetchone()[0]
    old_left = conn.execute("SELECT COUNT(*) FROM attempts WHERE service = 'old'").fetchone()[0]
    conn.close()
    assert (new, distinct, delivered, inbound, runs) == (expected,) * 5
    assert old_left == 0  # the concurrent prune took every old row, and only those
    print(f"\nconcurrency: {expected} deliveries from {PROCESSES} processes, "
          f"{reader_runs} live reader runs, {OLD_ROWS} old rows pruned meanwhile")


@pytest.mark.parametrize("threads", [16])
def test_many_threads_in_one_process_share_the_hot_path(tmp_path: Path, threads: int) -> None:
    import threading

    from opentelemetry.sdk.trace import TracerProvider

    import otel_delivery
    from otel_delivery import arg

    otel = otel_delivery.configure(store=tmp_path / "d.db", tracer_provider=TracerProvider())

    @otel_delivery.deliver(delivery_id=arg("d"))
    def send(d: str) -> str:
        return d

    failures: list[str] = []

    def work(t: int) -> None:
        for i in range(50):
            if send(f"{t}-{i}") != f"{t}-{i}":
                failures.append(f"{t}-{i}")

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert otel.force_flush()
    otel.shutdown()
    assert failures == []

    conn = rawdb.connect(tmp_path / "d.db")
    rows = conn.execute("SELECT COUNT(*), COUNT(DISTINCT delivery_id) FROM attempts").fetchone()
    conn.close()
    assert rows == (threads * 50, threads * 50)
