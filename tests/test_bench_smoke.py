"""The benchmark harness (tests/bench) keeps working, and its bulk path stays honest.

Nothing here asserts a speed: the harness runs at its tiny size and must produce every
measure's keys; and the bulk path that builds the 10M-attempt stores must write exactly
the rows the real write path (decorators, SDK, span processor, StoreWriter) writes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import opentelemetry.sdk.trace as sdk_trace
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

import otel_delivery
from local_store._writer import TABLE_COLUMNS
from tests import rawdb
from tests.bench import traffic
from tests.bench.run import main

RESULT_KEYS = {"id", "measure", "a_label", "b_label", "a", "b", "unit", "ratio", "spread",
               "target", "met", "note", "extra"}
MEASURE_IDS = {
    "1-inbound-sync", "1-inbound-async", "1-ai_run-sync", "1-ai_run-async",
    "2-deliver-sync", "2-deliver-async", "3a-ingest-spans", "3b-ingest-rows",
    "4-summary-3k", "4-failures-3k", "4-trace-3k", "4-undelivered-3k", "4-health-3k",
    "5-prune", "6-rss-mirror", "6-rss-store-size", "7-size", "7-compact", "7-bytes",
    "8-classify-1MB",
    "8-classify-50MB", "9-receipt",
}


@pytest.mark.slow
def test_the_harness_runs_every_measure_and_writes_its_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.json"
    profiles = tmp_path / "profiles"
    assert main(["--size", "tiny", "--out", str(out), "--work", str(tmp_path / "work"),
                 "--profile-dir", str(profiles)]) == 0

    doc = json.loads(out.read_text())
    assert {r["id"] for r in doc["results"]} == MEASURE_IDS
    for r in doc["results"]:
        assert set(r) == RESULT_KEYS, r["id"]
        assert isinstance(r["a"], float), r["id"]
        assert r["met"] in (True, False, None), r["id"]
    assert {"nproc", "cpu", "python", "sqlite"} <= set(doc["machine"])
    assert out.with_suffix(".md").read_text().startswith("| measure |")
    assert {p.name for p in profiles.iterdir()} >= {
        "profile-inbound.txt", "profile-ai_run.txt", "profile-deliver.txt",
        "profile-queries-3k.txt",
    }
    table = capsys.readouterr().out
    assert all(r["measure"] in table for r in doc["results"])


def _rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = rawdb.connect(path)
    try:
        return {
            table: sorted(
                conn.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall(), key=repr
            )
            for table, cols in TABLE_COLUMNS.items()
        }
    finally:
        conn.close()


def test_the_bulk_path_writes_the_rows_the_real_write_path_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In the past (2023): the write path sets a time in the future back to now.
    msgs = list(traffic.messages(3_000, end_ms=1_700_000_000_000, seed=11))
    # Every branch of the traffic model is exercised, so none can drift unnoticed.
    assert Counter(m.run_outcome for m in msgs).keys() == {"reply", "no_reply", "failed"}
    assert any(m.enqueue_failed for m in msgs)
    assert {a.outcome for m in msgs for a in m.attempts} == {
        "delivered", "transient", "permanent", "interrupted"
    }
    assert any(len(m.attempts) == traffic.MAX_ATTEMPTS for m in msgs)

    clock, ids = traffic.FakeClock(), traffic.ScriptedIds()
    monkeypatch.setattr(sdk_trace, "time_ns", clock)
    provider = TracerProvider(
        resource=Resource.create({"service.name": traffic.SERVICE}), id_generator=ids
    )
    handle = otel_delivery.configure(store=tmp_path / "real.db", tracer_provider=provider)
    try:
        gateway = traffic.Gateway(clock)
        for m in msgs:
            ids.load(m)
            gateway.handle(m)
        assert handle.force_flush()
        assert handle.stats().get("store.queued") == 0
    finally:
        handle.shutdown()

    with traffic.BulkWriter(tmp_path / "bulk.db") as bulk:
        counts = bulk.write(msgs)
    assert counts["attempts"] == sum(len(m.attempts) for m in msgs)

    real, bulk_rows = _rows(tmp_path / "real.db"), _rows(tmp_path / "bulk.db")
    for table in TABLE_COLUMNS:
        assert real[table] == bulk_rows[table], table
