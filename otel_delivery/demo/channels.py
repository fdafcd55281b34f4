"""Fake chat-platform APIs: what the demo gateway sends its replies through.

Each fake answers the way its platform does (HTTP status, error text, retry-after
hint) and fails only where the scenario says, so one seed always tells the same
story. The errors subclass :class:`ChannelAPIError`, as a real SDK's would, and
are classified by ``otel_delivery``'s default classifier like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CHANNELS",
    "PLATFORMS",
    "REENGAGEMENT_ERROR",
    "ChannelAPIError",
    "DiscordHTTPError",
    "FakeChannelAPI",
    "Fault",
    "Platform",
    "SentMessage",
    "SlackApiError",
    "TelegramError",
    "WhatsAppError",
    "whatsapp_status_webhooks",
]

CHANNELS = ("telegram", "slack", "whatsapp", "discord")

#: A transient failure the scenario scripts for one call.
Fault = Literal["rate_limit", "timeout", "unavailable"]


class ChannelAPIError(Exception):
    """An error answer from a chat platform's API.

    ``retry_after`` is the platform's hint, in seconds, when it gives one (429).
    """

    def __init__(
        self, description: str, *, status_code: int, retry_after: float | None = None
    ) -> None:
        super().__init__(description)
        self.description = description
        self.status_code = status_code
        self.retry_after = retry_after


class TelegramError(ChannelAPIError):
    """Bot API error (``{"ok": false, "error_code": ..., "description": ...}``)."""


class SlackApiError(ChannelAPIError):
    """Web API error (``{"ok": false, "error": ...}``)."""


class WhatsAppError(ChannelAPIError):
    """Cloud API error (``{"error": {"code": ..., "message": ...}}``)."""


class DiscordHTTPError(ChannelAPIError):
    """REST API error (``{"code": ..., "message": ...}``)."""


@dataclass(frozen=True)
class Platform:
    """How one platform answers: its limits and its error texts."""

    name: str
    host: str
    text_limit: int
    error: type[ChannelAPIError]
    rate_limited: tuple[int, str, float]
    blocked: tuple[int, str]
    too_long: tuple[int, str]
    unavailable: tuple[int, str]


PLATFORMS: Mapping[str, Platform] = {
    "telegram": Platform(
        "telegram", "api.telegram.org", 4096, TelegramError,
        rate_limited=(429, "Too Many Requests: retry after 1", 1.0),
        blocked=(403, "Forbidden: bot was blocked by the user"),
        too_long=(400, "Bad Request: message is too long"),
        unavailable=(502, "Bad Gateway"),
    ),
    "slack": Platform(
        "slack", "slack.com", 40_000, SlackApiError,
        rate_limited=(429, "ratelimited", 1.0),
        blocked=(404, "channel_not_found"),
        too_long=(400, "msg_too_long"),
        unavailable=(503, "service_unavailable"),
    ),
    "whatsapp": Platform(
        "whatsapp", "graph.facebook.com", 4096, WhatsAppError,
        rate_limited=(429, "(#130429) Rate limit hit", 2.0),
        blocked=(400, "(#131026) Message undeliverable"),
        too_long=(400, "(#100) Invalid parameter: text.body must be at most 4096 characters"),
        unavailable=(503, "(#131000) Service temporarily unavailable"),
    ),
    "discord": Platform(
        "discord", "discord.com", 2000, DiscordHTTPError,
        rate_limited=(429, "You are being rate limited.", 0.5),
        blocked=(403, "Cannot send messages to this user (50007)"),
        too_long=(400, "Invalid Form Body: content: Must be 2000 or fewer in length. (50035)"),
        unavailable=(502, "502 Bad Gateway"),
    ),
}


@dataclass(frozen=True)
class SentMessage:
    """The platform's receipt; ``@deliver`` records ``message_id`` as the provider's id."""

    message_id: str


class FakeChannelAPI:
    """One platform's send endpoint, with the failures the scenario scripted.

    ``faults[client_ref]`` lists what happens on the first, second, ... call for
    one delivery (None: that call goes through). ``blocked`` recipients get the
    platform's permanent "blocked" answer, and text over the platform's limit its
    "too long" answer, as the real APIs do.
    """

    def __init__(
        self,
        platform: Platform,
        *,
        blocked: Collection[str] = (),
        faults: Mapping[str, Sequence[Fault | None]] | None = None,
    ) -> None:
        self.platform = platform
        self.blocked = frozenset(blocked)
        self.faults = dict(faults or {})
        self._calls: dict[str, int] = {}
        self._sent = 0
        #: (client_ref, message id, recipient) of every message the API accepted
        self.accepted: list[tuple[str, str, str]] = []

    async def send_message(self, recipient: str, text: str, *, client_ref: str) -> SentMessage:
        await asyncio.sleep(0)  # the round trip: other tasks run meanwhile
        call = self._calls.get(client_ref, 0)
        self._calls[client_ref] = call + 1
        script = self.faults.get(client_ref, ())
        fault = script[call] if call < len(script) else None
        p = self.platform
        if fault == "timeout":
            raise TimeoutError(f"timed out after 10.0 s waiting for {p.host}")
        if fault == "rate_limit":
            status, description, after = p.rate_limited
            raise p.error(description, status_code=status, retry_after=after)
        if fault == "unavailable":
            status, description = p.unavailable
            raise p.error(description, status_code=status)
        if recipient in self.blocked:
            status, description = p.blocked
            raise p.error(description, status_code=status)
        if len(text) > p.text_limit:
            status, description = p.too_long
            raise p.error(description, status_code=status)
        self._sent += 1
        message_id = f"{p.name[:2]}-msg-{self._sent}"
        self.accepted.append((client_ref, message_id, recipient))
        return SentMessage(message_id=message_id)


# What WhatsApp's Cloud API reports when the 24-hour customer service window closed.
REENGAGEMENT_ERROR = {
    "code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
    "error_data": {"details": "Message failed to send because more than 24 hours have "
                              "passed since the customer last replied to this number."},
}


def whatsapp_status_webhooks(
    accepted: Sequence[tuple[str, str, str]], failing: Collection[str], at: float
) -> list[dict[str, Any]]:
    """The Cloud API's status webhooks for messages it accepted (``statuses`` entries
    with id, status, timestamp and recipient_id): sent, then delivered and, for every
    other message, read; a message in ``failing`` is sent, then failed (131047)."""
    statuses: list[dict[str, Any]] = []
    for n, (client_ref, message_id, recipient) in enumerate(accepted):
        said: list[tuple[str, int, dict[str, Any]]] = [("sent", 1, {})]
        if client_ref in failing:
            said.append(("failed", 2, {"errors": [REENGAGEMENT_ERROR]}))
        else:
            said.append(("delivered", 2, {}))
            if n % 2 == 0:
                said.append(("read", 20, {}))
        statuses.extend(
            {"id": message_id, "status": name, "timestamp": str(int(at) + after),
             "recipient_id": recipient.lstrip("+"), **extra}
            for name, after, extra in said
        )
    # One webhook per status, as the platform sends them.
    return [
        {"object": "whatsapp_business_account", "entry": [{"id": "demo-waba", "changes": [
            {"field": "messages", "value": {"messaging_product": "whatsapp",
                                            "statuses": [s]}}]}]}
        for s in statuses
    ]
