"""Shared fixtures: a real SDK provider with an in-memory exporter, and a real store file."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_delivery
from tests import rawdb

_OTEL_ENV = (
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_DELIVERY_STORE",
    "OTEL_DELIVERY_PSEUDONYM_KEY",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _OTEL_ENV:
        monkeypatch.delenv(name, raising=False)
    # Never let a test touch the developer's real default store.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


@dataclass
class Traced:
    handle: otel_delivery.Instrumentation
    exporter: InMemorySpanExporter
    store: Path

    def flush(self) -> None:
        assert self.handle.force_flush()

    def spans(self, kind: str | None = None) -> list[ReadableSpan]:
        self.flush()
        spans = list(self.exporter.get_finished_spans())
        if kind is not None:
            spans = [s for s in spans if (s.attributes or {}).get("otel_delivery.kind") == kind]
        return spans

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        self.flush()
        conn = rawdb.connect(self.store)
        conn.row_factory = rawdb.Row
        try:
            return [dict(r) for r in conn.execute(sql, params)]
        finally:
            conn.close()


def make_traced(store: Path, **kwargs: Any) -> Traced:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handle = otel_delivery.configure(store=store, tracer_provider=provider, **kwargs)
    return Traced(handle, exporter, store)


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[Traced]:
    t = make_traced(tmp_path / "deliveries.db")
    yield t
    t.handle.shutdown()


def span_dict(span: ReadableSpan) -> dict[str, Any]:
    """A span as plain data, for readable assertions."""
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "links": [format(link.context.span_id, "016x") for link in span.links],
    }


@pytest.fixture
def hanging_endpoint() -> Iterator[str]:
    """Accepts TCP connections and never answers: a collector stuck mid-request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.fixture
def next_migration(monkeypatch: pytest.MonkeyPatch) -> str:
    """Makes this build's schema one migration newer than the baseline (an index on
    ``receipts.recorded_at_ms``), so a store created before the fixture ran, or with
    ``next_migration`` undone, is an older store that a writer must upgrade. Returns
    the new migration's name."""
    from sqlite_utils.migrations import Migrations

    from local_store import _migrations, _schema

    name = "m003_receipts_recorded"
    newer = Migrations(_migrations.MIGRATION_SET)
    newer._migrations = list(_migrations.migrations._migrations)

    @newer(name=name)
    def _add_index(db: Any) -> None:
        db.execute("CREATE INDEX idx_receipts_recorded ON receipts (recorded_at_ms)")

    known = (*_migrations.KNOWN_MIGRATIONS, name)
    monkeypatch.setattr(_schema, "migrations", newer)
    monkeypatch.setattr(_schema, "KNOWN_MIGRATIONS", known)
    monkeypatch.setattr(_schema, "SCHEMA_VERSION", len(known))
    return name
