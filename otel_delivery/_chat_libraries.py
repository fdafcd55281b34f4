"""What the real chat client libraries' exceptions mean for a retry.

Gateways send through python-telegram-bot, aiogram or slack_sdk, and those
libraries already decode the service's answer into typed exceptions. Reading the
type (and, for Slack, the API's ``error`` code) is more exact than reading text.

None of these libraries is a dependency, and none is imported here: an exception
from a library means its module is in ``sys.modules``, so each table is consulted
only then. Anything a table does not place returns None, and the generic
classifier in ``_classify`` decides.

* python-telegram-bot: ``RetryAfter`` (with its retry-after hint), ``TimedOut`` and
  ``NetworkError`` (5xx, bad gateway, connection) are transient; ``BadRequest`` (chat
  not found, message is too long, any other 400), ``Forbidden`` (blocked, kicked),
  ``InvalidToken``, ``EndPointNotFound``, ``ChatMigrated`` and ``Conflict`` permanent.
* aiogram: ``TelegramRetryAfter``, ``TelegramServerError`` and ``TelegramNetworkError``
  are transient; ``TelegramEntityTooLarge``, ``TelegramBadRequest``,
  ``TelegramForbiddenError``, ``TelegramNotFound``, ``TelegramUnauthorizedError``,
  ``TelegramConflictError`` and ``TelegramMigrateToChat`` permanent.
* slack_sdk: ``SlackApiError`` by its response's ``error`` code
  (``SLACK_TRANSIENT_ERRORS``, ``SLACK_PERMANENT_ERRORS``), else by HTTP status (429 and
  5xx transient, other 4xx permanent); ``SlackRequestError`` and ``BotUserAccessError``
  permanent.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ._classify import FailureClass

__all__ = [
    "SLACK_PERMANENT_ERRORS",
    "SLACK_TRANSIENT_ERRORS",
    "classify_library_error",
    "retry_after_seconds",
]

# Slack Web API ``error`` codes (https://api.slack.com/methods/chat.postMessage and
# the common errors every method can return).
SLACK_TRANSIENT_ERRORS: Final = frozenset({
    "ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
    "request_timeout",
})
SLACK_PERMANENT_ERRORS: Final = frozenset({
    "channel_not_found", "not_in_channel", "is_archived", "msg_too_long", "no_text",
    "invalid_blocks", "too_many_attachments", "cannot_dm_bot", "user_not_found",
    "messages_tab_disabled", "restricted_action", "restricted_action_read_only_channel",
    "restricted_action_thread_only_channel", "invalid_auth", "not_authed",
    "account_inactive", "token_revoked", "token_expired", "no_permission", "missing_scope",
    "not_allowed_token_type", "team_access_not_granted", "invalid_arguments",
})

# Most specific first: in python-telegram-bot, BadRequest and TimedOut subclass
# NetworkError; in aiogram, TelegramEntityTooLarge subclasses TelegramNetworkError.
_TELEGRAM: Final[tuple[tuple[str, FailureClass], ...]] = (
    ("RetryAfter", "transient"),
    ("TimedOut", "transient"),
    ("BadRequest", "permanent"),
    ("Forbidden", "permanent"),
    ("InvalidToken", "permanent"),
    ("EndPointNotFound", "permanent"),
    ("ChatMigrated", "permanent"),
    ("Conflict", "permanent"),
    ("NetworkError", "transient"),
)
_AIOGRAM: Final[tuple[tuple[str, FailureClass], ...]] = (
    ("TelegramRetryAfter", "transient"),
    ("TelegramEntityTooLarge", "permanent"),
    ("TelegramServerError", "transient"),
    ("TelegramNetworkError", "transient"),
    ("TelegramBadRequest", "permanent"),
    ("TelegramForbiddenError", "permanent"),
    ("TelegramNotFound", "permanent"),
    ("TelegramUnauthorizedError", "permanent"),
    ("TelegramConflictError", "permanent"),
    ("TelegramMigrateToChat", "permanent"),
)
_SLACK_PERMANENT_TYPES: Final = ("SlackRequestError", "BotUserAccessError")

# A hint beyond a day is not a hint we would honour; it is kept, but capped.
_MAX_RETRY_AFTER_SECONDS: Final = 86_400.0


def _is(exc: BaseException, module_name: str, class_name: str) -> bool:
    module = sys.modules.get(module_name)
    cls = getattr(module, class_name, None) if module is not None else None
    return isinstance(cls, type) and isinstance(exc, cls)


def _by_table(
    exc: BaseException, module_name: str, table: tuple[tuple[str, FailureClass], ...]
) -> FailureClass | None:
    if module_name not in sys.modules:
        return None
    for class_name, verdict in table:
        if _is(exc, module_name, class_name):
            return verdict
    return None


def _status(response: Any) -> int | None:
    value = getattr(response, "status_code", None)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _slack(exc: BaseException) -> FailureClass | None:
    module = "slack_sdk.errors"
    if module not in sys.modules:
        return None
    if any(_is(exc, module, name) for name in _SLACK_PERMANENT_TYPES):
        return "permanent"
    if not _is(exc, module, "SlackApiError"):
        return None
    response = getattr(exc, "response", None)
    data = getattr(response, "data", None)
    code = data.get("error") if isinstance(data, Mapping) else None
    if code in SLACK_TRANSIENT_ERRORS:
        return "transient"
    if code in SLACK_PERMANENT_ERRORS:
        return "permanent"
    status = _status(response)
    if status is not None:
        if status == 429 or status >= 500:
            return "transient"
        if 400 <= status < 500:
            return "permanent"
    return None


def classify_library_error(exc: BaseException) -> FailureClass | None:
    """``"permanent"`` or ``"transient"`` for an exception a known chat library raised.

    None when ``exc`` is not one of theirs (or one this table does not place).

    >>> classify_library_error(ValueError("x")) is None
    True
    """
    return (
        _by_table(exc, "telegram.error", _TELEGRAM)
        or _by_table(exc, "aiogram.exceptions", _AIOGRAM)
        or _slack(exc)
    )


def _seconds(value: Any) -> float | None:
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    elif isinstance(value, str):
        if len(value) > 64:  # no number of seconds is this long; float() of it is slow
            return None
        try:
            value = float(value.strip())
        except ValueError:
            return None  # an HTTP-date Retry-After is not read
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, _MAX_RETRY_AFTER_SECONDS)


def _header(headers: Any, name: str) -> Any:
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is None:
        return None
    value = getter(name)
    if value is None and isinstance(headers, Mapping):
        # Plain dicts (slack_sdk's) keep the server's spelling of the header name.
        lowered = name.lower()
        value = next((v for k, v in headers.items() if str(k).lower() == lowered), None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value


def retry_after_seconds(exc: BaseException) -> float | None:
    """How long the service asked the sender to wait before retrying, if it said so.

    Read from python-telegram-bot's ``RetryAfter.retry_after``, a ``Retry-After``
    header on the exception's response (slack_sdk, httpx, requests), or any
    ``retry_after`` attribute (aiogram's ``TelegramRetryAfter``, your own errors),
    as seconds or a ``timedelta``. None when there is no usable hint; never raises.

    >>> class Flood(Exception):
    ...     retry_after = 7
    >>> retry_after_seconds(Flood())
    7.0
    """
    try:
        if "telegram.error" in sys.modules and _is(exc, "telegram.error", "RetryAfter"):
            # Since v22.2 the public property warns unless PTB_TIMEDELTA is set; the
            # stored timedelta says the same without a warning in the gateway's log.
            stored = getattr(exc, "_retry_after", None)
            if isinstance(stored, dt.timedelta):
                return _seconds(stored)
        hint = _seconds(getattr(exc, "retry_after", None))
        if hint is not None:
            return hint
        for owner in (getattr(exc, "response", None), exc):
            hint = _seconds(_header(getattr(owner, "headers", None), "Retry-After"))
            if hint is not None:
                return hint
    except Exception:
        return None
    return None
