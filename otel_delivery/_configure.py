"""``configure()``: the one call a gateway makes at start-up.

Settings resolve in the same order everywhere: the argument, then the standard
environment variable, then a default. Nothing happens at import time.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter

from local_store import (
    DEFAULT_KEEP_DELIVERED_FOR_SECONDS,
    DEFAULT_KEEP_FAILED_FOR_SECONDS,
    AttemptFinder,
    RetentionKeeper,
    StoreWriter,
)
from local_store._retention import DEFAULT_RETENTION_INTERVAL_SECONDS

from ._attributes import ERROR_TEXT_LIMIT
from ._classify import Classifier
from ._export import CountedBatch, otlp_exporter
from ._paths import resolve_store_path
from ._processor import StoreSpanProcessor
from ._receipts import RecentSends
from ._sampling import record_locally
from ._state import INSTRUMENTATION_NAME, Counters, Runtime, install, make_pseudonymizer, uninstall
from .exceptions import ConfigError

__all__ = ["Instrumentation", "configure"]

_log = logging.getLogger("otel_delivery")

PSEUDONYM_KEY_ENV = "OTEL_DELIVERY_PSEUDONYM_KEY"
_DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 1.5
_VERSION = "0.1.0"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


class _Switchable(SpanProcessor):
    """Delegates to ``inner`` until switched off; lets a re-configure retire processors
    from a provider that has no way to remove them."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner
        self.on = True

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.on:
            self.inner.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.inner.on_end(span)

    def shutdown(self) -> None:
        if self.on:
            self.on = False
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis) if self.on else True


class Instrumentation:
    """The handle ``configure()`` returns.

    >>> otel = configure(service_name="gateway")  # doctest: +SKIP
    >>> otel.force_flush()  # doctest: +SKIP
    True
    >>> otel.shutdown()  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None,
        runtime: Runtime,
        store_path: Path | None,
        writer: StoreWriter | None,
        processors: list[_Switchable],
        shutdown_timeout_seconds: float,
        retention: RetentionKeeper | None = None,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.retention = retention
        self.runtime = runtime
        self.store_path = store_path
        self.writer = writer
        self._processors = processors
        self._shutdown_timeout = shutdown_timeout_seconds
        self._lock = threading.Lock()
        self._shut = False

    @property
    def enabled(self) -> bool:
        return self.runtime.enabled

    def force_flush(self, timeout_seconds: float = 5.0) -> bool:
        """Write everything pending to the store, then the exporter. True if all made it.

        Bounded by ``timeout_seconds`` in total, even when an exporter retries a dead
        collector for longer than its own timeout.
        """
        return self._run_bounded("force_flush", timeout_seconds)

    def _run_bounded(self, step: str, timeout_seconds: float) -> bool:
        """Run ``step`` on each processor in turn (the store first), within one deadline.

        Each runs in a daemon thread, so a hung exporter cannot hold the caller (or the
        process at exit) past the deadline.
        """
        deadline = time.monotonic() + timeout_seconds
        ok = True
        for p in self._processors:
            remaining = max(0.0, deadline - time.monotonic())
            if step == "force_flush":
                ok = _bounded(partial(p.force_flush, int(remaining * 1000)), remaining) and ok
            else:
                ok = _bounded(partial(_shutdown_ok, p), remaining) and ok
        return ok

    def shutdown(self, timeout_seconds: float | None = None) -> None:
        """Flush and stop. Idempotent, bounded in time even with a dead collector.

        The local store is flushed first; exporters get what is left of the bound.
        """
        with self._lock:
            if self._shut:
                return
            self._shut = True
        uninstall(self.runtime)
        if self.retention is not None:
            self.retention.stop(timeout_seconds=0.0)  # a daemon: never holds the exit
        bound = self._shutdown_timeout if timeout_seconds is None else timeout_seconds
        self._run_bounded("shutdown", bound)
        for p in self._processors:
            p.on = False

    def stats(self) -> dict[str, int]:
        """Problems absorbed so far (extractor errors, drops by reason, queue length)."""
        out = self.runtime.counters.snapshot()
        if self.writer is not None:
            for key, value in self.writer.stats().items():
                out[f"store.{key}"] = value
        return out


def _shutdown_ok(p: SpanProcessor) -> bool:
    p.shutdown()
    return True


def _bounded(fn: Callable[[], bool], timeout_seconds: float) -> bool:
    """``fn()`` in a daemon thread; False if it fails or is still running at the timeout."""
    result: list[bool] = []

    def run() -> None:
        try:
            result.append(bool(fn()))
        except Exception as exc:
            _log.warning("otel-delivery flush/shutdown step failed: %r", exc)

    t = threading.Thread(target=run, daemon=True, name="otel-delivery-flush")
    t.start()
    t.join(timeout_seconds)
    return bool(result) and result[0]


_configure_lock = threading.Lock()
# How often retention runs; tests make it short.
_retention_interval_seconds = DEFAULT_RETENTION_INTERVAL_SECONDS
_active: Instrumentation | None = None
_atexit_registered = False


def _shutdown_active() -> None:
    handle = _active
    if handle is not None:
        handle.shutdown()


def _flush_at_child_exit(handle: Instrumentation) -> None:
    """In a multiprocessing child: shut down (and so flush) when multiprocessing ends it.

    multiprocessing ends a worker with ``os._exit()``, which skips atexit, but it runs
    its own finalizers first; it clears those when the child starts, then calls its
    after-fork hooks, which is where this registers one. (A child of a plain
    ``os.fork()`` that exits normally runs the inherited atexit handler.)
    """
    multiprocessing.util.Finalize(None, handle.shutdown, exitpriority=100)


def configure(
    service_name: str | None = None,
    store: str | os.PathLike[str] | None = None,
    *,
    mirror: bool = True,
    otlp_endpoint: str | None = None,
    otlp_protocol: str | None = None,
    tracer_provider: TracerProvider | None = None,
    span_exporter: SpanExporter | None = None,
    classifier: Classifier | None = None,
    pseudonymize_key: str | bytes | None = None,
    error_text_limit: int = ERROR_TEXT_LIMIT,
    max_queue: int | None = None,
    hot_path_timeout_seconds: float | None = None,
    shutdown_timeout_seconds: float = _DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
    keep_delivered_for_seconds: float | None = DEFAULT_KEEP_DELIVERED_FOR_SECONDS,
    keep_failed_for_seconds: float | None = DEFAULT_KEEP_FAILED_FOR_SECONDS,
) -> Instrumentation:
    """Set up tracing for the decorators and the local store; return the handle.

    * ``store``: the SQLite file; else ``$OTEL_DELIVERY_STORE``; else
      ``$XDG_STATE_HOME/otel-delivery/deliveries.db`` (``~/.local/state/...``).
      ``mirror=False`` turns the local store off.
    * OTLP export is on when ``otlp_endpoint`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``
      (or ``..._TRACES_ENDPOINT``) is set; ``otlp_protocol`` or
      ``OTEL_EXPORTER_OTLP_PROTOCOL`` picks ``http/protobuf`` (default) or ``grpc``.
    * ``tracer_provider``: use this SDK provider. Otherwise the global one is joined
      when the application already set an SDK provider, or a new one is created
      and set globally. ``OTEL_SDK_DISABLED=true`` turns everything off.
    * ``pseudonymize_key`` (or ``$OTEL_DELIVERY_PSEUDONYM_KEY``): recipients and
      senders are replaced by a keyed hash on spans and in the store.
    * Every row (inbound, AI run, enqueue, receipt, an attempt's start and outcome) is
      appended to a per-process journal file before the decorated call returns, and
      committed by a background thread (see ``local_store._writer``): a process killed
      at any point loses nothing it recorded.
    * Retention: a background thread prunes the store by age about once an hour
      (the first time a minute after start, in a child process): delivered attempts older than
      ``keep_delivered_for_seconds`` (30 days), failures older than
      ``keep_failed_for_seconds`` (90 days), then gives the space back. ``None``
      keeps that class for ever; both ``None``, nothing is pruned.

    Calling it again replaces the previous configuration. Flushes at interpreter exit.

    >>> otel = configure(service_name="gateway", store="/var/lib/gw/d.db")  # doctest: +SKIP
    """
    global _active, _atexit_registered
    if error_text_limit < 16:
        raise ConfigError(
            f"error_text_limit must be at least 16 characters, got {error_text_limit}"
        )
    if shutdown_timeout_seconds <= 0:
        raise ConfigError(
            f"shutdown_timeout_seconds must be > 0, got {shutdown_timeout_seconds}"
        )
    key = pseudonymize_key if pseudonymize_key is not None else os.environ.get(PSEUDONYM_KEY_ENV)
    if key is not None and len(key) < 16:
        raise ConfigError("pseudonymize_key must be at least 16 characters (bytes) long")
    key_bytes = key.encode() if isinstance(key, str) else key

    with _configure_lock:
        if _active is not None:
            _active.shutdown()
            _active = None
        counters = Counters()

        if _env_true("OTEL_SDK_DISABLED"):
            rt = Runtime(tracer=trace.NoOpTracer(), counters=counters, enabled=False)
            install(rt)
            _active = Instrumentation(
                tracer_provider=None, runtime=rt, store_path=None, writer=None, processors=[],
                shutdown_timeout_seconds=shutdown_timeout_seconds,
            )
            return _active

        provider = tracer_provider or _global_sdk_provider(service_name)
        processors: list[_Switchable] = []
        writer: StoreWriter | None = None
        find_attempt: Callable[[str, str], tuple[str, str] | None] | None = None
        store_path: Path | None = None
        retention: RetentionKeeper | None = None
        try:
            if mirror:
                store_path = resolve_store_path(store)
                service = provider.resource.attributes.get(SERVICE_NAME)
                writer_kwargs: dict[str, Any] = {}
                if max_queue is not None:
                    writer_kwargs["max_queue"] = max_queue
                if hot_path_timeout_seconds is not None:
                    writer_kwargs["hot_path_timeout_seconds"] = hot_path_timeout_seconds
                writer = StoreWriter(
                    store_path, service=str(service) if service else None,
                    **writer_kwargs,
                )
                counters.sink = lambda reason, n, err: writer.count_drop(reason, n, error=err)
                recent = RecentSends()
                processors.append(_Switchable(StoreSpanProcessor(writer, counters, recent)))
                find_attempt = _finder(recent, AttemptFinder(store_path))
                retention = RetentionKeeper(
                    store_path, keep_delivered_for_seconds=keep_delivered_for_seconds,
                    keep_failed_for_seconds=keep_failed_for_seconds,
                    interval_seconds=_retention_interval_seconds,
                    first_run_after_seconds=min(60.0, _retention_interval_seconds),
                )
            exporter = span_exporter or otlp_exporter(otlp_endpoint, otlp_protocol)
            if exporter is not None:
                processors.append(_Switchable(CountedBatch(exporter, counters)))
        except ValueError as exc:
            if writer is not None:
                writer.close()
            raise ConfigError(str(exc)) from exc
        for p in processors:
            provider.add_span_processor(p)

        tracer = provider.get_tracer(INSTRUMENTATION_NAME, _VERSION)
        if writer is not None:
            # The store is the operator's record: every span of ours is recorded, and
            # only export follows the sampler (see _sampling).
            record_locally(tracer)
        rt = Runtime(
            tracer=tracer,
            classifier=classifier,
            pseudonymize=make_pseudonymizer(key_bytes) if key_bytes else None,
            error_text_limit=error_text_limit,
            counters=counters,
            find_attempt=find_attempt,
        )
        install(rt)
        _active = Instrumentation(
            tracer_provider=provider, runtime=rt, store_path=store_path, writer=writer,
            processors=processors, shutdown_timeout_seconds=shutdown_timeout_seconds,
            retention=retention,
        )
        if retention is not None:
            retention.start()
        if not _atexit_registered:
            atexit.register(_shutdown_active)
            _atexit_registered = True
        multiprocessing.util.register_after_fork(_active, _flush_at_child_exit)
        return _active


def _finder(
    recent: RecentSends, stored: AttemptFinder
) -> Callable[[str, str], tuple[str, str] | None]:
    """Where a receipt finds its attempt: this process's recent sends, then the store."""

    def find(channel: str, message_id: str) -> tuple[str, str] | None:
        return recent.get(channel, message_id) or stored.find(channel, message_id)

    return find


def _global_sdk_provider(service_name: str | None) -> TracerProvider:
    """Join the application's SDK provider, or create one and make it global."""
    existing = trace.get_tracer_provider()
    if isinstance(existing, TracerProvider):
        return existing
    attributes = {SERVICE_NAME: service_name} if service_name else {}
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    if isinstance(existing, trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    else:
        _log.warning(
            "otel-delivery: the global tracer provider (%s) is not an SDK TracerProvider; "
            "using a private one for delivery spans", type(existing).__name__,
        )
    return provider
