"""What each decorator's span is: its kind, name, fields and semantic-convention
attributes, and the small helpers every call shares (counting a problem, cutting and
scrubbing an error text, reading a result)."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind

from . import _attributes as A
from ._state import Runtime, ratelimited_log


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
    # In a private chat the conversation is the user's own id.
    "conversation": _Field(A.CONVERSATION, pseudonymize=True),
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


def body_forms(body: str) -> list[str]:
    """The message body as an error text may echo it: as is, JSON-escaped (``Zo\\u00eb``
    and UTF-8), repr-escaped (an escaped newline), URL-encoded; and the start of each,
    which APIs often quote. Longest first, so a whole form goes before its prefix."""
    forms = {
        body,
        json.dumps(body)[1:-1],
        json.dumps(body, ensure_ascii=False)[1:-1],
        repr(body)[1:-1],
        urllib.parse.quote(body),
        urllib.parse.quote_plus(body),
    }
    forms |= {f[:n] for f in list(forms) for n in _BODY_PREFIXES if len(f) > n}
    return sorted((f for f in forms if len(f) >= _BODY_MIN_CHARS), key=len, reverse=True)


def _error_text(
    exc: BaseException, limit: int, secrets: Sequence[tuple[str, str]] = ()
) -> str:
    try:
        text = str(exc)
    except Exception:
        text = f"<unprintable {type(exc).__name__}>"
    # Cut first, so a 50 MB error text costs what a short one does: whatever starts
    # inside the limit, a secret included, is still whole in the cut text.
    # (One more character keeps the cut visible: the text ends with "…".)
    text = text[: limit + 1 + max((len(secret) for secret, _ in secrets), default=0)]
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
