"""``@receipt``: what the platform said after it accepted a message.

Goes on a status-webhook handler (WhatsApp Cloud API ``statuses``, Signal or Matrix
receipts). Each status becomes a span in the trace of the attempt that sent the
message, found in the local store by ``(channel, provider_message_id)``, linked to
that attempt's span, and a row of the store's ``receipts`` table. A status whose
attempt is not in the store yet gets a span of its own trace; its row still joins
the attempt when the store is read.

One webhook can carry several statuses: give ``receipts=`` a function of the
handler's arguments that returns them (mappings with ``id`` or
``provider_message_id``, ``status``, ``timestamp`` or ``at``, ``recipient_id`` or
``recipient``, and ``errors`` or ``error``), or decorate the per-status function
with the single-value arguments.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from . import _attributes as A
from ._classify import error_type_name
from ._decorators import warn_unconfigured
from ._extract import JunkValue, coerce_value, compile_extractor, compile_values
from ._kinds import _count
from ._state import Runtime, current, is_configured

__all__ = ["RecentSends", "receipt"]

F = TypeVar("F", bound=Callable[..., Any])

_MS_THRESHOLD = 100_000_000_000  # below: Unix seconds (WhatsApp's timestamps); above: ms


class RecentSends:
    """The last sends of this process, by (channel, provider message id): a receipt
    that arrives before its attempt's row is committed still joins its trace."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._sends: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()

    def add(self, channel: str, message_id: str, trace_id: str, span_id: str) -> None:
        with self._lock:
            self._sends[(channel, message_id)] = (trace_id, span_id)
            if len(self._sends) > self.limit:
                self._sends.popitem(last=False)

    def get(self, channel: str, message_id: str) -> tuple[str, str] | None:
        with self._lock:
            return self._sends.get((channel, message_id))


def _at_ns(value: Any) -> int:
    """A receipt's time in Unix nanoseconds, from seconds, ms, a numeric string or a
    datetime; now when it is missing or unreadable."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1e9)
    if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        value = float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e15:
        seconds = value / 1000 if value >= _MS_THRESHOLD else value
        return int(seconds * 1e9)
    return time.time_ns()


def _error_parts(value: Any) -> tuple[str | None, str | None]:
    """(error type, error text) of a receipt's error: a WhatsApp ``errors`` list or one
    of its entries (``code``, ``title``, ``message``, ``error_data.details``), an
    exception, or a text."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if value is None:
        return None, None
    if isinstance(value, BaseException):
        return error_type_name(value), str(value)
    if isinstance(value, Mapping):
        code = value.get("code")
        words = [value.get("title"), value.get("message")]
        data = value.get("error_data")
        if isinstance(data, Mapping):
            words.append(data.get("details"))
        text = ": ".join(dict.fromkeys(str(w) for w in words if w))
        return (None if code is None else str(code)), (text or None)
    return None, str(value)


def _first(item: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in item and item[key] is not None:
            return item[key]
    return None


class _ReceiptPlan:
    def __init__(self, func: Callable[..., Any], specs: dict[str, Any],
                 receipts: Any, record_if: Callable[..., Any] | None) -> None:
        self.static, self.extractors = compile_values(specs, func)
        self.receipts = compile_extractor(receipts, func) if receipts is not None else None
        if receipts is not None and self.receipts is None:
            raise TypeError("receipts= takes arg('param.path') or a callable, not a fixed value")
        self.record_if = record_if

    def items(self, rt: Runtime, args: tuple[Any, ...], kwargs: dict[str, Any]
              ) -> list[dict[str, Any]]:
        """The receipts this call carries, each a dict of the single-value names."""
        base = dict(self.static)
        for name, extractor in self.extractors:
            try:
                base[name] = extractor(args, kwargs)
            except Exception as exc:
                _count(rt, "extractor_error", exc)
        if self.receipts is None:
            return [base]
        try:
            found = self.receipts(args, kwargs)
            listed: Iterable[Any] = [] if found is None else list(found)
        except Exception as exc:
            _count(rt, "extractor_error", exc)
            return []
        out = []
        for item in listed:
            if not isinstance(item, Mapping):
                _count(rt, "extractor_junk")
                continue
            out.append({
                **base,
                "provider_message_id": _first(item, "provider_message_id", "id"),
                "status": _first(item, "status"),
                "at": _first(item, "at", "timestamp"),
                "recipient": _first(item, "recipient", "recipient_id"),
                "error": _first(item, "error", "errors"),
                **({"channel": item["channel"]} if item.get("channel") else {}),
            })
        return out


def _record_one(rt: Runtime, item: dict[str, Any]) -> None:
    try:
        channel = coerce_value(item.get("channel"))
        message_id = coerce_value(item.get("provider_message_id"))
        status = coerce_value(item.get("status"))
        recipient = coerce_value(item.get("recipient"))
    except JunkValue as exc:
        _count(rt, "extractor_junk", exc)
        return
    if channel is None or message_id is None or status is None:
        _count(rt, "receipt_incomplete")
        return
    channel, message_id, status = str(channel), str(message_id), str(status).lower()
    attributes: dict[str, Any] = {
        A.KIND: A.KIND_RECEIPT, A.CHANNEL: channel, A.MESSAGING_SYSTEM: channel,
        A.MESSAGING_DESTINATION_NAME: channel, A.MESSAGING_OPERATION_TYPE: "process",
        A.MESSAGING_OPERATION_NAME: "receipt", A.MESSAGING_MESSAGE_ID: message_id,
        A.RECEIPT_STATUS: status,
    }
    if recipient is not None:
        recipient = str(recipient)
        attributes[A.RECIPIENT] = rt.pseudonymize(recipient) if rt.pseudonymize else recipient
    error_type, error_text = _error_parts(item.get("error"))
    if error_text is not None:
        error_text = str(coerce_value(error_text))[: rt.error_text_limit]
    parent = otel_context.get_current()
    links: list[Link] = []
    found = rt.find_attempt(channel, message_id) if rt.find_attempt else None
    if found is not None:
        attempt = SpanContext(int(found[0], 16), int(found[1], 16), is_remote=True,
                              trace_flags=TraceFlags(TraceFlags.SAMPLED))
        parent = trace.set_span_in_context(NonRecordingSpan(attempt))
        links.append(Link(attempt))  # the attempt is the parent too: no attributes needed
    at = _at_ns(item.get("at"))
    span = rt.tracer.start_span(
        f"receipt {channel}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes,
        links=links, start_time=at, record_exception=False, set_status_on_exception=False,
    )
    if status == "failed" or error_type is not None:
        kind = error_type or "receipt_failed"
        span.set_attribute(A.OUTCOME, "failed")  # what failure searches look for
        span.set_attribute(A.ERROR_TYPE, kind)
        if error_text is not None:
            span.set_attribute(A.ERROR_MESSAGE, error_text)
        span.set_status(Status(StatusCode.ERROR, error_text or kind))
    span.end(end_time=at)


def _record(plan: _ReceiptPlan, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        rt = current()
        if not rt.enabled:
            return
        if not is_configured(rt):
            warn_unconfigured(rt)
        if plan.record_if is not None:
            try:
                if not plan.record_if(*args, **kwargs):
                    return
            except Exception as exc:
                _count(rt, "record_if_error", exc)
        for item in plan.items(rt, args, kwargs):
            try:
                _record_one(rt, item)
            except Exception as exc:
                _count(rt, "instrumentation_error", exc)
    except Exception as exc:
        try:
            _count(current(), "instrumentation_error", exc)
        except Exception:
            pass


@overload
def receipt(func: F, /) -> F: ...
@overload
def receipt(
    *,
    channel: Any = None,
    provider_message_id: Any = None,
    status: Any = None,
    error: Any = None,
    at: Any = None,
    recipient: Any = None,
    receipts: Any = None,
    record_if: Callable[..., Any] | None = None,
) -> Callable[[F], F]: ...
def receipt(
    func: Any = None,
    /,
    *,
    channel: Any = None,
    provider_message_id: Any = None,
    status: Any = None,
    error: Any = None,
    at: Any = None,
    recipient: Any = None,
    receipts: Any = None,
    record_if: Callable[..., Any] | None = None,
) -> Any:
    """Record delivery statuses a platform reports after accepting a message.

    The receipts are recorded when the handler is called, before it runs (a handler
    that fails does not lose them); the handler runs, returns and raises as before.

    >>> @receipt(channel="whatsapp", receipts=lambda payload: [
    ...     s for e in payload["entry"] for c in e["changes"]
    ...     for s in c["value"].get("statuses", [])])
    ... def on_webhook(payload): ...  # doctest: +SKIP
    """
    specs = dict(channel=channel, provider_message_id=provider_message_id, status=status,
                 error=error, at=at, recipient=recipient)

    def wrap(target: Any) -> Any:
        if isinstance(target, (staticmethod, classmethod)):
            return type(target)(wrap(target.__func__))
        plan = _ReceiptPlan(target, specs, receipts, record_if)
        if inspect.iscoroutinefunction(target):
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                _record(plan, args, kwargs)
                return await target(*args, **kwargs)

            return functools.update_wrapper(async_wrapper, target)

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            _record(plan, args, kwargs)
            return target(*args, **kwargs)

        return functools.update_wrapper(sync_wrapper, target)

    return wrap(func) if func is not None else wrap
