"""Measure 6's subject: one process writing ``--spans`` spans of gateway traffic.

Configured exactly as a gateway is (``otel_delivery.configure`` with a
BatchSpanProcessor and a discarding exporter), with the mirror on a given store or
off. Reports peak RSS (``VmHWM``; not ``ru_maxrss``, which keeps the parent's peak
across ``exec``), RSS at 10%, 50% and 100% of the run, and the longest store queue
seen. Run as ``python -m tests.bench.memory_child``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

import otel_delivery

from .overhead import RESOURCE, DiscardExporter
from .traffic import Gateway, messages


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--store", type=Path)
    p.add_argument("--spans", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    start_rss = _status_kb("VmRSS")
    handle = otel_delivery.configure(
        store=args.store, mirror=args.store is not None,
        tracer_provider=TracerProvider(resource=RESOURCE), span_exporter=DiscardExporter(),
    )
    writer = handle.writer
    gateway = Gateway()
    marks = {int(args.spans * f): f"{int(f * 100)}%" for f in (0.1, 0.5)}
    rss_at: dict[str, int] = {}
    max_queued = 0
    spans = 0
    t0 = time.monotonic()
    for i, m in enumerate(messages(args.spans, end_ms=time.time_ns() // 1_000_000, days=1)):
        before = spans
        spans += gateway.handle(m)
        for mark, label in marks.items():
            if before < mark <= spans:
                rss_at[label] = _status_kb("VmRSS")
        if writer is not None and i % 100 == 0:
            max_queued = max(max_queued, writer.stats().get("queued", 0))
        if spans >= args.spans:
            break
    flushed = handle.force_flush(60)
    seconds = time.monotonic() - t0
    rss_at["100%"] = _status_kb("VmRSS")
    out = {
        "spans": spans, "seconds": seconds, "flushed": flushed,
        "start_rss_kb": start_rss, "rss_kb_at": rss_at,
        "hwm_kb": _status_kb("VmHWM"),
        "max_queued": max_queued,
        "max_queue": writer.max_queue if writer is not None else None,
        "stats": handle.stats(),
    }
    handle.shutdown()
    args.out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
