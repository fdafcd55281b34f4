"""Real client libraries' exceptions: permanent or transient, and the retry-after hint.

Every exception here is the library's own class, built the way the library builds it;
the end-to-end tests (test_chat_e2e.py) get the same ones from the real clients.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import warnings

import pytest
import slack_sdk.errors
import telegram.error as tg
from aiogram import exceptions as ag
from aiogram.methods import SendMessage
from slack_sdk.web.slack_response import SlackResponse

import otel_delivery
from otel_delivery import arg, default_classifier, retry_after_seconds
from otel_delivery._chat_libraries import classify_library_error

from .conftest import Traced


def slack_error(error: str, status: int = 200, headers: dict[str, str] | None = None) -> Exception:
    response = SlackResponse(
        client=None, http_verb="POST", api_url="http://127.0.0.1/api/chat.postMessage",
        req_args={}, data={"ok": False, "error": error}, headers=headers or {},
        status_code=status,
    )
    return slack_sdk.errors.SlackApiError("The request to the Slack API failed.", response)


def flood(retry_after: int | dt.timedelta) -> tg.RetryAfter:
    with warnings.catch_warnings():  # PTB's own constructor reads its deprecated property
        warnings.simplefilter("ignore")
        return tg.RetryAfter(retry_after)


def aiogram_error(cls: type[ag.TelegramAPIError], message: str, **extra: int) -> Exception:
    return cls(method=SendMessage(chat_id=1, text="hi"), message=message, **extra)


CASES = [
    # python-telegram-bot
    ("ptb RetryAfter", flood(7), "transient"),
    ("ptb TimedOut", tg.TimedOut(), "transient"),
    ("ptb NetworkError 500", tg.NetworkError("Internal Server Error"), "transient"),
    ("ptb NetworkError 502", tg.NetworkError("Bad Gateway"), "transient"),
    ("ptb Forbidden blocked", tg.Forbidden("Forbidden: bot was blocked by the user"),
     "permanent"),
    ("ptb Forbidden kicked", tg.Forbidden("Forbidden: bot was kicked from the group chat"),
     "permanent"),
    ("ptb BadRequest chat", tg.BadRequest("Bad Request: chat not found"), "permanent"),
    ("ptb BadRequest long", tg.BadRequest("Bad Request: message is too long"), "permanent"),
    # The generic reader would call this one transient (no known words in it).
    ("ptb BadRequest other", tg.BadRequest("Bad Request: query is too old"), "permanent"),
    ("ptb InvalidToken", tg.InvalidToken(), "permanent"),
    ("ptb ChatMigrated", tg.ChatMigrated(-100123), "permanent"),
    # aiogram
    ("aiogram RetryAfter", aiogram_error(ag.TelegramRetryAfter, "Flood", retry_after=5),
     "transient"),
    ("aiogram ServerError", aiogram_error(ag.TelegramServerError, "Internal"), "transient"),
    ("aiogram NetworkError", aiogram_error(ag.TelegramNetworkError, "Request timeout error"),
     "transient"),
    ("aiogram Forbidden", aiogram_error(ag.TelegramForbiddenError, "bot was blocked"),
     "permanent"),
    ("aiogram BadRequest", aiogram_error(ag.TelegramBadRequest, "chat not found"), "permanent"),
    ("aiogram EntityTooLarge", aiogram_error(ag.TelegramEntityTooLarge, "Too large"),
     "permanent"),
    # slack_sdk
    ("slack ratelimited", slack_error("ratelimited", 429, {"Retry-After": "30"}), "transient"),
    ("slack channel_not_found", slack_error("channel_not_found"), "permanent"),
    ("slack not_in_channel", slack_error("not_in_channel"), "permanent"),
    ("slack is_archived", slack_error("is_archived"), "permanent"),
    ("slack internal_error", slack_error("internal_error"), "transient"),
    ("slack unknown code, 500", slack_error("Received a response in a non-JSON format", 500),
     "transient"),
    ("slack unknown code, 503", slack_error("something_new", 503), "transient"),
    ("slack unknown code, 404", slack_error("something_new", 404), "permanent"),
    ("slack request error", slack_sdk.errors.SlackRequestError("bad upload"), "permanent"),
]


@pytest.mark.parametrize(("exc", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_library_exceptions_are_classified_by_type_and_code(
    exc: Exception, expected: str
) -> None:
    assert classify_library_error(exc) == expected
    assert default_classifier(exc) == expected


def test_other_exceptions_are_left_to_the_generic_classifier() -> None:
    class BadRequest(Exception):  # the same name as python-telegram-bot's, another module
        pass

    assert classify_library_error(BadRequest("query is too old")) is None
    assert default_classifier(BadRequest("query is too old")) == "transient"
    assert classify_library_error(TimeoutError()) is None
    # A Slack response with an unknown code and HTTP 200 is not placed by the table.
    assert classify_library_error(slack_error("something_new")) is None


HINTS = [
    ("ptb int", flood(7), 7.0),
    ("ptb timedelta", flood(dt.timedelta(seconds=2.5)), 2.5),
    ("aiogram", aiogram_error(ag.TelegramRetryAfter, "Flood", retry_after=5), 5.0),
    ("slack header", slack_error("ratelimited", 429, {"Retry-After": "30"}), 30.0),
    ("slack lower-case header", slack_error("ratelimited", 429, {"retry-after": "4"}), 4.0),
    ("no hint", tg.Forbidden("Forbidden: bot was blocked by the user"), None),
    ("slack without header", slack_error("channel_not_found"), None),
    ("http-date header", slack_error("ratelimited", 429,
                                     {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), None),
]


@pytest.mark.parametrize(("exc", "expected"), [h[1:] for h in HINTS], ids=[h[0] for h in HINTS])
def test_retry_after_hint(exc: Exception, expected: float | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading PTB's hint must not warn in the gateway
        assert retry_after_seconds(exc) == expected


def test_a_generic_retry_after_attribute_is_read_and_junk_is_ignored() -> None:
    class Flood(Exception):
        def __init__(self, retry_after: object) -> None:
            super().__init__("flood")
            self.retry_after = retry_after

    assert retry_after_seconds(Flood(dt.timedelta(minutes=1))) == 60.0
    assert retry_after_seconds(Flood(1.5)) == 1.5
    for junk in (True, -3, float("nan"), "soon", object()):
        assert retry_after_seconds(Flood(junk)) is None

    class Broken(Exception):
        @property
        def retry_after(self) -> int:
            raise RuntimeError("boom")

    assert retry_after_seconds(Broken()) is None


def test_importing_otel_delivery_imports_no_chat_library() -> None:
    code = (
        "import sys, otel_delivery\n"
        "otel_delivery.default_classifier(ValueError('x'))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('telegram', 'slack_sdk', 'aiogram', 'slack_bolt')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_user_classifiers_come_first_and_none_falls_back_to_the_library_table(
    traced: Traced,
) -> None:
    def lenient(exc: BaseException) -> str | None:
        return "transient" if "kicked" in str(exc) else None

    @otel_delivery.deliver(channel="telegram", delivery_id=arg("delivery_id"), classifier=lenient)
    def send(delivery_id: str, exc: Exception) -> None:
        raise exc

    for delivery_id, exc in [
        ("d-kicked", tg.Forbidden("Forbidden: bot was kicked from the group chat")),
        ("d-blocked", tg.Forbidden("Forbidden: bot was blocked by the user")),
        ("d-old", tg.BadRequest("Bad Request: query is too old")),
    ]:
        with pytest.raises(type(exc)):
            send(delivery_id, exc)
    rows = traced.rows("SELECT delivery_id, failure_class FROM attempts ORDER BY id")
    assert rows == [
        {"delivery_id": "d-kicked", "failure_class": "transient"},
        {"delivery_id": "d-blocked", "failure_class": "permanent"},
        {"delivery_id": "d-old", "failure_class": "permanent"},
    ]


def test_the_hint_is_on_the_span_and_in_the_store(traced: Traced) -> None:
    @otel_delivery.deliver(channel="telegram", delivery_id=arg("delivery_id"), max_attempts=3)
    def send(delivery_id: str, exc: Exception | None) -> dict[str, int]:
        if exc is not None:
            raise exc
        return {"message_id": 1}

    for delivery_id, exc in [
        ("flood", flood(dt.timedelta(seconds=12))),
        ("blocked", tg.Forbidden("Forbidden: bot was blocked by the user")),
        ("ok", None),
    ]:
        try:
            send(delivery_id, exc)
        except tg.TelegramError:
            pass
    rows = traced.rows(
        "SELECT delivery_id, status, error_type, failure_class, final, retry_after_seconds "
        "FROM attempts ORDER BY id"
    )
    assert rows == [
        {"delivery_id": "flood", "status": "failed", "error_type": "telegram.error.RetryAfter",
         "failure_class": "transient", "final": 0, "retry_after_seconds": 12.0},
        {"delivery_id": "blocked", "status": "failed", "error_type": "telegram.error.Forbidden",
         "failure_class": "permanent", "final": 1, "retry_after_seconds": None},
        {"delivery_id": "ok", "status": "delivered", "error_type": None,
         "failure_class": None, "final": 1, "retry_after_seconds": None},
    ]
    hints = {
        (s.attributes or {}).get("otel_delivery.delivery_id"):
            (s.attributes or {}).get("otel_delivery.retry_after_seconds")
        for s in traced.spans("deliver")
    }
    assert hints == {"flood": 12.0, "blocked": None, "ok": None}
