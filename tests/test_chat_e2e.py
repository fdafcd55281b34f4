"""python-telegram-bot and slack_sdk, end to end, against local stubs of their APIs.

A small decorated gateway (inbound → AI run → deliver, retrying transient failures)
sends through the real client library. The stubs answer with the services' real error
shapes; the store's rows and the trace are what the operator would see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import slack_sdk.errors
import telegram
import telegram.error
from slack_sdk import WebClient

import otel_delivery
from otel_delivery import arg

from .chat_stubs import (
    HANG,
    SLACK_CHANNEL_NOT_FOUND,
    SLACK_IS_ARCHIVED,
    SLACK_NOT_IN_CHANNEL,
    SLACK_RATELIMITED,
    SLACK_SENT,
    SLACK_SERVER_ERROR,
    TG_BLOCKED,
    TG_CHAT_NOT_FOUND,
    TG_FLOOD,
    TG_SENT,
    TG_SERVER_ERROR,
    TG_TOO_LONG,
    SlackStub,
    TelegramStub,
)
from .conftest import Traced, make_traced, span_dict

# PTB 22 warns about its own RetryAfter.retry_after property when it builds the error.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

# Long enough that a loaded machine's normal answer is never mistaken for a hang.
CLIENT_TIMEOUT_SECONDS = 0.75
MAX_ATTEMPTS = 3


@dataclass
class Inbound:
    id: str
    chat: str
    text: str
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Reply:
    delivery_id: str
    chat: str
    text: str
    meta: dict[str, str]


def _agent(msg: Inbound) -> Reply:
    return Reply(f"dlv-{msg.id}", msg.chat, f"echo: {msg.text}", dict(msg.meta))


class TelegramGateway:
    """An async gateway on python-telegram-bot's Bot."""

    def __init__(self, bot: telegram.Bot) -> None:
        self.bot = bot

    @otel_delivery.inbound(channel="telegram", inbound_id=arg("msg.id"), sender=arg("msg.chat"),
                           carrier=arg("msg.meta"))
    async def handle(self, msg: Inbound) -> None:
        reply = await self.run_agent(msg)
        for _ in range(MAX_ATTEMPTS):
            try:
                await self.send_once(reply)
                return
            except telegram.error.TelegramError as exc:
                if otel_delivery.default_classifier(exc) == "permanent":
                    return
                # A real gateway would wait retry_after_seconds(exc) here.

    @otel_delivery.ai_run(agent="echo", carrier=arg("msg.meta"))
    async def run_agent(self, msg: Inbound) -> Reply:
        return _agent(msg)

    @otel_delivery.deliver(channel="telegram", recipient=arg("reply.chat"),
                           delivery_id=arg("reply.delivery_id"), max_attempts=MAX_ATTEMPTS,
                           carrier=arg("reply.meta"))
    async def send_once(self, reply: Reply) -> telegram.Message:
        return await self.bot.send_message(
            chat_id=int(reply.chat), text=reply.text, read_timeout=CLIENT_TIMEOUT_SECONDS
        )


class SlackGateway:
    """A synchronous gateway on slack_sdk's WebClient."""

    def __init__(self, client: WebClient) -> None:
        self.client = client

    @otel_delivery.inbound(channel="slack", inbound_id=arg("msg.id"), sender=arg("msg.chat"),
                           carrier=arg("msg.meta"))
    def handle(self, msg: Inbound) -> None:
        reply = self.run_agent(msg)
        for _ in range(MAX_ATTEMPTS):
            try:
                self.send_once(reply)
                return
            except (slack_sdk.errors.SlackClientError, TimeoutError) as exc:
                if otel_delivery.default_classifier(exc) == "permanent":
                    return

    @otel_delivery.ai_run(agent="echo", carrier=arg("msg.meta"))
    def run_agent(self, msg: Inbound) -> Reply:
        return _agent(msg)

    @otel_delivery.deliver(channel="slack", recipient=arg("reply.chat"),
                           delivery_id=arg("reply.delivery_id"), max_attempts=MAX_ATTEMPTS,
                           carrier=arg("reply.meta"))
    def send_once(self, reply: Reply) -> Any:  # a SlackResponse: its data's "ts" is the id
        return self.client.chat_postMessage(channel=reply.chat, text=reply.text)


@pytest.fixture
def store_traced(tmp_path: Path) -> Iterator[Traced]:
    t = make_traced(tmp_path / "deliveries.db")
    yield t
    t.handle.shutdown()


def attempts(traced: Traced, delivery_id: str) -> list[tuple[Any, ...]]:
    rows = traced.rows(
        "SELECT attempt, status, error_type, failure_class, retry_after_seconds, final "
        "FROM attempts WHERE delivery_id = packed_id(?) ORDER BY attempt", (delivery_id,)
    )
    return [tuple(r.values()) for r in rows]


def assert_one_trace_per_message(traced: Traced, inbound_id: str, channel: str) -> None:
    """process {channel} → invoke_agent echo → send {channel} × n, one trace, linked."""
    spans = [span_dict(s) for s in traced.spans()]
    mine = [s for s in spans if s["attributes"].get("otel_delivery.inbound_id") == inbound_id]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for s in mine:
        by_name.setdefault(s["name"], []).append(s)
    (inbound,) = by_name[f"process {channel}"]
    (run,) = by_name["invoke_agent echo"]
    sends = sorted(
        by_name[f"send {channel}"], key=lambda s: s["attributes"]["otel_delivery.attempt"]
    )
    assert inbound["kind"] == "CONSUMER" and inbound["parent_id"] is None
    assert run["parent_id"] == inbound["span_id"]
    assert {s["trace_id"] for s in mine} == {inbound["trace_id"]}
    for n, send in enumerate(sends):
        assert send["kind"] == "CLIENT"
        assert send["parent_id"] == run["span_id"]  # through the reply's carrier
        assert send["links"] == [earlier["span_id"] for earlier in sends[:n]]
        failed = send["attributes"]["otel_delivery.outcome"] == "failed"
        assert send["status"] == ("ERROR" if failed else "UNSET")
        assert ("error.type" in send["attributes"]) == failed
    # The store tells the same story under the same trace id.
    stored = traced.rows(
        "SELECT DISTINCT trace_id FROM attempts WHERE inbound_id = ? UNION "
        "SELECT trace_id FROM inbound_messages WHERE inbound_id = ? UNION "
        "SELECT trace_id FROM ai_runs WHERE inbound_id = ?", (inbound_id,) * 3
    )
    assert stored == [{"trace_id": inbound["trace_id"]}]


# -- python-telegram-bot -----------------------------------------------------------------

TG = "telegram.error."
TELEGRAM_CASES = {
    # chat id: (the stub's replies, the attempts the store must hold)
    "100": ([TG_SENT], [(1, "delivered", None, None, None, 1)]),
    "200": ([TG_FLOOD, TG_SENT], [(1, "failed", TG + "RetryAfter", "transient", 3.0, 0),
                                  (2, "delivered", None, None, None, 1)]),
    "300": ([TG_BLOCKED], [(1, "failed", TG + "Forbidden", "permanent", None, 1)]),
    "400": ([TG_TOO_LONG], [(1, "failed", TG + "BadRequest", "permanent", None, 1)]),
    "404": ([TG_CHAT_NOT_FOUND], [(1, "failed", TG + "BadRequest", "permanent", None, 1)]),
    "500": ([TG_SERVER_ERROR], [(1, "failed", TG + "NetworkError", "transient", None, 0),
                                (2, "failed", TG + "NetworkError", "transient", None, 0),
                                (3, "failed", TG + "NetworkError", "transient", None, 1)]),
    "600": ([HANG, TG_SENT], [(1, "failed", TG + "TimedOut", "transient", None, 0),
                              (2, "delivered", None, None, None, 1)]),
}


@pytest.fixture
def telegram_stub() -> Iterator[TelegramStub]:
    stub = TelegramStub({chat: replies for chat, (replies, _) in TELEGRAM_CASES.items()}).start()
    yield stub
    stub.stop()


def test_python_telegram_bot_end_to_end(telegram_stub: TelegramStub, store_traced: Traced) -> None:
    async def main() -> None:
        bot = telegram.Bot("123456:TEST-TOKEN", base_url=telegram_stub.base_url)
        async with bot:
            gateway = TelegramGateway(bot)
            for chat in TELEGRAM_CASES:
                await gateway.handle(Inbound(f"tg-{chat}", chat, "hello"))

    asyncio.run(main())

    for chat, (_, expected) in TELEGRAM_CASES.items():
        assert attempts(store_traced, f"dlv-tg-{chat}") == expected, chat
        assert_one_trace_per_message(store_traced, f"tg-{chat}", "telegram")
        assert len(telegram_stub.calls_to(chat)) == len(expected), chat

    texts = store_traced.rows(
        "SELECT recipient, error_text, provider_message_id FROM attempts "
        "WHERE recipient IN ('100', '400', '404') ORDER BY recipient"
    )
    assert texts == [
        {"recipient": "100", "error_text": None, "provider_message_id": "1001"},
        {"recipient": "400", "error_text": "Message is too long", "provider_message_id": None},
        {"recipient": "404", "error_text": "Chat not found", "provider_message_id": None},
    ]
    # Delivered, failed for good, or out of attempts: nothing is left pending.
    outcomes = store_traced.rows("SELECT delivery_id, outcome FROM v_deliveries ORDER BY 1")
    assert {r["delivery_id"]: r["outcome"] for r in outcomes} == {
        "dlv-tg-100": "delivered", "dlv-tg-200": "delivered", "dlv-tg-300": "failed",
        "dlv-tg-400": "failed", "dlv-tg-404": "failed", "dlv-tg-500": "failed",
        "dlv-tg-600": "delivered",
    }


# -- slack_sdk ---------------------------------------------------------------------------

SLACK = "slack_sdk.errors.SlackApiError"
SLACK_CASES = {
    "C0K": ([SLACK_SENT], [(1, "delivered", None, None, None, 1)]),
    "C0FLOOD": ([SLACK_RATELIMITED, SLACK_SENT], [(1, "failed", SLACK, "transient", 30.0, 0),
                                                  (2, "delivered", None, None, None, 1)]),
    "C0GONE": ([SLACK_CHANNEL_NOT_FOUND], [(1, "failed", SLACK, "permanent", None, 1)]),
    "C0OUT": ([SLACK_NOT_IN_CHANNEL], [(1, "failed", SLACK, "permanent", None, 1)]),
    "C0ARCH": ([SLACK_IS_ARCHIVED], [(1, "failed", SLACK, "permanent", None, 1)]),
    "C05XX": ([SLACK_SERVER_ERROR, SLACK_SENT], [(1, "failed", SLACK, "transient", None, 0),
                                                 (2, "delivered", None, None, None, 1)]),
    "C0HANG": ([HANG, SLACK_SENT], [(1, "failed", "TimeoutError", "transient", None, 0),
                                    (2, "delivered", None, None, None, 1)]),
}


@pytest.fixture
def slack_stub() -> Iterator[SlackStub]:
    stub = SlackStub({chat: replies for chat, (replies, _) in SLACK_CASES.items()}).start()
    yield stub
    stub.stop()


def test_slack_sdk_end_to_end(slack_stub: SlackStub, store_traced: Traced) -> None:
    client = WebClient(token="xoxb-test", base_url=slack_stub.base_url,
                       timeout=CLIENT_TIMEOUT_SECONDS)  # type: ignore[arg-type]
    gateway = SlackGateway(client)
    for channel in SLACK_CASES:
        gateway.handle(Inbound(f"sl-{channel}", channel, "hello"))

    for channel, (_, expected) in SLACK_CASES.items():
        assert attempts(store_traced, f"dlv-sl-{channel}") == expected, channel
        assert_one_trace_per_message(store_traced, f"sl-{channel}", "slack")
        assert len(slack_stub.calls_to(channel)) == len(expected), channel

    rows = store_traced.rows(
        "SELECT recipient, error_text, provider_message_id FROM attempts "
        "WHERE recipient IN ('C0K', 'C0GONE') ORDER BY recipient"
    )
    assert rows[0]["error_text"].endswith("'error': 'channel_not_found'}")
    assert rows[1]["provider_message_id"].startswith("1700000000.")
