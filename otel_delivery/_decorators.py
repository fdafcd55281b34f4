"""The four decorators: ``inbound``, ``ai_run``, ``deliver`` and ``enqueue``.

Each wraps a sync or async function or method in one span and returns exactly what
the function returns, raising exactly what it raises. Names, attribute extractors
and the span shape are worked out once, at decoration; a call pays for one span.
No exception from instrumentation reaches the caller: if our side fails, the call
runs plain and the failure is counted.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from . import _attributes as A
from ._chat_libraries import retry_after_seconds
from ._classify import Classifier, default_classifier, error_type_name
from ._extract import Extractor, JunkValue, coerce_value, compile_extractor
from ._identity import delivery_key
from ._propagation import (
    correlation_from,
    inject_into,
    parent_from_carrier,
    prior_attempt_links,
    record_attempt,
    with_correlation,
)
from ._state import Runtime, current, is_configured, ratelimited_log

__all__ = ["ai_run", "deliver", "enqueue", "inbound"]

P = ParamSpec("P")
R = TypeVar("R")


class Decorator(Protocol):
    """What ``@deliver(...)`` and friends return: keeps the signature it wraps."""

    def __call__(self, func: Callable[P, R], /) -> Callable[P, R]: ...


@dataclass(frozen=True)
class _Field:
    """One per-call value a decorator accepts, and where it goes on the span."""

    attribute: str
    mirrors: tuple[str, ...] = ()  # semantic-convention attributes given the same value
    as_int: bool = False
    identifier: bool = True  # stored as text
    pseudonymize: bool = False


_FIELDS: dict[str, _Field] = {
    "channel": _Field(A.CHANNEL),
    "recipient": _Field(A.RECIPIENT, pseudonymize=True),
    "sender": _Field(A.SENDER, pseudonymize=True),
    "inbound_id": _Field(A.INBOUND_ID),
    "delivery_id": _Field(A.DELIVERY_ID),
    "attempt": _Field(A.ATTEMPT, as_int=True, identifier=False),
    "max_attempts": _Field(A.MAX_ATTEMPTS, as_int=True, identifier=False),
    "conversation": _Field(A.CONVERSATION),
    "part": _Field(A.PART),
    "agent": _Field(A.GEN_AI_AGENT_NAME),
    "provider": _Field(A.GEN_AI_PROVIDER_NAME),
    "model": _Field(A.GEN_AI_REQUEST_MODEL),
}


@dataclass(frozen=True)
class _Kind:
    name: str
    operation: str  # span name prefix
    span_kind: SpanKind
    name_field: str  # the field whose value completes the span name
    fields: tuple[str, ...]
    static: tuple[tuple[str, str], ...]
    mirrors: tuple[tuple[str, str], ...]  # (field, semconv attribute)
    writes_carrier: bool


_INBOUND = _Kind(
    A.KIND_INBOUND, "process", SpanKind.CONSUMER, "channel",
    ("channel", "sender", "inbound_id", "conversation"),
    ((A.MESSAGING_OPERATION_TYPE, "process"), (A.MESSAGING_OPERATION_NAME, "process")),
    (("channel", A.MESSAGING_SYSTEM), ("channel", A.MESSAGING_DESTINATION_NAME),
     ("inbound_id", A.MESSAGING_MESSAGE_ID), ("conversation", A.MESSAGING_CONVERSATION_ID)),
    writes_carrier=True,
)
_AI_RUN = _Kind(
    A.KIND_AI_RUN, "invoke_agent", SpanKind.INTERNAL, "agent",
    ("channel", "inbound_id", "conversation", "agent", "model", "provider"),
    ((A.GEN_AI_OPERATION_NAME, "invoke_agent"),),
    (("conversation", A.GEN_AI_CONVERSATION_ID),),
    writes_carrier=True,
)
# A chat-API send is a CLIENT span (messaging conventions v2): the trace context is
# not injected into the outgoing message, which the platform delivers, not a consumer.
_DELIVER = _Kind(
    A.KIND_DELIVER, "send", SpanKind.CLIENT, "channel",
    ("channel", "recipient", "inbound_id", "delivery_id", "attempt", "max_attempts",
     "conversation", "part"),
    ((A.MESSAGING_OPERATION_TYPE, "send"), (A.MESSAGING_OPERATION_NAME, "send")),
    (("channel", A.MESSAGING_SYSTEM), ("channel", A.MESSAGING_DESTINATION_NAME),
     ("conversation", A.MESSAGING_CONVERSATION_ID)),
    writes_carrier=False,
)
_ENQUEUE = _Kind(
    A.KIND_ENQUEUE, "enqueue", SpanKind.PRODUCER, "channel",
    ("channel", "recipient", "inbound_id", "delivery_id", "conversation"),
    ((A.MESSAGING_OPERATION_TYPE, "create"), (A.MESSAGING_OPERATION_NAME, "enqueue")),
    (("channel", A.MESSAGING_SYSTEM), ("channel", A.MESSAGING_DESTINATION_NAME),
     ("conversation", A.MESSAGING_CONVERSATION_ID)),
    writes_carrier=False,
)
# Correlation fields flow down the trace; later stages inherit them unless given.
_CORRELATED = ("inbound_id", "channel", "conversation")


def _count(rt: Runtime, reason: str, exc: BaseException | None = None) -> None:
    detail = None
    if exc is not None:
        try:
            detail = f"{type(exc).__name__}: {exc}"[:200]
        except Exception:
            detail = type(exc).__name__
    rt.counters.add(reason, 1, detail)
    ratelimited_log.warning(
        reason, "otel-delivery instrumentation problem (%s): %s", reason, detail
    )


# Secrets shorter than this are not scrubbed from error texts: replacing every "42"
# would garble "429 Too Many Requests" and hide nothing.
_MIN_SCRUB_CHARS = 5
_BODY_MIN_CHARS = 8
_BODY_PREFIXES = (64, 32)  # APIs often echo the start of a message they reject
BODY_PLACEHOLDER = "[message body]"


def _error_text(
    exc: BaseException, limit: int, secrets: Sequence[tuple[str, str]] = ()
) -> str:
    try:
        text = str(exc)
    except Exception:
        text = f"<unprintable {type(exc).__name__}>"
    text = text.encode("utf-8", "replace").decode("utf-8")
    for secret, replacement in secrets:
        if secret in text:
            text = text.replace(secret, replacement)
    if len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return text


def _default_message_id(result: Any) -> Any:
    """The provider's id for a sent message, when the result exposes a usual one."""
    if result is None:
        return None
    if not isinstance(result, Mapping):
        data = getattr(result, "data", None)  # slack_sdk's SlackResponse
        if isinstance(data, Mapping):
            result = data
    if isinstance(result, Mapping):
        for key in ("message_id", "ts", "id"):
            if key in result:
                return result[key]
        return None
    return getattr(result, "message_id", None)


def _default_reply_produced(result: Any) -> bool:
    return result is not None and result != "" and result is not False


class _Plan:
    """Everything about a decorated function that does not change between calls."""

    def __init__(
        self,
        kind: _Kind,
        func: Callable[..., Any],
        values: dict[str, Any],
        *,
        carrier: Any,
        body: Any,
        attributes: Mapping[str, Any] | None,
        classifier: Classifier | None,
        result_value: Callable[[Any], Any] | None,
        failed_if: Callable[[Any], bool] | None,
        record_if: Callable[..., Any] | None = None,
        retryable: Callable[..., Any] | None = None,
        reply_carrier: Any = None,
    ) -> None:
        self.kind = kind
        static: dict[str, Any] = {A.KIND: kind.name}
        static.update(kind.static)
        for key, value in (attributes or {}).items():
            try:
                static[str(key)] = coerce_value(value)
            except JunkValue as exc:
                raise TypeError(f"attributes[{key!r}]: {exc}") from None
        self.static_values: dict[str, Any] = {}
        self.extractors: list[tuple[str, Extractor]] = []
        for field_name, spec in values.items():
            if spec is None:
                continue
            extractor = compile_extractor(spec, func)
            if extractor is None:
                self.static_values[field_name] = spec
            else:
                self.extractors.append((field_name, extractor))
        self.static_attributes = static
        self.carrier = compile_extractor(carrier, func) if carrier is not None else None
        if carrier is not None and self.carrier is None:
            raise TypeError("carrier= takes arg('param.path') or a callable, not a fixed value")
        self.body = compile_extractor(body, func) if body is not None else None
        if body is not None and self.body is None:
            raise TypeError("body= takes arg('param.path') or a callable, not a fixed value")
        self.reply_carrier = (
            compile_extractor(reply_carrier, func) if reply_carrier is not None else None
        )
        if reply_carrier is not None and self.reply_carrier is None:
            raise TypeError(
                "reply_carrier= takes arg('param.path') or a callable, not a fixed value"
            )
        for name, fn in (("record_if", record_if), ("retryable", retryable)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name}= takes a callable, got {type(fn).__name__}")
        self.record_if = record_if
        self.retryable = retryable
        self.classifier = classifier
        self.result_value = result_value
        self.failed_if = failed_if
        self.keeps_args = body is not None or retryable is not None
        qualname = getattr(func, "__qualname__", None) or type(func).__name__
        self.code_function = str(qualname)

    # -- per call ----------------------------------------------------------------------

    def values_for(
        self, rt: Runtime, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """The call's attribute values, and (raw id, pseudonym) pairs to scrub from errors."""
        secrets: list[tuple[str, str]] = []
        raw: dict[str, Any] = dict(self.static_values)
        for field_name, extractor in self.extractors:
            try:
                raw[field_name] = extractor(args, kwargs)
            except Exception as exc:
                _count(rt, "extractor_error", exc)
        values: dict[str, Any] = {}
        for field_name, value in raw.items():
            spec = _FIELDS[field_name]
            try:
                clean = coerce_value(value, as_int=spec.as_int)
            except JunkValue as exc:
                _count(rt, "extractor_junk", exc)
                continue
            if clean is None:
                continue
            if spec.identifier:
                clean = str(clean)
                if spec.pseudonymize and rt.pseudonymize is not None:
                    pseudonym = rt.pseudonymize(clean)
                    if len(clean) >= _MIN_SCRUB_CHARS:
                        secrets.append((clean, pseudonym))
                    clean = pseudonym
            values[field_name] = clean
        return values, secrets

    def begin(self, rt: Runtime, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call | None:
        carrier: Mapping[str, Any] | None = None
        if self.carrier is not None:
            try:
                found = self.carrier(args, kwargs)
            except Exception as exc:
                _count(rt, "carrier_error", exc)
                found = None
            if isinstance(found, Mapping):
                carrier = found
            elif found is None:
                _count(rt, "carrier_missing")
            else:
                _count(rt, "carrier_not_mapping")
        parent: Context | None = None
        if carrier is not None:
            try:
                parent = parent_from_carrier(carrier)
            except Exception as exc:
                _count(rt, "carrier_error", exc)
        ctx = parent if parent is not None else otel_context.get_current()

        values, secrets = self.values_for(rt, args, kwargs)
        corr = correlation_from(ctx, carrier)
        for name in _CORRELATED:
            if name in values:
                corr[name] = str(values[name])
            elif name in corr and name in self.kind.fields:
                values[name] = corr[name]

        attributes = dict(self.static_attributes)
        for name, value in values.items():
            attributes[_FIELDS[name].attribute] = value
        for name, semconv in self.kind.mirrors:
            if name in values:
                attributes[semconv] = values[name]
        suffix = values.get(self.kind.name_field)
        span_name = f"{self.kind.operation} {suffix}" if suffix else self.kind.operation

        links: list[Link] = []
        if self.kind is _DELIVER:
            links = prior_attempt_links(carrier, parent)
            parent_span = trace.get_current_span(ctx).get_span_context()
            if not parent_span.is_valid:
                _count(rt, "orphan_send")
            if "delivery_id" not in values:
                try:
                    key, _rule = delivery_key(
                        carrier, parent_span, values.get("channel"), values.get("recipient")
                    )
                except Exception as exc:
                    _count(rt, "carrier_error", exc)
                else:
                    part = values.get("part")
                    delivery_id = key if part is None else f"{key}.{part}"
                    attributes[A.DELIVERY_ID] = delivery_id
        span = rt.tracer.start_span(
            span_name,
            context=ctx,
            kind=self.kind.span_kind,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )
        if not span.is_recording() and is_configured(rt):
            # Head-sampled out: this step reaches neither the exporter nor the store.
            rt.counters.add("not_recorded")
        new_ctx = trace.set_span_in_context(span, with_correlation(ctx, corr))
        token = otel_context.attach(new_ctx)
        if isinstance(carrier, MutableMapping):
            try:
                if self.kind.writes_carrier:
                    inject_into(carrier, new_ctx, corr)
                elif self.kind is _DELIVER and span.get_span_context().is_valid:
                    # Recorded before the send, so an attempt cut short by a crash is
                    # still linked from the retry if the gateway persisted the entry.
                    record_attempt(carrier, span.get_span_context().span_id)
            except Exception as exc:
                _count(rt, "carrier_error", exc)
        if self.reply_carrier is not None:
            self._write_reply_carrier(rt, args, kwargs, new_ctx, corr)
        return _Call(self, rt, span, token, secrets, (args, kwargs) if self.keeps_args else None)

    def _write_reply_carrier(
        self, rt: Runtime, args: tuple[Any, ...], kwargs: dict[str, Any],
        ctx: Context, corr: dict[str, str],
    ) -> None:
        """Continue the reply's carrier from this run, so its sends are the run's children
        (for gateways that copy the inbound's metadata into the reply before the run)."""
        if self.reply_carrier is None:
            return
        try:
            found = self.reply_carrier(args, kwargs)
        except Exception as exc:
            _count(rt, "carrier_error", exc)
            return
        if found is None:
            _count(rt, "carrier_missing")
        elif not isinstance(found, MutableMapping):
            _count(rt, "carrier_not_mapping")
        else:
            try:
                inject_into(found, ctx, corr)
            except Exception as exc:
                _count(rt, "carrier_error", exc)


class _Call:
    """One decorated call in flight."""

    __slots__ = ("call_args", "plan", "rt", "secrets", "span", "token")

    def __init__(
        self,
        plan: _Plan,
        rt: Runtime,
        span: Span,
        token: object,
        secrets: list[tuple[str, str]],
        call_args: tuple[tuple[Any, ...], dict[str, Any]] | None,
    ) -> None:
        self.plan = plan
        self.rt = rt
        self.span = span
        self.token = token
        self.secrets = secrets
        self.call_args = call_args  # kept only to find the body when a call fails

    def succeeded(self, result: Any) -> None:
        try:
            kind = self.plan.kind
            if self.plan.failed_if is not None and self._reported_failure(result):
                return
            if kind is _DELIVER:
                self.span.set_attribute(A.OUTCOME, "delivered")
                self.span.set_attribute(A.FINAL, True)
                self._record_message_id(result)
            elif kind is _ENQUEUE:
                self.span.set_attribute(A.OUTCOME, "ok")
            elif kind is _AI_RUN:
                produced = self._reply_produced(result)
                if produced is not None:
                    self.span.set_attribute(A.REPLY_PRODUCED, produced)
        except Exception as exc:
            _count(self.rt, "instrumentation_error", exc)
        finally:
            self._end()

    def _scrub_list(self) -> list[tuple[str, str]]:
        """What to take out of an error text: the message body, and raw ids."""
        found = list(self.secrets)
        if self.plan.body is not None and self.call_args is not None:
            try:
                body = self.plan.body(*self.call_args)
            except Exception as exc:
                _count(self.rt, "extractor_error", exc)
                body = None
            if isinstance(body, bytes):
                body = body.decode("utf-8", "replace")
            if isinstance(body, str) and len(body) >= _BODY_MIN_CHARS:
                found.insert(0, (body, BODY_PLACEHOLDER))
                found.extend(
                    (body[:n], BODY_PLACEHOLDER) for n in _BODY_PREFIXES if len(body) > n
                )
        return found

    def _reported_failure(self, result: Any) -> bool:
        """The function returned normally but ``failed_if`` says it failed."""
        try:
            failed = bool(self.plan.failed_if(result)) if self.plan.failed_if else False
        except Exception as exc:
            _count(self.rt, "extractor_error", exc)
            return False
        if failed:
            self._mark_failed("otel_delivery.ReportedFailure", "the call reported failure", None)
        return failed

    def _record_message_id(self, result: Any) -> None:
        pick = self.plan.result_value or _default_message_id
        try:
            value = coerce_value(pick(result))
        except Exception as exc:
            _count(self.rt, "extractor_error", exc)
            return
        if value is not None:
            self.span.set_attribute(A.PROVIDER_MESSAGE_ID, str(value))
            self.span.set_attribute(A.MESSAGING_MESSAGE_ID, str(value))

    def _reply_produced(self, result: Any) -> bool | None:
        pick = self.plan.result_value or _default_reply_produced
        try:
            return bool(pick(result))
        except Exception as exc:
            _count(self.rt, "extractor_error", exc)
            return None

    def failed(self, exc: BaseException) -> None:
        try:
            text = _error_text(exc, self.rt.error_text_limit, self._scrub_list())
            self._mark_failed(error_type_name(exc), text, exc)
        except Exception as inner:
            _count(self.rt, "instrumentation_error", inner)
        finally:
            self._end()

    def _mark_failed(self, error_type: str, text: str, exc: BaseException | None) -> None:
        span = self.span
        kind = self.plan.kind
        interrupted = exc is not None and not isinstance(exc, Exception)
        span.set_attribute(A.ERROR_TYPE, error_type)
        span.set_attribute(A.ERROR_MESSAGE, text)
        span.set_status(Status(StatusCode.ERROR, text))
        span.add_event("exception", {"exception.type": error_type, "exception.message": text})
        if kind is not _DELIVER:
            span.set_attribute(A.OUTCOME, "failed")
            return
        if interrupted:
            # Cancelled or stopped mid-send: not a verdict on the message, so neither
            # permanent nor transient, and not final.
            span.set_attribute(A.OUTCOME, "interrupted")
            return
        span.set_attribute(A.OUTCOME, "failed")
        retry = self._retryable(exc) if exc is not None else None
        if retry is None:
            failure_class = self._classify(exc) if exc is not None else "transient"
        else:
            failure_class = "transient" if retry else "permanent"
        span.set_attribute(A.FAILURE_CLASS, failure_class)
        hint = retry_after_seconds(exc) if exc is not None else None
        if hint is not None:
            span.set_attribute(A.RETRY_AFTER_SECONDS, hint)
        span.set_attribute(A.FINAL, self._final(failure_class))

    def _retryable(self, exc: BaseException) -> bool | None:
        """The gateway's own retry decision (``retryable=``), or None when not given."""
        predicate = self.plan.retryable
        if predicate is None or self.call_args is None:
            return None
        args, kwargs = self.call_args
        try:
            return bool(predicate(exc, *args, **kwargs))
        except Exception as inner:
            _count(self.rt, "classifier_error", inner)
            return None

    def _classify(self, exc: BaseException) -> str:
        for classifier in (self.plan.classifier, self.rt.classifier):
            if classifier is None:
                continue
            try:
                verdict = classifier(exc)
            except Exception as inner:
                _count(self.rt, "classifier_error", inner)
                continue
            if verdict in ("permanent", "transient"):
                return verdict
        return default_classifier(exc)

    def _final(self, failure_class: str) -> bool:
        """No retry follows: a permanent failure, or the gateway's last allowed attempt.
        A transient failure with no known limit is not final; if no retry comes within
        the retry window, readers report the delivery ``abandoned``."""
        if failure_class == "permanent":
            return True
        attributes = getattr(self.span, "attributes", None) or {}
        attempt = attributes.get(A.ATTEMPT)
        limit = attributes.get(A.MAX_ATTEMPTS)
        if isinstance(attempt, int) and isinstance(limit, int):
            return attempt >= limit
        return False

    def _end(self) -> None:
        try:
            self.span.end()
        except Exception as exc:
            _count(self.rt, "instrumentation_error", exc)
        try:
            otel_context.detach(self.token)  # type: ignore[arg-type]
        except Exception as exc:
            _count(self.rt, "instrumentation_error", exc)


_log = logging.getLogger("otel_delivery")
_warned_unconfigured = False


def _warn_unconfigured(rt: Runtime) -> None:
    global _warned_unconfigured
    rt.counters.add("unconfigured_call")
    if not _warned_unconfigured:
        _warned_unconfigured = True
        _log.warning(
            "otel-delivery: a decorated function ran before otel_delivery.configure(); "
            "nothing is recorded in the local store until configure() is called at start-up "
            "(this warning is shown once per process; later calls are counted as "
            "'unconfigured_call')"
        )


def _wanted(plan: _Plan, rt: Runtime, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``record_if``'s answer; a predicate that raises records the call (and is counted)."""
    if plan.record_if is None:
        return True
    try:
        return bool(plan.record_if(*args, **kwargs))
    except Exception as exc:
        _count(rt, "record_if_error", exc)
        return True


def _begin(plan: _Plan, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call | None:
    try:
        rt = current()
        if not rt.enabled:
            return None
        if not is_configured(rt):
            _warn_unconfigured(rt)
        if not _wanted(plan, rt, args, kwargs):
            return None
        return plan.begin(rt, args, kwargs)
    except Exception as exc:
        try:
            _count(current(), "instrumentation_error", exc)
        except Exception:
            pass
        return None


def _wrap(plan_for: Callable[[Callable[..., Any]], _Plan], func: Any) -> Any:
    if isinstance(func, (staticmethod, classmethod)):
        return type(func)(_wrap(plan_for, func.__func__))
    if not callable(func):
        raise TypeError(f"otel_delivery decorators wrap functions, got {type(func).__name__}")
    plan = plan_for(func)

    if inspect.iscoroutinefunction(func):

        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            call = _begin(plan, args, kwargs)
            if call is None:
                return await func(*args, **kwargs)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                call.failed(exc)
                raise
            call.succeeded(result)
            return result

        wrapper: Any = async_wrapper
    else:

        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            call = _begin(plan, args, kwargs)
            if call is None:
                return func(*args, **kwargs)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                call.failed(exc)
                raise
            call.succeeded(result)
            return result

        wrapper = sync_wrapper
    functools.update_wrapper(wrapper, func)
    return wrapper


def _decorator(
    kind: _Kind,
    func: Any,
    values: dict[str, Any],
    **plan_kwargs: Any,
) -> Any:
    unknown = set(values) - set(kind.fields)
    if unknown:  # pragma: no cover - the public signatures prevent it
        raise TypeError(f"{kind.name} does not take {', '.join(sorted(unknown))}")

    def plan_for(target: Callable[..., Any]) -> _Plan:
        return _Plan(kind, target, values, **plan_kwargs)

    if func is not None:
        return _wrap(plan_for, func)
    return lambda f: _wrap(plan_for, f)


@overload
def inbound(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def inbound(
    *,
    channel: Any = None,
    sender: Any = None,
    inbound_id: Any = None,
    conversation: Any = None,
    carrier: Any = None,
    body: Any = None,
    attributes: Mapping[str, Any] | None = None,
    record_if: Callable[..., Any] | None = None,
) -> Decorator: ...
def inbound(
    func: Any = None,
    /,
    *,
    channel: Any = None,
    sender: Any = None,
    inbound_id: Any = None,
    conversation: Any = None,
    carrier: Any = None,
    body: Any = None,
    attributes: Mapping[str, Any] | None = None,
    record_if: Callable[..., Any] | None = None,
) -> Any:
    """Wrap the handler of one inbound message: a ``process {channel}`` CONSUMER span.

    It starts the trace, or continues a W3C ``traceparent`` found in ``carrier``,
    then writes its own context into ``carrier`` for the next stage:

    >>> @inbound(channel="telegram", inbound_id=arg("msg.id"), carrier=arg("msg.meta"))
    ... async def on_message(msg): ...  # doctest: +SKIP
    """
    values = dict(channel=channel, sender=sender, inbound_id=inbound_id, conversation=conversation)
    return _decorator(
        _INBOUND, func, values, carrier=carrier, body=body, attributes=attributes,
        classifier=None, result_value=None, failed_if=None, record_if=record_if,
    )


@overload
def ai_run(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def ai_run(
    *,
    agent: Any = None,
    model: Any = None,
    provider: Any = None,
    channel: Any = None,
    inbound_id: Any = None,
    conversation: Any = None,
    carrier: Any = None,
    reply_carrier: Any = None,
    body: Any = None,
    reply_produced: Callable[[Any], bool] | None = None,
    attributes: Mapping[str, Any] | None = None,
    record_if: Callable[..., Any] | None = None,
) -> Decorator: ...
def ai_run(
    func: Any = None,
    /,
    *,
    agent: Any = None,
    model: Any = None,
    provider: Any = None,
    channel: Any = None,
    inbound_id: Any = None,
    conversation: Any = None,
    carrier: Any = None,
    reply_carrier: Any = None,
    body: Any = None,
    reply_produced: Callable[[Any], bool] | None = None,
    attributes: Mapping[str, Any] | None = None,
    record_if: Callable[..., Any] | None = None,
) -> Any:
    """Wrap the AI agent run: an ``invoke_agent {agent}`` span, child of the inbound span.

    ``reply_produced(result)`` says whether the run produced a reply to deliver
    (default: the result is not None, "" or False); a produced reply that is never
    delivered shows up in ``otel-delivery undelivered``. ``provider`` is the GenAI
    provider (``gen_ai.provider.name``: ``openai``, ``anthropic``, ...).

    ``reply_carrier``: the carrier of the reply this run produces, when the gateway
    copies the inbound's metadata into the reply *before* the run; the run writes its
    own context into it, so the sends continue from the run, not the inbound.

    >>> @ai_run(agent="support-bot", carrier=arg("msg.meta"))
    ... async def run_agent(msg): ...  # doctest: +SKIP
    """
    values = dict(
        agent=agent, model=model, provider=provider, channel=channel, inbound_id=inbound_id,
        conversation=conversation,
    )
    return _decorator(
        _AI_RUN, func, values, carrier=carrier, body=body, attributes=attributes,
        classifier=None, result_value=reply_produced, failed_if=None, record_if=record_if,
        reply_carrier=reply_carrier,
    )


@overload
def deliver(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def deliver(
    *,
    channel: Any = None,
    recipient: Any = None,
    delivery_id: Any = None,
    part: Any = None,
    attempt: Any = None,
    max_attempts: Any = None,
    inbound_id: Any = None,
    conversation: Any = None,
    carrier: Any = None,
    body: Any = None,
    message_id: Callable[[Any], Any] | None = None,
    failed_if: Callable[[Any], bool] | None = None,
    classifier: Classifier | None = None,
    retryable: Callable[..., Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
    record_if: Callable[..., Any] | None = None,
) -> Decorator: ...
def deliver(
    func: Any = None,
    /,
    *,
    channel: Any = None,
    recipient: Any = None,
    delivery_id: Any = None,
    part: Any = None,
    attempt: Any = None,
    max_attempts: Any = None,
    inbound_id: Any = None,
    conversation: Any = None,
    carrier: Any = None,
    body: Any = None,
    message_id: Callable[[Any], Any] | None = None,
    failed_if: Callable[[Any], bool] | None = None,
    classifier: Classifier | None = None,
    retryable: Callable[..., Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
    record_if: Callable[..., Any] | None = None,
) -> Any:
    """Wrap the function that makes **one** delivery attempt: a ``send {channel}`` span.

    The attempt's row is committed to the local store before the function runs. A
    normal return means delivered (``message_id(result)`` picks the provider's id;
    by default ``result.message_id`` or a ``message_id``/``ts``/``id`` key); an
    exception means failed, classified permanent or transient. Without ``attempt``,
    the number is derived from the attempts already stored for the delivery.

    Without ``delivery_id``, the delivery is found as ``_identity`` documents: the
    carrier's delivery key, else the parent span, channel and recipient; ``part``
    tells apart several messages sent for one reply. ``retryable(exc, *args,
    **kwargs)`` hands over the gateway's own retry decision: False makes the failure
    permanent and final. ``record_if(*args, **kwargs)`` returning False leaves a call
    (a typing or progress event) unrecorded.

    >>> @deliver(channel="slack", delivery_id=arg("job.id"), max_attempts=5,
    ...          carrier=arg("job.trace"))
    ... def send(job): ...  # doctest: +SKIP
    """
    values = dict(
        channel=channel, recipient=recipient, delivery_id=delivery_id, part=part,
        attempt=attempt, max_attempts=max_attempts, inbound_id=inbound_id,
        conversation=conversation,
    )
    return _decorator(
        _DELIVER, func, values, carrier=carrier, body=body, attributes=attributes,
        classifier=classifier, result_value=message_id, failed_if=failed_if,
        record_if=record_if, retryable=retryable,
    )


@overload
def enqueue(func: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def enqueue(
    *,
    channel: Any = None,
    recipient: Any = None,
    delivery_id: Any = None,
    inbound_id: Any = None,
    conversation: Any = None,
    carrier: Any = None,
    body: Any = None,
    failed_if: Callable[[Any], bool] | None = None,
    attributes: Mapping[str, Any] | None = None,
    record_if: Callable[..., Any] | None = None,
) -> Decorator: ...
def enqueue(
    func: Any = None,
    /,
    *,
    channel: Any = None,
    recipient: Any = None,
    delivery_id: Any = None,
    inbound_id: Any = None,
    conversation: Any = None,
    carrier: Any = None,
    body: Any = None,
    failed_if: Callable[[Any], bool] | None = None,
    attributes: Mapping[str, Any] | None = None,
    record_if: Callable[..., Any] | None = None,
) -> Any:
    """Wrap the function that puts a reply on the gateway's delivery queue.

    A failure is recorded as an enqueue failure even when the gateway catches and
    swallows the exception (``.catch(() => null)``); ``failed_if(result)`` also marks
    a failure the function reports by returning, say, None.

    >>> @enqueue(channel=arg("reply.channel"))
    ... def enqueue_reply(reply): ...  # doctest: +SKIP
    """
    values = dict(
        channel=channel, recipient=recipient, delivery_id=delivery_id, inbound_id=inbound_id,
        conversation=conversation,
    )
    return _decorator(
        _ENQUEUE, func, values, carrier=carrier, body=body, attributes=attributes,
        classifier=None, result_value=None, failed_if=failed_if, record_if=record_if,
    )
