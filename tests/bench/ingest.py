"""Measure 3: sustained ingest into the store, against raw ``executemany``.

Two views of the same question, each alternated round by round with the baseline:

* **3a spans**: a gateway's traffic (inbound, AI run, enqueue, attempts) through the
  decorators, the SDK and the store processor, until the store has it all
  (``force_flush``); spans per second.
* **3b rows**: the same rows handed straight to ``local_store.StoreWriter``
  (``submit`` for inbound, runs and enqueues; ``start_attempt``/``end_attempt`` for
  attempts, as the processor does), then ``flush``; rows per second.

Two ceilings are measured in the same rounds and reported in the notes, so a miss can
be told apart from a bound: for 3a, the OpenTelemetry SDK alone making the same number
of spans (a plain tracer, ten attributes each, a ``BatchSpanProcessor`` with a
discarding exporter, no store); for 3b, the same rows all through the queue without
the journal (no attempt numbers, no appends), which is what the journal costs.
3b's rounds also time the raw rows into a store without the verdict triggers (the
queue of traces whose undelivered verdict must be judged again), which every writer
pays, the raw baseline included.

The baseline writes the same rows (``traffic.rows_of``, checked identical to the real
path's by the smoke test) with ``sqlite3.executemany`` in 1000-row transactions, into
a store created by ``open_store`` (same schema, WAL, ``synchronous=NORMAL``). Each
variant keeps writing into its own file from round to round, so the stores grow as a
gateway's does.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import otel_delivery
from local_store import StoreWriter, open_store
from local_store._pending import VERDICT_TRIGGERS
from local_store._schema import connect
from local_store._writer import TABLE_COLUMNS

from .overhead import RESOURCE, DiscardExporter
from .timing import Result, Rounds, alternate, ratio_stats
from .traffic import SERVICE, Gateway, Message, messages, rows_of

__all__ = ["run_ingest"]

_BATCH = 1_000
_INSERT = {
    table: f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    for table, cols in TABLE_COLUMNS.items()
}


def _row_batches(msgs: list[Message]) -> tuple[list[tuple[str, list[tuple[Any, ...]]]], int]:
    """The messages' rows as (table, rows) transactions of at most 1000 rows; and count."""
    by_table: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TABLE_COLUMNS}
    for m in msgs:
        for table, rows in rows_of(m, service=SERVICE, writer_id=1).items():
            cols = TABLE_COLUMNS[table]
            by_table[table].extend(tuple(map(row.get, cols)) for row in rows)
    out = []
    for table, rows in by_table.items():
        for i in range(0, len(rows), _BATCH):
            out.append((table, rows[i:i + _BATCH]))
    return out, sum(len(r) for r in by_table.values())


def _raw_sample(path: Path, make: Any, *, without_triggers: tuple[str, ...] = ()) -> Any:
    db = open_store(path, create=True)
    for name in without_triggers:
        db.execute(f"DROP TRIGGER {name}")
    db.close()
    conn = connect(path)

    def sample() -> float:
        batches, n = _row_batches(make())
        t0 = time.perf_counter()
        for table, rows in batches:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT[table], rows)
            conn.execute("COMMIT")
        return (time.perf_counter() - t0) / n

    return sample, conn


def _losses(stats: dict[str, int], prefix: str) -> str:
    """Rows the store did not take as asked: a rate that dropped rows is not a rate."""
    dropped = stats.get(f"{prefix}queue_full", 0)
    paced = stats.get(f"{prefix}paced", 0)
    if not dropped:
        return f"no rows dropped; {paced:,} calls paced (waited for the indexer)"
    return f"CAUTION: {dropped:,} rows dropped (queue full), {paced:,} calls paced"


def run_ingest(
    *, messages_per_sample: int, rounds: int, warmup: int, workdir: Path
) -> tuple[list[Result], dict[str, Any]]:
    seeds = itertools.count(100)
    now_ms = time.time_ns() // 1_000_000

    def make() -> list[Message]:
        return list(messages(messages_per_sample, end_ms=now_ms, days=1, seed=next(seeds)))

    # 3a: spans through the decorators into the store.
    provider = TracerProvider(resource=RESOURCE)
    handle = otel_delivery.configure(store=workdir / "ingest-spans.db", tracer_provider=provider)
    gateway = Gateway()

    def spans_sample() -> float:
        msgs = make()
        t0 = time.perf_counter()
        spans = sum(gateway.handle(m) for m in msgs)
        if not handle.force_flush(60):
            raise RuntimeError(f"store did not take the spans: {handle.stats()}")
        return (time.perf_counter() - t0) / spans

    # The ceiling: the SDK alone, as many spans as the same messages make.
    sdk_provider = TracerProvider(resource=RESOURCE)
    sdk_provider.add_span_processor(BatchSpanProcessor(DiscardExporter()))
    sdk_tracer = sdk_provider.get_tracer("bench-sdk-only")
    attributes = {f"bench.attribute.{i}": f"value {i}" for i in range(10)}

    def sdk_sample() -> float:
        spans = sum(3 + len(m.attempts) for m in make())  # as Gateway.handle makes
        t0 = time.perf_counter()
        for _ in range(spans):
            sdk_tracer.start_span("bench", attributes=attributes).end()
        sdk_provider.force_flush()
        return (time.perf_counter() - t0) / spans

    raw_a, raw_a_conn = _raw_sample(workdir / "ingest-raw-a.db", make)
    results: list[Result] = []
    extra: dict[str, Any] = {}
    try:
        r = alternate({"ours": spans_sample, "raw": raw_a, "sdk": sdk_sample},
                      rounds=rounds, warmup=warmup)
        extra["spans_stats"] = handle.stats()
    finally:
        handle.shutdown()
        sdk_provider.shutdown()
        raw_a_conn.close()
    results.append(_throughput(
        r, "sdk", id="3a-ingest-spans",
        measure="#3a sustained ingest: spans via decorators → store", a_label="ours (spans/s)",
        note="one span = one row; includes span creation in the decorators; "
        "ceiling: the SDK alone (no store) makes {ceiling_rate:,.0f} spans/s, "
        "{ceiling_ratio:.2f}× raw; " + _losses(extra["spans_stats"], "store."),
    ))

    # 3b: the same rows through StoreWriter's own API.
    writer = StoreWriter(workdir / "ingest-writer.db", service=SERVICE)

    def writer_sample() -> float:
        msgs = make()
        per_message = [rows_of(m, service=SERVICE, writer_id=None) for m in msgs]
        n = sum(len(rows) for rows_by in per_message for rows in rows_by.values())
        t0 = time.perf_counter()
        for rows_by in per_message:
            for table in ("inbound_messages", "ai_runs", "enqueues"):
                for row in rows_by[table]:
                    writer.submit(table, row)
            for row in rows_by["attempts"]:
                writer.start_attempt({**row, "status": "started", "ended_at_ms": None,
                                      "error_type": None, "error_text": None,
                                      "failure_class": None, "final": None,
                                      "duration_ms": None, "provider_message_id": None})
                writer.end_attempt(row)
        if not writer.flush(60):
            raise RuntimeError(f"writer did not flush: {writer.stats()}")
        return (time.perf_counter() - t0) / n

    # The same rows queued without the journal (each attempt as one outcome row): what
    # the indexer alone can take.
    batched = StoreWriter(workdir / "ingest-batched.db", service=SERVICE)
    batched._parts.journal.append = lambda kind, row: None  # type: ignore[method-assign]

    def batched_sample() -> float:
        msgs = make()
        rows = [(table, row) for m in msgs
                for table, table_rows in rows_of(m, service=SERVICE, writer_id=None).items()
                for row in table_rows]
        t0 = time.perf_counter()
        for table, row in rows:
            if table == "attempts":
                batched.end_attempt(row)
            else:
                batched.submit(table, row)
        if not batched.flush(60):
            raise RuntimeError(f"writer did not flush: {batched.stats()}")
        return (time.perf_counter() - t0) / len(rows)

    raw_b, raw_b_conn = _raw_sample(workdir / "ingest-raw-b.db", make)
    # What the verdict triggers (undelivered's verdict queue) cost every writer, raw included.
    raw_c, raw_c_conn = _raw_sample(workdir / "ingest-raw-c.db", make,
                                    without_triggers=VERDICT_TRIGGERS)
    try:
        r = alternate({"ours": writer_sample, "raw": raw_b, "batched": batched_sample,
                       "raw_no_verdicts": raw_c}, rounds=rounds, warmup=warmup)
        extra["writer_stats"] = writer.stats()
        extra["batched_stats"] = batched.stats()
    finally:
        writer.close()
        batched.close()
        raw_b_conn.close()
        raw_c_conn.close()
    verdicts_cost, _ = ratio_stats(r.ratios("raw", "raw_no_verdicts"))
    results.append(_throughput(
        r, "batched", id="3b-ingest-rows", measure="#3b sustained ingest: rows via StoreWriter",
        a_label="ours (rows/s)",
        note="attempts take start_attempt + end_attempt (two journal appends each, committed "
        "in the background), as the processor; all rows queued without the journal: "
        "{ceiling_rate:,.0f} rows/s, "
        "{ceiling_ratio:.2f}× raw; the raw rows take "
        f"{verdicts_cost:.2f}× as long with the verdict triggers as without; "
        + _losses(extra["writer_stats"], ""),
    ))
    return results, extra


def _throughput(
    r: Rounds, ceiling: str, *, id: str, measure: str, a_label: str, note: str
) -> Result:
    """The ingest result: throughput ratio (raw time per row over ours), with the
    ``ceiling`` variant's rate and ratio filled into ``note``."""
    med, spread = ratio_stats(r.ratios("raw", "ours"))
    ceiling_ratio, _ = ratio_stats(r.ratios("raw", ceiling))
    return Result(
        id=id, measure=measure, a_label=a_label, b_label="raw executemany (rows/s)",
        a=1 / r.median("ours"), b=1 / r.median("raw"), unit="per s", ratio=med, spread=spread,
        target="≥ 0.7×", met=med >= 0.7,
        note=note.format(ceiling_rate=1 / r.median(ceiling), ceiling_ratio=ceiling_ratio),
    )
