"""Is a failed send worth retrying? Permanent versus transient.

The default classifier first asks the tables for real client libraries
(python-telegram-bot, aiogram, slack_sdk; see ``_chat_libraries``), which apply
only to those libraries' own exceptions. Anything else is read generically from
the exception's type, HTTP status and message text:

* permanent: blocked by the user / bot kicked (403), chat or user not found,
  message too long, other 4xx client errors;
* transient: 429 / flood control / rate limits, timeouts, connection errors, 5xx.

Anything it cannot place is transient: a retry is cheaper than a lost reply, and
``max_attempts`` still bounds it. Only the first :data:`CLASSIFY_HEAD_CHARS` and last
:data:`CLASSIFY_TAIL_CHARS` characters of the message are read, so a failing call
pays the same for a megabyte of error text as for a line of it. Plug in your own
with ``configure(classifier=...)`` or a decorator's ``classifier=``; return None from
it to fall back to this one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Literal

from ._chat_libraries import classify_library_error

__all__ = [
    "CLASSIFY_HEAD_CHARS", "CLASSIFY_TAIL_CHARS", "Classifier", "FailureClass",
    "classify_text", "default_classifier", "error_type_name",
]

# Services put what went wrong first ("Forbidden: bot was blocked by the user"), and
# wrappers sometimes last ("... (429 Too Many Requests)"): both ends are read.
CLASSIFY_HEAD_CHARS = 1024
CLASSIFY_TAIL_CHARS = 256

FailureClass = Literal["permanent", "transient"]
Classifier = Callable[[BaseException], "FailureClass | None"]

_PERMANENT_TEXT = re.compile(
    r"blocked by (the )?user|bot was blocked|bot was kicked|user is deactivated|"
    r"chat not found|user not found|recipient not found|peer_id_invalid|"
    r"message is too long|message too long|text is too long|too long|"
    r"channel_not_found|not_in_channel|is_archived|account_inactive|invalid_auth|"
    r"forbidden|unauthorized|have no rights",
    re.IGNORECASE,
)
_TRANSIENT_TEXT = re.compile(
    r"too many requests|flood|rate.?limit|ratelimited|retry after|retry_after|"
    r"timed? ?out|timeout|temporarily|unavailable|bad gateway|internal server error|"
    r"connection (reset|refused|aborted|error)|network",
    re.IGNORECASE,
)


def _status_code(exc: BaseException) -> int | None:
    for owner in (exc, getattr(exc, "response", None)):
        if owner is None:
            continue
        for name in ("status_code", "status", "http_status", "error_code", "code"):
            value = getattr(owner, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
    return None


def default_classifier(exc: BaseException) -> FailureClass:
    """Classify ``exc`` as ``"permanent"`` or ``"transient"``.

    >>> default_classifier(TimeoutError("read timed out"))
    'transient'
    >>> default_classifier(RuntimeError("Forbidden: bot was blocked by the user"))
    'permanent'
    """
    verdict = classify_library_error(exc)
    if verdict is not None:
        return verdict
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return "transient"
    status = _status_code(exc)
    if status is not None:
        if status in (408, 425, 429) or status >= 500:
            return "transient"
        if 400 <= status < 500:
            return "permanent"
    try:
        message = str(exc)
    except Exception:
        message = ""
    return classify_text(f"{type(exc).__name__}: {_ends(message)}")


def _ends(text: str) -> str:
    if len(text) <= CLASSIFY_HEAD_CHARS + CLASSIFY_TAIL_CHARS:
        return text
    # A space between, so no phrase is made up of the two ends.
    return f"{text[:CLASSIFY_HEAD_CHARS]} … {text[-CLASSIFY_TAIL_CHARS:]}"


def classify_text(text: str) -> FailureClass:
    """Classify an error by its text alone (the generic rules' last step)."""
    if _TRANSIENT_TEXT.search(text):
        return "transient"
    if _PERMANENT_TEXT.search(text):
        return "permanent"
    return "transient"


def error_type_name(exc: BaseException) -> str:
    """The fully qualified class name, as ``error.type`` wants it: ``module.QualName``
    for every class (``__main__.SendError`` too), builtins alone unqualified."""
    cls = type(exc)
    module = getattr(cls, "__module__", "") or ""
    if module == "builtins" or not module:
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"
