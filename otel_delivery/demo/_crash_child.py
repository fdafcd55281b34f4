"""The process that dies: run by :func:`otel_delivery.demo._crash.kill_mid_send`.

``python -m otel_delivery.demo._crash_child STORE QUEUE_FILE DELIVERY_ID MARKER``
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import otel_delivery
from local_store._ids import pack

from ._crash import COMMITTED
from .channels import SentMessage
from .delivery_queue import DeliveryQueue, SimClock
from .gateway import SERVICE_NAME, ChannelSender


class _SendThatHangs:
    """A platform that never answers; the marker tells the parent the send has begun."""

    def __init__(self, store: Path, marker: Path) -> None:
        self.store = store
        self.marker = marker

    async def send_message(self, recipient: str, text: str, *, client_ref: str) -> SentMessage:
        # Say whether the attempt row really is on disk, in the store or in this
        # process's journal, so the parent knows what the kill will leave behind
        # rather than assuming it.
        conn = sqlite3.connect(self.store)
        try:
            row = conn.execute(
                "SELECT 1 FROM attempts WHERE delivery_id = ? AND status = 'started'",
                (pack(client_ref),),  # as the store keeps ids
            ).fetchone()
        finally:
            conn.close()
        journaled = any(
            json.dumps(client_ref) in path.read_text(encoding="utf-8")
            for path in self.store.parent.glob(f"{self.store.name}-journal-{os.getpid()}-*")
        )
        tmp = self.marker.with_name(self.marker.name + ".tmp")
        tmp.write_text(COMMITTED if row or journaled else "missing", encoding="utf-8")
        os.replace(tmp, self.marker)
        await asyncio.sleep(3600)
        raise TimeoutError("unreachable: the parent kills this process first")


def main(argv: list[str]) -> None:
    store, queue_file, delivery_id, marker = argv
    otel_delivery.configure(service_name=SERVICE_NAME, store=store)
    queue = DeliveryQueue(Path(queue_file), SimClock(time.time()))
    entry = next(e for e in queue.pending() if e["id"] == delivery_id)
    sender = ChannelSender(entry["channel"], _SendThatHangs(Path(store), Path(marker)))
    asyncio.run(sender.send_once(entry))


if __name__ == "__main__":
    main(sys.argv[1:])
