"""Carrying a trace across tasks, queues, processes and restarts.

In a real gateway the inbound handler, the agent loop and the sender run in
different tasks joined by queues, and a retry may run after a restart. The current
context does not travel; the message (and its metadata dict) does. A *carrier* is
any ``dict[str, str]``-like mapping that travels with the work:

* ``inbound`` and ``ai_run`` write their span's context into it, so the next stage
  continues from them;
* every decorator continues from a carrier it is given, when it holds a context;
* ``deliver`` appends its span id to ``otel-delivery-prior-attempts``, so the next
  attempt (even in a new process) links to the earlier ones;
* :func:`carry` captures the current context into a carrier by hand, for a queued
  entry the gateway persists.

Besides W3C ``traceparent``/``tracestate`` (through the globally configured
propagator, so ``OTEL_PROPAGATORS`` is honoured), the carrier holds the inbound
message id, channel and conversation, so later stages are correlated without the
gateway passing them along.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, TraceFlags

from . import _attributes as A
from ._extract import coerce_value

__all__ = [
    "Correlation",
    "carry",
    "correlation_from",
    "inject_into",
    "parent_from_carrier",
    "prior_attempt_links",
    "record_attempt",
]

#: inbound id, channel and conversation, as known so far along a trace.
Correlation = dict[str, str]

_CORRELATION_KEY = otel_context.create_key("otel_delivery.correlation")
_CARRIER_FIELDS = (
    ("inbound_id", A.CARRIER_INBOUND_ID),
    ("channel", A.CARRIER_CHANNEL),
    ("conversation", A.CARRIER_CONVERSATION),
)


class _Getter:
    """A TextMap getter that tolerates non-string values in someone else's dict."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, str):
            return [value]
        return None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [k for k in carrier if isinstance(k, str)]


_GETTER = _Getter()


def parent_from_carrier(carrier: Mapping[str, Any]) -> Context | None:
    """The context a carrier holds, or None when it holds no valid span context."""
    ctx = propagate.extract(carrier, getter=_GETTER)  # type: ignore[arg-type]
    if trace.get_current_span(ctx).get_span_context().is_valid:
        return ctx
    return None


def correlation_from(ctx: Context | None, carrier: Mapping[str, Any] | None) -> Correlation:
    """Correlation fields from the carrier, falling back to the context."""
    found: Correlation = {}
    current = otel_context.get_value(_CORRELATION_KEY, ctx)
    if isinstance(current, dict):
        found.update(current)
    if carrier is not None:
        for name, key in _CARRIER_FIELDS:
            value = carrier.get(key)
            if isinstance(value, str) and value:
                # Whoever filled the carrier, its values get the limits of any attribute.
                found[name] = str(coerce_value(value))
    return found


def with_correlation(ctx: Context, corr: Correlation) -> Context:
    return otel_context.set_value(_CORRELATION_KEY, corr, ctx)


def inject_into(carrier: MutableMapping[str, Any], ctx: Context, corr: Correlation) -> None:
    """Write ``ctx``'s trace context and the correlation fields into ``carrier``."""
    propagate.inject(carrier, context=ctx)
    for name, key in _CARRIER_FIELDS:
        value = corr.get(name)
        if value:
            carrier[key] = value


def prior_attempt_links(carrier: Mapping[str, Any] | None, ctx: Context | None) -> list[Link]:
    """Links to the earlier attempts recorded in ``carrier`` (same trace as ``ctx``)."""
    if carrier is None or ctx is None:
        return []
    raw = carrier.get(A.CARRIER_PRIOR_ATTEMPTS)
    if not isinstance(raw, str) or not raw:
        return []
    parent = trace.get_current_span(ctx).get_span_context()
    links: list[Link] = []
    for token in raw.split()[-A.PRIOR_ATTEMPT_LINKS_LIMIT :]:
        try:
            span_id = int(token, 16)
        except ValueError:
            continue
        if span_id == 0 or span_id >= 1 << 64:
            continue
        links.append(
            Link(
                SpanContext(
                    trace_id=parent.trace_id,
                    span_id=span_id,
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                ),
                attributes={A.LINK: A.LINK_PRIOR_ATTEMPT},
            )
        )
    return links


def record_attempt(carrier: MutableMapping[str, Any], span_id: int) -> None:
    """Append an attempt's span id to the carrier, keeping the most recent few."""
    raw = carrier.get(A.CARRIER_PRIOR_ATTEMPTS)
    tokens = raw.split() if isinstance(raw, str) else []
    tokens.append(format(span_id, "016x"))
    carrier[A.CARRIER_PRIOR_ATTEMPTS] = " ".join(tokens[-A.PRIOR_ATTEMPT_LINKS_LIMIT :])


def carry(carrier: MutableMapping[str, Any] | None = None) -> dict[str, str]:
    """Capture the current trace context into ``carrier`` (a new dict by default).

    Store the result with a queued entry; hand it to ``@deliver(carrier=...)`` when
    the entry is retried, even after a restart, and the retry joins this trace:

    >>> entry["trace"] = otel_delivery.carry()  # doctest: +SKIP
    """
    out: Any = {} if carrier is None else carrier
    try:
        ctx = otel_context.get_current()
        inject_into(out, ctx, correlation_from(ctx, None))
    except Exception:
        pass
    return out  # type: ignore[no-any-return]
