"""The local record does not depend on head sampling.

The operator's store must hold every inbound message, AI run and delivery attempt,
whatever the application's sampler (``OTEL_TRACES_SAMPLER``, a ``ParentBased`` root
sampler, an upstream peer's ``traceparent`` with the sampled flag ``00``) decides.
:class:`RecordLocally` wraps that sampler for otel-delivery's own tracer only: when
it says DROP, the span is still *recorded* (``RECORD_ONLY``), so span processors see
it and the store mirrors it, but its sampled flag stays off, so exporters (which
only take sampled spans) follow the sampler. The trace id is the parent's either
way, so an unsampled inbound keeps its trace.

Other instrumentations' spans are not touched: they use their own tracers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

__all__ = ["RecordLocally", "record_locally"]


class RecordLocally(Sampler):
    """``inner``'s decision for export; never less than RECORD_ONLY for recording."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self.inner.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is not Decision.DROP:
            return result
        # A DROP result carries no attributes (the span would have none); keep ours.
        state = result.trace_state
        if state is None:
            state = get_current_span(parent_context).get_span_context().trace_state
        return SamplingResult(Decision.RECORD_ONLY, attributes, state)

    def get_description(self) -> str:
        return f"RecordLocally{{{self.inner.get_description()}}}"


def record_locally(tracer: Any) -> None:
    """Make an SDK tracer record every span locally (see the module docstring).

    A tracer that is not the SDK's (no ``sampler`` attribute) is left alone.
    """
    inner = getattr(tracer, "sampler", None)
    if isinstance(inner, Sampler) and not isinstance(inner, RecordLocally):
        tracer.sampler = RecordLocally(inner)
