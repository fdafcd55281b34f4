"""Privacy (no bodies, pseudonymised ids, private files) and forked workers."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import otel_delivery
from otel_delivery import arg
from tests import rawdb

from .conftest import make_traced

BODY = "PLANTED-BODY: please wire 5000 to account 12-3456-7890 before friday"
SENDER = "sender-4242424242"
RECIPIENT = "recipient-777000777"


def test_planted_bodies_and_ids_never_reach_the_store_but_pseudonyms_still_join(
    tmp_path: Path,
) -> None:
    store = tmp_path / "state" / "d.db"
    t = make_traced(store, pseudonymize_key="an operator secret of some length")
    try:
        @otel_delivery.inbound(channel="telegram", inbound_id=arg("msg.id"),
                               sender=arg("msg.sender"), body=arg("msg.text"))
        def handle(msg: dict[str, Any]) -> None:
            reply = run(msg)
            for _ in range(2):
                try:
                    send(RECIPIENT, reply)
                except RuntimeError:
                    pass

        @otel_delivery.ai_run(agent="bot", body=arg("msg.text"))
        def run(msg: dict[str, Any]) -> str:
            return f"echo: {msg['text']}"

        @otel_delivery.deliver(recipient=arg("to"), body=arg("text"), delivery_id="dl-1")
        def send(to: str, text: str) -> None:
            raise RuntimeError(f"Bad Request: can't deliver {text!r} to {to}")

        handle({"id": "in-1", "sender": SENDER, "text": BODY})
        rows = t.rows(
            "SELECT i.sender, a.recipient, a.error_text FROM inbound_messages i "
            "JOIN attempts a ON a.trace_id = i.trace_id WHERE i.inbound_id = 'in-1'"
        )
        assert len(rows) == 2
        assert rows[0]["sender"].startswith("p:") and rows[0]["recipient"].startswith("p:")
        assert "[message body]" in rows[0]["error_text"]
        for row in rows:
            assert row["recipient"] in row["error_text"]
        t.handle.shutdown()
        for path in store.parent.iterdir():
            data = path.read_bytes()
            for planted in (BODY[:20], "12-3456-7890", SENDER, RECIPIENT, "4242424242"):
                assert planted.encode() not in data, (path.name, planted)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        t.handle.shutdown()


def _child_work(store: str, n: int) -> None:
    @otel_delivery.inbound(channel="signal", inbound_id=arg("i"))
    def handle(i: str) -> None:
        send(i)

    @otel_delivery.deliver(delivery_id=arg("i"))
    def send(i: str) -> None:
        return None

    for i in range(n):
        handle(f"{os.getpid()}-{i}")
    # No flush and no shutdown here: multiprocessing ends a forked child with
    # os._exit(), and the instrumentation must still get its batched rows out.


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_forked_workers_write_their_own_rows(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    t = make_traced(store)
    try:
        @otel_delivery.deliver(delivery_id="parent-before")
        def parent_send() -> None:
            return None

        parent_send()  # the parent has open connections before it forks
        ctx = multiprocessing.get_context("fork")
        children = [ctx.Process(target=_child_work, args=(str(store), 30)) for _ in range(3)]
        for c in children:
            c.start()
        for c in children:
            c.join(timeout=60)
            assert c.exitcode == 0
        parent_send()  # and keeps using them after
        t.flush()
        conn = rawdb.connect(store)
        by_child = conn.execute(
            "SELECT COUNT(*) FROM inbound_messages GROUP BY substr(inbound_id, 1, "
            "instr(inbound_id, '-') - 1)"
        ).fetchall()
        attempts = conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
        writers = conn.execute("SELECT COUNT(DISTINCT pid) FROM writers").fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
        assert sorted(n for (n,) in by_child) == [30, 30, 30]
        assert attempts == 3 * 30 + 2
        assert writers == 4  # each child registered itself, none reused the parent's row
        assert integrity == "ok"
    finally:
        t.handle.shutdown()
