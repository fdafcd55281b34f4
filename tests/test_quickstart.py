"""The README's "Ten lines" quickstart is the truth: run as written, it records right.

``tests/snippets/quickstart.py`` is the README's first Python block, byte for byte
(checked here). A gateway process imports it as its own module, with the parts it
names (``my_gateway``: the reply type, the agent, the channel API, the outbox) made
up of plain Python, and a sender task that retries from the outbox three times,
as real gateways do outside the per-attempt function. No ids are passed anywhere.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from local_store import open_store, trace_story

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = ROOT / "tests" / "snippets" / "quickstart.py"

_GATEWAY = textwrap.dedent(
    """
    import asyncio, sys, types
    from dataclasses import dataclass, field

    gateway = types.ModuleType("my_gateway")

    @dataclass
    class Message:
        id: str
        chat_id: int
        text: str
        meta: dict = field(default_factory=dict)

    @dataclass
    class Reply:
        chat_id: int
        text: str = ""
        meta: dict = field(default_factory=dict)

    class Agent:
        async def answer(self, text):
            return f"echo {text}"

    class Api:
        failures_left = {1: 2, 2: 99}  # chat 1 fails twice, then works; chat 2 never

        async def send_message(self, chat_id, text):
            if self.failures_left[chat_id] > 0:
                self.failures_left[chat_id] -= 1
                raise ConnectionError("connection reset by peer")
            return {"message_id": 1000 + chat_id}

    gateway.Reply, gateway.agent, gateway.api = Reply, Agent(), Api()
    gateway.outbox = asyncio.Queue()
    sys.modules["my_gateway"] = gateway
    sys.path.insert(0, sys.argv[1])
    import quickstart

    async def sender():  # the retry helper: outside the decorated function, on its task
        while True:
            reply = await gateway.outbox.get()
            for _ in range(3):
                try:
                    await quickstart.send_once(reply)
                    break
                except ConnectionError:
                    await asyncio.sleep(0.01)
            gateway.outbox.task_done()

    async def main():
        task = asyncio.create_task(sender())
        for msg in (Message("q-1", 1, "hello"), Message("q-2", 2, "hi")):
            await quickstart.on_message(msg)
        await gateway.outbox.join()
        task.cancel()

    asyncio.run(main())
    """
)


def test_the_readme_quickstart_is_the_snippet_file() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Ten lines in your gateway", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    assert block.group(1) == SNIPPET.read_text()


def test_the_quickstart_as_written_records_one_delivery_per_reply(tmp_path: Path) -> None:
    store = tmp_path / "deliveries.db"
    done = subprocess.run(
        [sys.executable, "-c", _GATEWAY, str(SNIPPET.parent)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "OTEL_DELIVERY_STORE": str(store),
             "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    db = open_store(store)
    try:
        rows = [dict(r) for r in db.query(
            "SELECT a.inbound_id, a.delivery_id, a.attempt, a.status, a.trace_id, "
            "a.parent_span_id = r.span_id AS under_run FROM attempts a "
            "JOIN ai_runs r ON r.trace_id = a.trace_id ORDER BY a.id"
        )]
        by_inbound: dict[str, list[dict[str, object]]] = {}
        for r in rows:
            by_inbound.setdefault(str(r["inbound_id"]), []).append(r)
        assert {k: [(r["attempt"], r["status"]) for r in v] for k, v in by_inbound.items()} == {
            "q-1": [(1, "failed"), (2, "failed"), (3, "delivered")],
            "q-2": [(1, "failed"), (2, "failed"), (3, "failed")],
        }
        for attempts in by_inbound.values():
            assert len({r["delivery_id"] for r in attempts}) == 1  # one delivery per reply
            assert all(r["under_run"] == 1 for r in attempts)  # sends are the run's children
        assert trace_story(db, inbound_id="q-1").verdict == "delivered on attempt 3"
        later = time.time_ns() // 1_000_000 + 11 * 60_000
        (gave_up,) = trace_story(db, inbound_id="q-2", now_ms=later).deliveries
        assert (gave_up.outcome, gave_up.attempts) == ("abandoned", 3)
    finally:
        db.close()
