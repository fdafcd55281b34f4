"""One decorated call: the per-function plan worked out at decoration, and the span
of one call in flight, from its start (carrier, identity, attributes) to its outcome.

No exception from here reaches the caller: the wrappers in ``_decorators`` catch and
count whatever a plan or a call raises, and the call runs plain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode

from . import _attributes as A
from ._chat_libraries import retry_after_seconds
from ._classify import Classifier, default_classifier, error_type_name
from ._extract import JunkValue, coerce_value, compile_extractor, compile_values
from ._identity import delivery_key
from ._kinds import (
    _AI_RUN,
    _BODY_MIN_CHARS,
    _CORRELATED,
    _DELIVER,
    _ENQUEUE,
    _FIELDS,
    _MIN_SCRUB_CHARS,
    BODY_PLACEHOLDER,
    _count,
    _default_message_id,
    _default_reply_produced,
    _error_text,
    _Kind,
    body_forms,
)
from ._propagation import (
    correlation_from,
    inject_into,
    parent_from_carrier,
    prior_attempt_links,
    record_attempt,
    with_correlation,
)
from ._state import Runtime, is_configured


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
        self.static_values, self.extractors = compile_values(values, func)
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
        carrier = self._carrier(rt, args, kwargs)
        parent: Context | None = None
        if carrier is not None:
            try:
                parent = parent_from_carrier(carrier)
                correlation_from(None, carrier)  # reads our keys: may raise too
            except Exception as exc:
                # A carrier that raises when read is ignored, never the attempt.
                _count(rt, "carrier_error", exc)
                carrier, parent = None, None
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
            try:
                links = prior_attempt_links(carrier, parent)
            except Exception as exc:
                _count(rt, "carrier_error", exc)
            parent_span = trace.get_current_span(ctx).get_span_context()
            if not parent_span.is_valid:
                _count(rt, "orphan_send")
            if "delivery_id" not in values:
                try:
                    key, _rule = delivery_key(
                        carrier, parent_span, values.get("channel"), values.get("recipient")
                    )
                except Exception as exc:  # the carrier raised: the parent span decides
                    _count(rt, "carrier_error", exc)
                    key, _rule = delivery_key(
                        None, parent_span, values.get("channel"), values.get("recipient")
                    )
                part = values.get("part")
                attributes[A.DELIVERY_ID] = key if part is None else f"{key}.{part}"
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
        call = _Call(self, rt, span, token, secrets, (args, kwargs) if self.keeps_args else None)
        if self.kind is _DELIVER and isinstance(carrier, MutableMapping):
            call.carrier = carrier
        return call

    def _carrier(
        self, rt: Runtime, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Mapping[str, Any] | None:
        """The call's carrier, or None (counted) when ``carrier=`` gave none."""
        if self.carrier is None:
            return None
        try:
            found = self.carrier(args, kwargs)
        except Exception as exc:
            _count(rt, "carrier_error", exc)
            return None
        if isinstance(found, Mapping):
            return found
        _count(rt, "carrier_missing" if found is None else "carrier_not_mapping")
        return None

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

    __slots__ = ("call_args", "carrier", "plan", "rt", "secrets", "span", "token")

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
        self.carrier: MutableMapping[str, Any] | None = None  # a deliver's, to settle

    def succeeded(self, result: Any) -> None:
        try:
            kind = self.plan.kind
            if self.plan.failed_if is not None and self._reported_failure(result):
                return
            if kind is _DELIVER:
                self.span.set_attribute(A.OUTCOME, "delivered")
                self.span.set_attribute(A.FINAL, True)
                self._record_message_id(result)
                if self.carrier is not None:
                    # Delivered: no retry follows, so the next send given this carrier
                    # (a second reply to the same message) is a delivery of its own.
                    self.carrier.pop(A.CARRIER_DELIVERY_ID, None)
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
                found[:0] = [(form, BODY_PLACEHOLDER) for form in body_forms(body)]
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

    def release_context(self) -> None:
        """Restore the caller's context now; the span ends when the outcome is known."""
        token, self.token = self.token, None
        if token is not None:
            try:
                otel_context.detach(token)  # type: ignore[arg-type]
            except Exception as exc:
                _count(self.rt, "instrumentation_error", exc)

    def _end(self) -> None:
        try:
            self.span.end()
        except Exception as exc:
            _count(self.rt, "instrumentation_error", exc)
        self.release_context()
