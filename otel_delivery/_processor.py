"""The span processor that mirrors our spans into the local store.

This is the one module that knows both the span shape (``_attributes``) and the
row shape (``local_store``). A deliver span's row is recorded in ``on_start``, before
the send runs, and its outcome in ``on_end``; inbound, AI-run, enqueue and receipt
spans are recorded as they end. "Recorded" means appended to the writer's journal on
this thread, so the row outlives a SIGKILL the moment the decorated call returns; the
writer's background thread commits it (``local_store._writer``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from local_store import StoreWriter

from . import _attributes as A
from ._receipts import RecentSends
from ._state import Counters

__all__ = ["StoreSpanProcessor"]

_NS_PER_MS = 1_000_000


def _ms(ns: int | None) -> int | None:
    return None if ns is None else ns // _NS_PER_MS


def _duration_ms(span: ReadableSpan) -> float | None:
    if span.start_time is None or span.end_time is None:
        return None
    return (span.end_time - span.start_time) / _NS_PER_MS


def _bool(value: Any) -> int | None:
    return None if value is None else int(bool(value))


class StoreSpanProcessor(SpanProcessor):
    """Mirror ``otel_delivery`` spans into a :class:`local_store.StoreWriter`.

    Spans from other instrumentations pass through untouched. Nothing here raises:
    a failure is counted in ``counters`` and the span goes on to the other processors.
    """

    def __init__(
        self, writer: StoreWriter, counters: Counters | None = None,
        recent_sends: RecentSends | None = None,
    ) -> None:
        self.writer = writer
        self.counters = counters or Counters()
        self.recent_sends = recent_sends
        self._active = True

    # -- SpanProcessor -----------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if not self._active:
            return
        try:
            attributes = span.attributes or {}
            if attributes.get(A.KIND) != A.KIND_DELIVER:
                return
            row = self._attempt_row(span, attributes)
            if A.DELIVERY_ID not in attributes:
                span.set_attribute(A.DELIVERY_ID, row["delivery_id"])
            number = self.writer.start_attempt(row)
            if number is not None and A.ATTEMPT not in attributes:
                span.set_attribute(A.ATTEMPT, number)
        except Exception as exc:
            self.counters.add("processor_error", 1, repr(exc)[:200])

    def on_end(self, span: ReadableSpan) -> None:
        if not self._active:
            return
        try:
            attributes = span.attributes or {}
            kind = attributes.get(A.KIND)
            if kind is None:
                return
            ctx = span.get_span_context()
            if ctx is None:
                return
            if kind == A.KIND_DELIVER:
                row = self._attempt_row(span, attributes)
                self.writer.end_attempt(row)
                if self.recent_sends is not None and row["provider_message_id"] is not None:
                    self.recent_sends.add(
                        str(row["channel"]), str(row["provider_message_id"]),
                        row["trace_id"], row["span_id"],
                    )
            elif kind == A.KIND_INBOUND:
                self.writer.submit("inbound_messages", self._inbound_row(span, attributes))
            elif kind == A.KIND_AI_RUN:
                self.writer.submit("ai_runs", self._run_row(span, attributes))
            elif kind == A.KIND_ENQUEUE:
                self.writer.submit("enqueues", self._enqueue_row(span, attributes))
            elif kind == A.KIND_RECEIPT:
                self.writer.submit("receipts", self._receipt_row(span, attributes))
        except Exception as exc:
            self.counters.add("processor_error", 1, repr(exc)[:200])

    def shutdown(self) -> None:
        self._active = False
        self.writer.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.writer.flush(timeout_millis / 1000)

    # -- span -> row ---------------------------------------------------------------------

    @staticmethod
    def _common(span: ReadableSpan | Span, attributes: Mapping[str, Any]) -> dict[str, Any]:
        ctx = span.get_span_context()
        parent = span.parent
        status = span.status
        failed = status is not None and status.status_code is StatusCode.ERROR
        resource = span.resource
        get = attributes.get
        return {
            "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
            "span_id": f"{ctx.span_id:016x}" if ctx else None,
            "parent_span_id": f"{parent.span_id:016x}" if parent else None,
            "inbound_id": get(A.INBOUND_ID),
            "channel": get(A.CHANNEL),
            "status": "failed" if failed else "ok",
            "error_type": get(A.ERROR_TYPE) if failed else None,
            "error_text": get(A.ERROR_MESSAGE) if failed else None,
            "started_at_ms": _ms(span.start_time),
            "ended_at_ms": _ms(span.end_time),
            "service": resource.attributes.get("service.name") if resource else None,
        }

    def _attempt_row(
        self, span: ReadableSpan | Span, attributes: Mapping[str, Any]
    ) -> dict[str, Any]:
        row = self._common(span, attributes)
        ended = span.end_time is not None
        outcome = attributes.get(A.OUTCOME)
        if not ended:
            status = "started"
        elif outcome in ("delivered", "failed", "interrupted"):
            status = outcome
        else:
            status = "failed" if row["status"] == "failed" else "delivered"
        row.update(
            # Without a delivery id each call is a delivery of its own.
            delivery_id=attributes.get(A.DELIVERY_ID) or row["span_id"],
            attempt=attributes.get(A.ATTEMPT),
            max_attempts=attributes.get(A.MAX_ATTEMPTS),
            recipient=attributes.get(A.RECIPIENT),
            status=status,
            error_type=attributes.get(A.ERROR_TYPE) if status != "delivered" else None,
            error_text=attributes.get(A.ERROR_MESSAGE) if status != "delivered" else None,
            failure_class=attributes.get(A.FAILURE_CLASS),
            retry_after_seconds=attributes.get(A.RETRY_AFTER_SECONDS),
            final=_bool(attributes.get(A.FINAL)),
            duration_ms=_duration_ms(span) if ended else None,
            provider_message_id=attributes.get(A.PROVIDER_MESSAGE_ID),
        )
        return row

    def _inbound_row(self, span: ReadableSpan, attributes: Mapping[str, Any]) -> dict[str, Any]:
        row = self._common(span, attributes)
        row["received_at_ms"] = row.pop("started_at_ms")
        row.update(
            sender=attributes.get(A.SENDER),
            conversation=attributes.get(A.CONVERSATION),
        )
        return row

    def _run_row(self, span: ReadableSpan, attributes: Mapping[str, Any]) -> dict[str, Any]:
        row = self._common(span, attributes)
        row.update(
            agent=attributes.get(A.GEN_AI_AGENT_NAME),
            model=attributes.get(A.GEN_AI_REQUEST_MODEL),
            conversation=attributes.get(A.CONVERSATION),
            reply_produced=_bool(attributes.get(A.REPLY_PRODUCED)),
            duration_ms=_duration_ms(span),
        )
        return row

    def _receipt_row(self, span: ReadableSpan, attributes: Mapping[str, Any]) -> dict[str, Any]:
        ctx = span.get_span_context()
        resource = span.resource
        # A receipt that found its attempt is the attempt's child, and links to it.
        attempt = span.parent if span.links else None
        return {
            "channel": attributes.get(A.CHANNEL),
            "provider_message_id": attributes.get(A.MESSAGING_MESSAGE_ID),
            "status": attributes.get(A.RECEIPT_STATUS),
            "at_ms": _ms(span.start_time),
            "recipient": attributes.get(A.RECIPIENT),
            "error_type": attributes.get(A.ERROR_TYPE),
            "error_text": attributes.get(A.ERROR_MESSAGE),
            "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
            "span_id": f"{ctx.span_id:016x}" if ctx else None,
            "attempt_span_id": f"{attempt.span_id:016x}" if attempt else None,
            "recorded_at_ms": time.time_ns() // _NS_PER_MS,
            "service": resource.attributes.get("service.name") if resource else None,
        }

    def _enqueue_row(self, span: ReadableSpan, attributes: Mapping[str, Any]) -> dict[str, Any]:
        row = self._common(span, attributes)
        row.update(
            delivery_id=attributes.get(A.DELIVERY_ID),
            recipient=attributes.get(A.RECIPIENT),
        )
        return row
