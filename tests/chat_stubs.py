"""Small stubs of the Telegram Bot API and the Slack Web API on 127.0.0.1.

The real client libraries (python-telegram-bot, aiogram, slack_sdk, slack-bolt) are
pointed at these with their own base-URL settings. Each stub answers from a script
keyed by the recipient (Telegram ``chat_id``, Slack ``channel``): a list of replies
used in order, the last one repeating. Replies carry the services' real error shapes.

``HANG`` holds the request open until the client gives up (its timeout) or the stub
stops; it never holds longer than ``HANG_LIMIT_SECONDS``, so a test cannot hang.
"""

from __future__ import annotations

import email.parser
import itertools
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

HANG_LIMIT_SECONDS = 5.0


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "application/json"


HANG = Reply(0, b"")  # a marker, never sent


@dataclass
class Call:
    """One request the stub received."""

    path: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


def _json(
    status: int, payload: Mapping[str, Any], headers: Sequence[tuple[str, str]] = ()
) -> Reply:
    return Reply(status, json.dumps(payload).encode(), tuple(headers))


def parse_params(content_type: str, body: bytes) -> dict[str, Any]:
    """Request parameters from a JSON, URL-encoded or multipart body."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        value = json.loads(body or b"{}")
        return dict(value) if isinstance(value, dict) else {}
    if kind == "application/x-www-form-urlencoded":
        return {k: v[-1] for k, v in parse_qs(body.decode()).items()}
    if kind == "multipart/form-data":
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = email.parser.BytesParser().parsebytes(head + body)
        params: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                params[name] = payload.decode()
        return params
    return {}


class StubServer:
    """An HTTP server in a thread; ``route(path, params)`` picks each reply."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.arrived = threading.Condition()
        self._released = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self._answer()

            def do_GET(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                params = parse_params(self.headers.get("Content-Type", ""), body)
                path = self.path.split("?", 1)[0]
                reply = stub.route(path, params)
                with stub.arrived:
                    stub.calls.append(Call(path, params))
                    stub.arrived.notify_all()
                if reply is HANG:
                    stub._released.wait(HANG_LIMIT_SECONDS)
                    self.close_connection = True
                    return
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(len(reply.body)))
                    for name, value in reply.headers:
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    self.close_connection = True  # the client gave up first

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, path: str, params: dict[str, Any]) -> Reply:
        raise NotImplementedError

    def wait_for_calls(self, count: int, timeout_seconds: float = 5.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.calls) >= count, timeout_seconds)

    def start(self) -> StubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Scripted(StubServer):
    """Replies scripted per recipient: a list used in order, the last one repeating."""

    recipient_param = ""

    def __init__(self, scripts: Mapping[str, Sequence[Reply]]) -> None:
        super().__init__()
        self._scripts: dict[str, Iterator[Reply]] = {
            key: itertools.chain(replies, itertools.repeat(replies[-1]))
            for key, replies in scripts.items()
        }
        self._lock = threading.Lock()

    def next_reply(self, params: Mapping[str, Any]) -> Reply | None:
        key = str(params.get(self.recipient_param, ""))
        with self._lock:
            script = self._scripts.get(key)
            return next(script) if script is not None else None

    def calls_to(self, recipient: str) -> list[Call]:
        return [c for c in self.calls if str(c.params.get(self.recipient_param)) == recipient]


# -- Telegram Bot API ----------------------------------------------------------------


class TelegramStub(Scripted):
    """``POST /bot<token>/<method>``, answered like api.telegram.org."""

    recipient_param = "chat_id"

    def __init__(self, scripts: Mapping[str, Sequence[Reply]]) -> None:
        super().__init__(scripts)
        self._message_ids = itertools.count(1001)

    @property
    def base_url(self) -> str:
        """What python-telegram-bot's ``base_url`` wants (the token is appended)."""
        return f"{self.url}/bot"

    def route(self, path: str, params: dict[str, Any]) -> Reply:
        method = path.rsplit("/", 1)[-1]
        if method.lower() == "getme":
            return tg_ok({"id": 4242, "is_bot": True, "first_name": "Stub",
                          "username": "stub_bot", "can_join_groups": True,
                          "can_read_all_group_messages": False,
                          "supports_inline_queries": False})
        if method.lower() != "sendmessage":
            return tg_error(404, "Not Found")
        reply = self.next_reply(params)
        if reply is None or (reply.status == 200 and not reply.body):
            return tg_ok(self.message(params))
        return reply

    def message(self, params: Mapping[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        return {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": "User"},
            "from": {"id": 4242, "is_bot": True, "first_name": "Stub"},
            "text": str(params.get("text", "")),
        }


def tg_ok(result: Any) -> Reply:
    return _json(200, {"ok": True, "result": result})


def tg_error(code: int, description: str, **parameters: Any) -> Reply:
    payload: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        payload["parameters"] = parameters
    return _json(code, payload)


TG_SENT = Reply(200, b"")  # "answer with the sent message"
TG_FLOOD = tg_error(429, "Too Many Requests: retry after 3", retry_after=3)
TG_BLOCKED = tg_error(403, "Forbidden: bot was blocked by the user")
TG_TOO_LONG = tg_error(400, "Bad Request: message is too long")
TG_CHAT_NOT_FOUND = tg_error(400, "Bad Request: chat not found")
TG_SERVER_ERROR = tg_error(500, "Internal Server Error")


# -- Slack Web API -------------------------------------------------------------------


class SlackStub(Scripted):
    """``POST /api/<method>``, answered like slack.com/api."""

    recipient_param = "channel"

    def __init__(self, scripts: Mapping[str, Sequence[Reply]]) -> None:
        super().__init__(scripts)
        self._ts = itertools.count(100)

    @property
    def base_url(self) -> str:
        """What slack_sdk's ``WebClient(base_url=...)`` wants."""
        return f"{self.url}/api/"

    def route(self, path: str, params: dict[str, Any]) -> Reply:
        method = path.rsplit("/", 1)[-1]
        if method == "auth.test":
            return _json(200, {"ok": True, "url": "https://stub.slack.com/", "team": "Stub",
                               "user": "bot", "team_id": "T1", "user_id": "U0BOT",
                               "bot_id": "B1"})
        if method != "chat.postMessage":
            return _json(200, {"ok": False, "error": "unknown_method"})
        reply = self.next_reply(params)
        if reply is None or (reply.status == 200 and not reply.body):
            ts = f"1700000000.{next(self._ts):06d}"
            channel = str(params.get("channel"))
            return _json(200, {"ok": True, "channel": channel, "ts": ts,
                               "message": {"type": "message", "text": params.get("text"),
                                           "ts": ts, "bot_id": "B1"}})
        return reply


def slack_error(error: str, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    return _json(status, {"ok": False, "error": error}, headers)


SLACK_SENT = Reply(200, b"")
SLACK_RATELIMITED = slack_error("ratelimited", 429, [("Retry-After", "30")])
SLACK_CHANNEL_NOT_FOUND = slack_error("channel_not_found")
SLACK_NOT_IN_CHANNEL = slack_error("not_in_channel")
SLACK_IS_ARCHIVED = slack_error("is_archived")
# Slack's edge answers a 5xx with an HTML page, not JSON.
SLACK_SERVER_ERROR = Reply(500, b"<html><body>Internal Server Error</body></html>",
                           content_type="text/html")
