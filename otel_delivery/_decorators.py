"""The four decorators: ``inbound``, ``ai_run``, ``deliver`` and ``enqueue``.

Each wraps a sync or async function or method in one span and returns exactly what
the function returns, raising exactly what it raises. Names, attribute extractors
and the span shape are worked out once, at decoration; a call pays for one span.
No exception from instrumentation reaches the caller: if our side fails, the call
runs plain and the failure is counted.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from ._call import _Call, _Plan
from ._classify import Classifier
from ._kinds import _AI_RUN, _DELIVER, _ENQUEUE, _INBOUND, _count, _Kind
from ._state import Runtime, current, is_configured

__all__ = ["ai_run", "deliver", "enqueue", "inbound"]

P = ParamSpec("P")
R = TypeVar("R")


class Decorator(Protocol):
    """What ``@deliver(...)`` and friends return: keeps the signature it wraps."""

    def __call__(self, func: Callable[P, R], /) -> Callable[P, R]: ...




_log = logging.getLogger("otel_delivery")
_warned_unconfigured = False


def warn_unconfigured(rt: Runtime) -> None:
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
            warn_unconfigured(rt)
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
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"otel_delivery decorators wrap a function that makes one call and returns; "
            f"{getattr(func, '__qualname__', func)!r} is a generator, whose outcome is "
            "known only when it is exhausted: decorate the function it calls for each send"
        )
    plan = plan_for(func)

    if _is_async(func):

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
            if inspect.isawaitable(result):
                return _outcome_when_awaited(call, result)
            call.succeeded(result)
            return result

        wrapper = sync_wrapper
    functools.update_wrapper(wrapper, func)
    return wrapper


def _is_async(func: Any) -> bool:
    """A coroutine function, or a callable object whose ``__call__`` is one."""
    if inspect.iscoroutinefunction(func):
        return True
    if inspect.isfunction(func) or inspect.ismethod(func) or isinstance(func, functools.partial):
        return False
    return inspect.iscoroutinefunction(type(func).__call__)


def _outcome_when_awaited(call: _Call, awaitable: Any) -> Any:
    """A sync function returned an awaitable (``return client.send(...)`` without
    ``await``): the send happens when it is awaited, so that is when its outcome is.

    A future or task is returned as is, with a callback; a coroutine is wrapped in one
    that awaits it and returns or raises exactly what it does.
    """
    call.release_context()  # the caller's context is restored now; the span ends later
    if isinstance(awaitable, asyncio.Future):
        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                call.failed(asyncio.CancelledError())
            elif future.exception() is not None:
                call.failed(future.exception())  # type: ignore[arg-type]
            else:
                call.succeeded(future.result())

        awaitable.add_done_callback(done)
        return awaitable

    async def awaited() -> Any:
        try:
            result = await awaitable
        except BaseException as exc:
            call.failed(exc)
            raise
        call.succeeded(result)
        return result

    return awaited()


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
