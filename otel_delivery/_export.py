"""Export over OTLP without hurting the gateway: the exporter chosen from the
settings, and the SDK's batch processor with every span it cannot take counted.

Spans that find the batch queue full are counted as ``otlp_queue_full`` and spans an
export fails to deliver as ``otlp_export_failed`` (in ``stats()`` and the store's
``drops`` table); the SDK alone would drop the first with only a log line.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ._state import Counters
from .exceptions import ConfigError

__all__ = ["CountedBatch", "otlp_exporter"]


class _CountingExporter(SpanExporter):
    """Counts the spans an exporter failed to deliver (``otlp_export_failed``); tells
    ``taken`` how many spans each export takes off the batch processor's queue."""

    def __init__(
        self, inner: SpanExporter, counters: Counters,
        taken: Callable[[int], None] | None = None,
    ) -> None:
        self.inner = inner
        self.counters = counters
        self.taken = taken

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.taken is not None:
            self.taken(len(spans))
        try:
            result = self.inner.export(spans)
        except Exception as exc:
            self.counters.add("otlp_export_failed", len(spans), repr(exc)[:200])
            return SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.counters.add("otlp_export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


_DEFAULT_EXPORT_QUEUE = 2048  # the SDK's OTEL_BSP_MAX_QUEUE_SIZE default


def _export_queue_size() -> int:
    """The batch processor's queue bound as the SDK resolves it (OTEL_BSP_MAX_QUEUE_SIZE)."""
    default = getattr(BatchSpanProcessor, "_default_max_queue_size", None)
    try:
        return int(default()) if callable(default) else _DEFAULT_EXPORT_QUEUE
    except (TypeError, ValueError):
        return _DEFAULT_EXPORT_QUEUE


# Counted batch processors alive in this process, so a fork can reset each one.
_batches: weakref.WeakSet[CountedBatch] = weakref.WeakSet()


def _reset_batches_in_child() -> None:
    for batch in list(_batches):
        batch._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_batches_in_child)


class CountedBatch(SpanProcessor):
    """The SDK's ``BatchSpanProcessor`` with its full queue counted.

    Its own queue drops the oldest span when full, with a log line and nothing we can
    count. This keeps the number of spans handed to it and not yet taken by an export;
    at the bound a span is not handed over but counted (``otlp_queue_full``), so the
    batch processor's queue never reaches its bound and no drop goes uncounted.
    """

    def __init__(self, exporter: SpanExporter, counters: Counters) -> None:
        self.counters = counters
        self.max_queue = _export_queue_size()
        self._lock = threading.Lock()
        self._waiting = 0
        self.inner: SpanProcessor = BatchSpanProcessor(
            _CountingExporter(exporter, counters, taken=self._taken),
            max_queue_size=self.max_queue,
        )
        _batches.add(self)

    def _reset_after_fork(self) -> None:
        # The SDK empties a forked child's queue; a lock held by a parent's thread at
        # the fork would never be released here.
        self._lock = threading.Lock()
        self._waiting = 0

    def _taken(self, n: int) -> None:
        with self._lock:
            self._waiting = max(0, self._waiting - n)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return  # the batch processor ignores these too
        with self._lock:
            full = self._waiting >= self.max_queue
            if not full:
                self._waiting += 1
        if full:
            self.counters.add("otlp_queue_full")
            return
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def otlp_exporter(endpoint: str | None, protocol: str | None) -> SpanExporter | None:
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none" and endpoint is None:
        return None
    env_endpoint = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )
    if endpoint is None and not env_endpoint:
        return None
    proto = (
        protocol
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
        or "http/protobuf"
    )
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        if endpoint is None:
            return GrpcExporter()
        return GrpcExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    if proto == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        if endpoint is None:
            return HttpExporter()  # reads the env itself, adding /v1/traces as the spec says
        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        return HttpExporter(endpoint=url)
    raise ConfigError(
        f"unsupported OTLP protocol {proto!r}: use 'grpc' or 'http/protobuf' "
        "(argument otlp_protocol or OTEL_EXPORTER_OTLP_PROTOCOL)"
    )
