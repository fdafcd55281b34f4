"""The framework snippets in docs/instrumenting.md (and the README) run, on the real frameworks.

Each snippet is a file in tests/snippets/, shown verbatim in docs/instrumenting.md's
"Framework examples" (the README shows one of them, verbatim too; both checked here).
Each one is driven the way its framework drives it (PTB's
``Application.process_update``, aiogram's ``Dispatcher.feed_update``, slack-bolt's
``App.dispatch`` with a signed request, a plain asyncio consumer task), and sends
through the real client to a local stub of the service.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiogram import Bot as AiogramBot
from aiogram import Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import TelegramForbiddenError
from aiogram.types import Update as AiogramUpdate
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier
from telegram import Update

from .chat_stubs import (
    SLACK_CHANNEL_NOT_FOUND,
    SLACK_SENT,
    TG_BLOCKED,
    TG_SENT,
    Reply,
    Scripted,
    SlackStub,
    TelegramStub,
)
from .conftest import Traced, span_dict
from .snippets import asyncio_consumer, slack_bolt_listener, telegram_aiogram, telegram_ptb

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "tests" / "snippets"
SNIPPET_FILES = ["telegram_ptb.py", "telegram_aiogram.py", "slack_bolt_listener.py",
                 "asyncio_consumer.py"]


SHOWN = re.compile(r"<!-- (tests/snippets/\w+\.py) -->\n```python\n(.*?)```", re.S)


# README-only snippets, each run by a test of its own: the quickstart
# (test_quickstart.py) and the WhatsApp receipts webhook (test_receipts.py).
README_ONLY = ("quickstart.py", "whatsapp_receipts.py")


def test_the_snippet_list_is_every_snippet_file() -> None:
    files = {p.name for p in SNIPPETS.glob("*.py")} - {"__init__.py", *README_ONLY}
    assert files == set(SNIPPET_FILES)


def test_the_docs_show_every_snippet_verbatim() -> None:
    page = (ROOT / "docs" / "instrumenting.md").read_text()
    _, found, section = page.partition("\n## Framework examples\n")
    assert found
    section = section.split("\n## ", 1)[0]
    shown = SHOWN.findall(section)
    assert [path for path, _ in shown] == [f"tests/snippets/{f}" for f in SNIPPET_FILES]
    for path, code in shown:
        assert code == (ROOT / path).read_text(), f"docs copy of {path} differs from the file"


def test_the_readme_shows_its_snippet_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = SHOWN.findall(readme)
    assert [path for path, _ in shown] == [
        "tests/snippets/telegram_ptb.py", "tests/snippets/whatsapp_receipts.py",
    ]
    # Every marker is followed by a copy the pattern above can compare.
    assert readme.count("<!-- tests/snippets/") == len(shown)
    for path, code in shown:
        assert code == (ROOT / path).read_text(), f"README copy of {path} differs from the file"


def attempt_rows(traced: Traced) -> list[tuple[Any, ...]]:
    rows = traced.rows(
        "SELECT recipient, attempt, status, error_type, failure_class, retry_after_seconds, "
        "final, provider_message_id FROM attempts ORDER BY id"
    )
    return [tuple(r.values()) for r in rows]


def assert_traces(traced: Traced, channel: str, deliver_parent: str) -> None:
    """Every send span sits in its message's trace, under ``deliver_parent``'s span."""
    spans = [span_dict(s) for s in traced.spans()]
    inbound = [s for s in spans if s["name"] == f"process {channel}"]
    assert inbound and all(s["parent_id"] is None for s in inbound)
    for root in inbound:
        mine = [s for s in spans if s["trace_id"] == root["trace_id"]]
        (run,) = [s for s in mine if s["name"] == "invoke_agent support-bot"]
        assert run["parent_id"] == root["span_id"]
        parents = {s["span_id"]: s for s in mine}
        sends = [s for s in mine if s["name"] == f"send {channel}"]
        assert sends
        for send in sends:
            assert parents[send["parent_id"]]["name"].startswith(deliver_parent)


# -- python-telegram-bot --------------------------------------------------------------------


def tg_update(update_id: int, chat_id: int) -> dict[str, Any]:
    return {"update_id": update_id, "message": {
        "message_id": 10 + update_id, "date": int(time.time()), "text": "hello",
        "chat": {"id": chat_id, "type": "private", "first_name": "User"},
        "from": {"id": chat_id, "is_bot": False, "first_name": "User"},
    }}


@pytest.fixture
def telegram_stub() -> Iterator[TelegramStub]:
    stub = TelegramStub({"100": [TG_SENT], "300": [TG_BLOCKED]}).start()
    yield stub
    stub.stop()


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBUserWarning")
def test_python_telegram_bot_handler(telegram_stub: TelegramStub, traced: Traced) -> None:
    async def main() -> None:
        app = telegram_ptb.build_application("123456:TEST", base_url=telegram_stub.base_url)
        async with app:
            for update_id, chat_id in [(1, 100), (2, 300)]:
                await app.process_update(Update.de_json(tg_update(update_id, chat_id), app.bot))

    asyncio.run(main())
    assert attempt_rows(traced) == [
        ("100", 1, "delivered", None, None, None, 1, "1001"),
        ("300", 1, "failed", "telegram.error.Forbidden", "permanent", None, 1, None),
    ]
    inbound = traced.rows("SELECT inbound_id, sender, status FROM inbound_messages ORDER BY 1")
    assert inbound == [{"inbound_id": "1", "sender": "100", "status": "ok"},
                       {"inbound_id": "2", "sender": "300", "status": "failed"}]
    assert_traces(traced, "telegram", deliver_parent="process telegram")


# -- aiogram ---------------------------------------------------------------------------------


def test_aiogram_handler(telegram_stub: TelegramStub, traced: Traced) -> None:
    async def main() -> None:
        session = AiohttpSession(api=TelegramAPIServer.from_base(telegram_stub.url))
        bot = AiogramBot("123456:TEST", session=session)
        dispatcher = Dispatcher()
        dispatcher.include_router(telegram_aiogram.router)
        try:
            await dispatcher.feed_update(bot, AiogramUpdate.model_validate(tg_update(1, 100)))
            with pytest.raises(TelegramForbiddenError):
                await dispatcher.feed_update(bot, AiogramUpdate.model_validate(tg_update(2, 300)))
        finally:
            await session.close()

    asyncio.run(main())
    assert attempt_rows(traced) == [
        ("100", 1, "delivered", None, None, None, 1, "1001"),
        ("300", 1, "failed", "aiogram.exceptions.TelegramForbiddenError", "permanent", None, 1,
         None),
    ]
    assert_traces(traced, "telegram", deliver_parent="process telegram")


# -- slack-bolt -------------------------------------------------------------------------------

SECRET = "test-signing-secret"


def signed_event(channel: str, ts: str) -> BoltRequest:
    body = json.dumps({
        "token": "x", "team_id": "T1", "api_app_id": "A1", "type": "event_callback",
        "event_id": f"Ev{ts}", "event_time": int(time.time()),
        "event": {"type": "message", "channel": channel, "user": "U1", "text": "hello",
                  "ts": ts, "channel_type": "channel"},
    })
    stamp = str(int(time.time()))
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=body)
    return BoltRequest(body=body, headers={
        "content-type": ["application/json"],
        "x-slack-request-timestamp": [stamp],
        "x-slack-signature": [signature],
    })


def test_slack_bolt_listener(traced: Traced) -> None:
    stub = SlackStub({"C0K": [SLACK_SENT], "C0GONE": [SLACK_CHANNEL_NOT_FOUND]}).start()
    try:
        client = WebClient(token="xoxb-test", base_url=stub.base_url)
        app = slack_bolt_listener.build_app(
            client, SECRET, process_before_response=True, token_verification_enabled=False
        )
        statuses = [
            app.dispatch(signed_event("C0K", "1700000001.000100")).status,
            app.dispatch(signed_event("C0GONE", "1700000002.000100")).status,
        ]
    finally:
        stub.stop()
    assert statuses == [200, 500]  # bolt answers 500 when the listener raised
    assert attempt_rows(traced) == [
        ("C0K", 1, "delivered", None, None, None, 1, "1700000000.000100"),
        ("C0GONE", 1, "failed", "slack_sdk.errors.SlackApiError", "permanent", None, 1, None),
    ]
    inbound = traced.rows("SELECT inbound_id, conversation, status FROM inbound_messages "
                          "ORDER BY 1")
    assert inbound == [
        {"inbound_id": "1700000001.000100", "conversation": "C0K", "status": "ok"},
        {"inbound_id": "1700000002.000100", "conversation": "C0GONE", "status": "failed"},
    ]
    assert_traces(traced, "slack", deliver_parent="process slack")


# -- a generic asyncio queue consumer -------------------------------------------------------


class WebhookStub(Scripted):
    """A chat service's JSON webhook: ``POST /api/messages``."""

    recipient_param = "chat_id"

    def route(self, path: str, params: dict[str, Any]) -> Reply:
        reply = self.next_reply(params)
        if reply is None or (reply.status == 200 and not reply.body):
            return Reply(200, json.dumps({"id": f"m-{len(self.calls) + 1}"}).encode())
        return reply


def test_asyncio_queue_consumer(traced: Traced) -> None:
    stub = WebhookStub({
        "ok": [SLACK_SENT],
        "flood": [Reply(429, b'{"error": "slow down"}', (("Retry-After", "0"),)), SLACK_SENT],
        "gone": [Reply(404, b'{"error": "no such chat"}')],
        "down": [Reply(503, b"Service Unavailable", content_type="text/plain")],
    }).start()

    async def main() -> None:
        outbox: asyncio.Queue[asyncio_consumer.Outgoing] = asyncio.Queue()
        async with httpx.AsyncClient(timeout=5) as http:
            consumer = asyncio.create_task(asyncio_consumer.sender(
                outbox, http, f"{stub.url}/api/messages", backoff_seconds=0
            ))
            for n, chat in enumerate(["ok", "flood", "gone", "down"]):
                await asyncio_consumer.on_message(outbox, f"in-{n}", chat, "hello")
            await asyncio.wait_for(outbox.join(), timeout=10)
            consumer.cancel()

    try:
        asyncio.run(main())
    finally:
        stub.stop()
    http_error = "httpx.HTTPStatusError"
    assert attempt_rows(traced) == [
        ("ok", 1, "delivered", None, None, None, 1, "m-1"),
        ("flood", 1, "failed", http_error, "transient", 0.0, 0, None),
        ("flood", 2, "delivered", None, None, None, 1, "m-3"),
        ("gone", 1, "failed", http_error, "permanent", None, 1, None),
        ("down", 1, "failed", http_error, "transient", None, 0, None),
        ("down", 2, "failed", http_error, "transient", None, 0, None),
        ("down", 3, "failed", http_error, "transient", None, 1, None),
    ]
    assert traced.rows("SELECT COUNT(*) AS n FROM enqueues WHERE status = 'ok'") == [{"n": 4}]
    # Sent from another task, each attempt is still a child of the enqueue that queued it.
    assert_traces(traced, "webchat", deliver_parent="enqueue webchat")
