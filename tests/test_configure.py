"""configure(): store resolution, OTEL_* variables, joining a provider, exit flush."""

from __future__ import annotations

import http.server
import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import otel_delivery
from otel_delivery import ConfigError, resolve_store_path
from tests import rawdb

from .conftest import make_traced


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=full_env, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def count(store: Path, table: str) -> int:
    conn = rawdb.connect(store)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def test_store_path_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert resolve_store_path() == tmp_path / "xdg" / "otel-delivery" / "deliveries.db"
    monkeypatch.setenv("OTEL_DELIVERY_STORE", str(tmp_path / "env.db"))
    assert resolve_store_path() == tmp_path / "env.db"
    assert resolve_store_path(tmp_path / "arg.db") == tmp_path / "arg.db"
    monkeypatch.delenv("OTEL_DELIVERY_STORE")
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_store_path() == (
        tmp_path / "home" / ".local" / "state" / "otel-delivery" / "deliveries.db"
    )


def test_default_store_is_created_private(tmp_path: Path) -> None:
    t = make_traced(None)  # type: ignore[arg-type]
    try:
        assert t.handle.store_path == tmp_path / "xdg-state" / "otel-delivery" / "deliveries.db"
        for path in t.handle.store_path.parent.glob("deliveries.db*"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        t.handle.shutdown()


def test_configure_twice_replaces_the_first(tmp_path: Path) -> None:
    first = make_traced(tmp_path / "a.db")
    second = make_traced(tmp_path / "b.db")
    try:
        @otel_delivery.deliver(channel="x")
        def send() -> None: ...

        send()
        second.flush()
        assert count(tmp_path / "b.db", "attempts") == 1
        assert count(tmp_path / "a.db", "attempts") == 0
        first.handle.shutdown()  # an old handle's shutdown must not undo the new one
        send()
        second.flush()
        assert count(tmp_path / "b.db", "attempts") == 2
    finally:
        second.handle.shutdown()


def test_bad_arguments_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="error_text_limit"):
        otel_delivery.configure(store=tmp_path / "d.db", error_text_limit=0)
    with pytest.raises(ConfigError, match="pseudonymize_key"):
        otel_delivery.configure(store=tmp_path / "d.db", pseudonymize_key="short")
    with pytest.raises(ConfigError, match="OTLP protocol"):
        otel_delivery.configure(
            store=tmp_path / "d.db", tracer_provider=TracerProvider(),
            otlp_endpoint="http://127.0.0.1:9", otlp_protocol="carrier-pigeon",
        )


def test_sdk_disabled_turns_everything_off(tmp_path: Path) -> None:
    out = run_python(
        f"""
        import otel_delivery
        otel = otel_delivery.configure(store={str(tmp_path / 'd.db')!r})
        @otel_delivery.deliver(channel="x")
        def send(n): return n + 1
        print(send(1), otel.enabled)
        otel.shutdown()
        """,
        env={"OTEL_SDK_DISABLED": "true"},
    )
    assert out.split() == ["2", "False"]
    assert not (tmp_path / "d.db").exists()


def test_joins_an_existing_global_provider_and_flushes_at_exit(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    out = run_python(
        f"""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import otel_delivery

        mine = TracerProvider()
        exporter = InMemorySpanExporter()
        mine.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(mine)

        otel = otel_delivery.configure(service_name="ignored", store={str(store)!r})
        assert otel.tracer_provider is mine

        @otel_delivery.ai_run(agent="a")
        def run():
            return "reply"

        run()
        print(len(exporter.get_finished_spans()))
        # No shutdown(): the batched ai_run row must still reach the store at exit.
        """,
    )
    assert out.strip() == "1"
    assert count(store, "ai_runs") == 1


def test_service_name_from_env(tmp_path: Path) -> None:
    store = tmp_path / "d.db"
    run_python(
        f"""
        import otel_delivery
        otel = otel_delivery.configure(store={str(store)!r})
        @otel_delivery.deliver(channel="x")
        def send(): pass
        send()
        otel.shutdown()
        """,
        env={"OTEL_SERVICE_NAME": "gw-from-env"},
    )
    conn = rawdb.connect(store)
    assert conn.execute("SELECT service FROM attempts").fetchone()[0] == "gw-from-env"
    conn.close()


class _OtlpSink(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        type(self).received.append(request)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def otlp_sink() -> Iterator[tuple[str, list[ExportTraceServiceRequest]]]:
    _OtlpSink.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _OtlpSink.received
    server.shutdown()
    server.server_close()


def test_otlp_http_export_over_loopback(
    tmp_path: Path, otlp_sink: tuple[str, list[ExportTraceServiceRequest]]
) -> None:
    endpoint, received = otlp_sink
    otel = otel_delivery.configure(
        service_name="gw", store=tmp_path / "d.db", tracer_provider=TracerProvider(),
        otlp_endpoint=endpoint,
    )
    try:
        @otel_delivery.deliver(channel="telegram", delivery_id="d-9")
        def send() -> None:
            raise TimeoutError("timed out")

        with pytest.raises(TimeoutError):
            send()
        assert otel.force_flush()
    finally:
        otel.shutdown()
    spans = [
        span
        for request in received
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    (span,) = spans
    attributes = {kv.key: kv.value for kv in span.attributes}
    assert span.name == "send telegram"
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert attributes["error.type"].string_value == "TimeoutError"
    assert attributes["otel_delivery.delivery_id"].string_value == "d-9"
    assert count(tmp_path / "d.db", "attempts") == 1


def test_a_hanging_collector_cannot_hold_flush_or_shutdown(
    tmp_path: Path, hanging_endpoint: str
) -> None:
    import time

    otel = otel_delivery.configure(
        store=tmp_path / "d.db", tracer_provider=TracerProvider(), otlp_endpoint=hanging_endpoint
    )

    @otel_delivery.deliver(channel="telegram")
    def send(n: int) -> int:
        return n

    assert [send(i) for i in range(20)] == list(range(20))
    started = time.monotonic()
    assert otel.force_flush(timeout_seconds=1.0) is False  # the exporter could not finish
    flush_seconds = time.monotonic() - started
    started = time.monotonic()
    otel.shutdown()
    shutdown_seconds = time.monotonic() - started
    assert flush_seconds < 1.5
    assert shutdown_seconds < 2.5
    assert count(tmp_path / "d.db", "attempts") == 20  # the local store is complete


class _GatedExporter(SpanExporter):
    """An exporter that holds every export until ``gate`` opens: a stuck collector."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait(30)
        with self.lock:
            self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.gate.set()


def _stuck_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[otel_delivery.Instrumentation, _GatedExporter, Callable[[int], int]]:
    """configure() with a 40-span export queue, batches of 8, a stuck exporter, and a
    decorated send."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "40")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8")
    exporter = _GatedExporter()
    otel = otel_delivery.configure(
        store=tmp_path / "d.db", tracer_provider=TracerProvider(), span_exporter=exporter
    )

    @otel_delivery.deliver(channel="telegram")
    def send(n: int) -> int:
        return n

    return otel, exporter, send


def test_a_full_export_queue_is_counted_not_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    otel, exporter, send = _stuck_export(tmp_path, monkeypatch)

    assert [send(i) for i in range(300)] == list(range(300))  # the caller never waits
    dropped = otel.stats().get("otlp_queue_full", 0)
    # At most the queue (40) and the batch the stuck export holds (8) are kept.
    assert dropped >= 300 - 40 - 8
    exporter.gate.set()
    assert otel.force_flush(timeout_seconds=10)
    assert exporter.exported + dropped == 300  # every span exported or counted
    otel.shutdown()
    conn = rawdb.connect(tmp_path / "d.db")
    try:
        rows = conn.execute("SELECT count FROM drops WHERE reason = 'otlp_queue_full'").fetchall()
    finally:
        conn.close()
    assert rows == [(dropped,)]
    assert count(tmp_path / "d.db", "attempts") == 300  # the local store has them all


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_with_an_empty_export_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    otel, exporter, send = _stuck_export(tmp_path, monkeypatch)

    for i in range(100):
        send(i)
    dropped = otel.stats()["otlp_queue_full"]
    assert dropped > 0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the SDK emptied its queue, so 30 sends fit
        try:
            for i in range(30):
                send(i)
            os.write(write, str(otel.stats()["otlp_queue_full"]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as r:
        child_dropped = int(r.read() or -1)
    os.waitpid(pid, 0)
    assert child_dropped == dropped  # the child counted no new drop
    exporter.gate.set()
    otel.shutdown()
