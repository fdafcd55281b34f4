"""Measure 5's writer: a process making delivery attempts at a steady pace.

Each attempt is ``StoreWriter.start_attempt`` then ``end_attempt`` (what the ``@deliver``
hot path does: two journal appends, committed by the writer's indexer thread); both
call latencies are recorded with the system-wide monotonic clock, so the parent can
split them into "prune running" and "no prune" by time, with the number of rows
waiting for the background thread's commit after each attempt. Run as
``python -m tests.bench.writer_child``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from local_store import StoreWriter


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ready", type=Path, required=True)
    p.add_argument("--stop", type=Path, required=True)
    p.add_argument("--interval-seconds", type=float, default=0.005)
    args = p.parse_args()
    writer = StoreWriter(args.store, service="bench-writer")
    records: list[tuple[float, float, float, bool, int]] = []
    args.ready.write_text("ready")
    n = 0
    while not args.stop.exists():
        n += 1
        now = time.time_ns() // 1_000_000
        row = {
            "delivery_id": f"w-{n:010d}", "trace_id": f"{n:032x}", "span_id": f"{n:016x}",
            "channel": "telegram", "recipient": "4242", "started_at_ms": now,
            "max_attempts": 3,
        }
        t0 = time.monotonic()
        number = writer.start_attempt(row)
        t1 = time.monotonic()
        writer.end_attempt({**row, "attempt": number, "status": "delivered", "final": 1,
                            "ended_at_ms": now + 1, "duration_ms": 1.0})
        t2 = time.monotonic()
        records.append((t0, t1 - t0, t2 - t1, number is None, writer.stats()["queued"]))
        time.sleep(args.interval_seconds)
    stats = writer.stats()
    writer.close()
    args.out.write_text(json.dumps({"records": records, "stats": stats}))


if __name__ == "__main__":
    main()
