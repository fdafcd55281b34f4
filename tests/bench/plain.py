"""Baseline (b) of measures 1 and 2: a hand-written plain OpenTelemetry decorator.

What a careful engineer would write without otel-delivery: one span per call with the
same name, kind and attributes as ours (checked by ``overhead.check_parity``), the
trace context taken from and written to the message's metadata dict, ``error.type``
and status ERROR on an exception. No store, no extractor machinery, no counters.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from otel_delivery import _attributes as A

__all__ = ["plain_ai_run", "plain_deliver", "plain_inbound"]

_INBOUND_KEY = A.CARRIER_INBOUND_ID
_CHANNEL_KEY = A.CARRIER_CHANNEL


def _span_decorator(
    tracer: Tracer,
    *,
    name: str,
    kind: SpanKind,
    attributes: Callable[[Any, dict[str, str]], dict[str, Any]],
    carrier: Callable[[Any], dict[str, str]],
    inject: bool,
    on_result: Callable[[trace.Span, Any], None] | None = None,
    before: Callable[[], None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def start(msg: Any) -> tuple[trace.Span, object]:
        meta = carrier(msg)
        parent = propagate.extract(meta)
        span = tracer.start_span(
            name, context=parent, kind=kind, attributes=attributes(msg, meta),
            record_exception=False, set_status_on_exception=False,
        )
        ctx = trace.set_span_in_context(span, parent)
        token = otel_context.attach(ctx)
        if inject:
            propagate.inject(meta, context=ctx)
        return span, token

    def failed(span: trace.Span, exc: BaseException) -> None:
        error_type = type(exc).__qualname__
        span.set_attribute(A.ERROR_TYPE, error_type)
        span.set_attribute(A.ERROR_MESSAGE, str(exc)[:512])
        span.set_status(Status(StatusCode.ERROR, str(exc)[:512]))

    def finish(span: trace.Span, token: object) -> None:
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(func):

            async def async_wrapper(msg: Any) -> Any:
                span, token = start(msg)
                try:
                    if before is not None:
                        before()
                    result = await func(msg)
                    if on_result is not None:
                        on_result(span, result)
                    return result
                except BaseException as exc:
                    failed(span, exc)
                    raise
                finally:
                    finish(span, token)

            return functools.wraps(func)(async_wrapper)

        def sync_wrapper(msg: Any) -> Any:
            span, token = start(msg)
            try:
                if before is not None:
                    before()
                result = func(msg)
                if on_result is not None:
                    on_result(span, result)
                return result
            except BaseException as exc:
                failed(span, exc)
                raise
            finally:
                finish(span, token)

        return functools.wraps(func)(sync_wrapper)

    return decorate


def plain_inbound(tracer: Tracer, channel: str) -> Callable[[Callable[..., Any]], Any]:
    """Like ``@inbound(channel=channel, inbound_id=arg("msg.id"), carrier=arg("msg.meta"))``."""

    def attributes(msg: Any, meta: dict[str, str]) -> dict[str, Any]:
        inbound_id = str(msg.id)
        meta[_INBOUND_KEY] = inbound_id
        meta[_CHANNEL_KEY] = channel
        return {
            A.KIND: A.KIND_INBOUND,
            A.MESSAGING_OPERATION_TYPE: "process", A.MESSAGING_OPERATION_NAME: "process",
            A.CHANNEL: channel, A.INBOUND_ID: inbound_id,
            A.MESSAGING_SYSTEM: channel, A.MESSAGING_DESTINATION_NAME: channel,
            A.MESSAGING_MESSAGE_ID: inbound_id,
        }

    return _span_decorator(
        tracer, name=f"process {channel}", kind=SpanKind.CONSUMER, attributes=attributes,
        carrier=lambda msg: msg.meta, inject=True,
    )


def plain_ai_run(tracer: Tracer, agent: str) -> Callable[[Callable[..., Any]], Any]:
    """Like ``@ai_run(agent=agent, carrier=arg("msg.meta"))``."""

    def attributes(msg: Any, meta: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            A.KIND: A.KIND_AI_RUN, A.GEN_AI_OPERATION_NAME: "invoke_agent",
            A.GEN_AI_AGENT_NAME: agent,
        }
        if _CHANNEL_KEY in meta:
            out[A.CHANNEL] = meta[_CHANNEL_KEY]
        if _INBOUND_KEY in meta:
            out[A.INBOUND_ID] = meta[_INBOUND_KEY]
        return out

    def on_result(span: trace.Span, result: Any) -> None:
        span.set_attribute(A.REPLY_PRODUCED, result is not None)

    return _span_decorator(
        tracer, name=f"invoke_agent {agent}", kind=SpanKind.INTERNAL, attributes=attributes,
        carrier=lambda msg: msg.meta, inject=True, on_result=on_result,
    )


def plain_deliver(
    tracer: Tracer, channel: str, max_attempts: int, before: Callable[[], None] | None = None
) -> Callable[[Callable[..., Any]], Any]:
    """Like ``@deliver(channel=channel, recipient=arg("reply.chat_id"),
    delivery_id=arg("reply.id"), max_attempts=max_attempts, carrier=arg("reply.meta"))``;
    ``before`` runs after the span starts and before the send (measure 2's raw commit).
    """

    def attributes(reply: Any, meta: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            A.KIND: A.KIND_DELIVER,
            A.MESSAGING_OPERATION_TYPE: "send", A.MESSAGING_OPERATION_NAME: "send",
            A.CHANNEL: channel, A.RECIPIENT: str(reply.chat_id),
            A.DELIVERY_ID: str(reply.id), A.MAX_ATTEMPTS: max_attempts,
            A.MESSAGING_SYSTEM: channel, A.MESSAGING_DESTINATION_NAME: channel,
            A.ATTEMPT: 1,
        }
        if _INBOUND_KEY in meta:
            out[A.INBOUND_ID] = meta[_INBOUND_KEY]
        return out

    def on_result(span: trace.Span, result: Any) -> None:
        span.set_attribute(A.OUTCOME, "delivered")
        span.set_attribute(A.FINAL, True)
        message_id = result.get("message_id") if isinstance(result, Mapping) else None
        if message_id is not None:
            span.set_attribute(A.PROVIDER_MESSAGE_ID, str(message_id))
            span.set_attribute(A.MESSAGING_MESSAGE_ID, str(message_id))

    return _span_decorator(
        tracer, name=f"send {channel}", kind=SpanKind.CLIENT, attributes=attributes,
        carrier=lambda reply: reply.meta, inject=False, on_result=on_result, before=before,
    )
