"""The demo's world, drawn from one seed: who writes, on which channel, and what goes wrong.

Everything that decides a count is fixed here, before any task runs, and keyed by
delivery id, so the order in which asyncio happens to run the tasks cannot change
what the store ends up holding.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .channels import CHANNELS, Fault

__all__ = ["MAX_MESSAGES", "MIN_MESSAGES", "STORIES", "PlannedMessage", "Scenario", "plan"]

# Enough for every story to get a message of its own.
MIN_MESSAGES = 10
MAX_MESSAGES = 10_000

#: The stories the report points at, with what each one shows.
STORIES: dict[str, str] = {
    "rate_limited": "rate-limited (429), delivered on the retry",
    "blocked": "the user blocked the bot: failed permanently, not retried",
    "too_long": "reply too long for the platform: failed permanently",
    "timed_out": "timed out on every attempt, across the restart, then given up",
    "retried_after_restart": "timed out, then delivered by the reloaded queue after the restart",
    "enqueue_failed": "reply produced, lost at enqueue (the gateway swallowed the error)",
    "interrupted": "the sender was killed mid-send; retried after the restart as attempt 2",
    "no_reply": "the agent chose not to reply: nothing to deliver",
    "failed_after_accept": "accepted by WhatsApp's API, then failed on the platform "
                           "(131047: the 24-hour window had closed)",
}
# Their transient failures must straddle the restart, so they come before it.
_BEFORE_RESTART = ("timed_out", "retried_after_restart", "rate_limited")
_ANYWHERE = ("blocked", "too_long", "enqueue_failed", "no_reply", "failed_after_accept")

NORMAL_TEXTS = (
    "what's on my calendar tomorrow?",
    "summarise the thread in #release",
    "translate 'good morning' to Portuguese",
    "remind me to call the dentist at 3pm",
    "what's the weather in Lisbon?",
    "how do I rotate my API key?",
    "draft a reply to Sam saying I'll be late",
    "is the staging deploy green?",
)
# The fake model answers these in a way the story needs (see gateway.FakeModel).
NO_REPLY_TEXT = "👍"
LONG_REPLY_TEXT = "paste the full build log here"
IMAGE_TEXT = "draw me a lighthouse at dusk"

_ID_PREFIX = {"telegram": "tg", "slack": "sl", "whatsapp": "wa", "discord": "dc"}


@dataclass(frozen=True)
class PlannedMessage:
    """One inbound message and its raw platform update."""

    inbound_id: str
    channel: str
    sender: str
    conversation: str
    text: str
    story: str | None

    @property
    def delivery_id(self) -> str:
        return delivery_id_for(self.inbound_id)

    def update(self) -> dict[str, Any]:
        """The update as the platform would push it to the gateway's receiver."""
        if self.channel == "telegram":
            return {"message": {"message_id": self.inbound_id, "from": {"id": self.sender},
                                "chat": {"id": self.conversation}, "text": self.text}}
        if self.channel == "slack":
            return {"type": "message", "client_msg_id": self.inbound_id, "user": self.sender,
                    "channel": self.conversation, "text": self.text}
        if self.channel == "whatsapp":
            return {"messages": [{"id": self.inbound_id, "from": self.sender,
                                  "text": {"body": self.text}}]}
        return {"id": self.inbound_id, "channel_id": self.conversation,
                "author": {"id": self.sender}, "content": self.text}


def delivery_id_for(inbound_id: str) -> str:
    return f"dlv-{inbound_id}"


@dataclass(frozen=True)
class Scenario:
    """Two waves of traffic around one crash, and the failures each platform will answer with."""

    seed: int
    before_restart: list[PlannedMessage]
    crash: PlannedMessage
    after_restart: list[PlannedMessage]
    faults: dict[str, dict[str, list[Fault | None]]] = field(default_factory=dict)
    blocked: dict[str, set[str]] = field(default_factory=dict)
    # deliveries the platform accepts, then reports failed in a status webhook
    failing_after_accept: set[str] = field(default_factory=set)

    @property
    def messages(self) -> list[PlannedMessage]:
        return [*self.before_restart, self.crash, *self.after_restart]

    def story(self, name: str) -> PlannedMessage:
        return next(m for m in self.messages if m.story == name)


def _people(rng: random.Random, channel: str) -> list[tuple[str, str]]:
    """(sender, conversation) pairs in the platform's id format; DMs, so replies go back."""
    people = []
    for _ in range(5):
        if channel == "telegram":
            uid = str(rng.randrange(10**9, 7 * 10**9))
            people.append((uid, uid))
        elif channel == "slack":
            people.append((f"U0{rng.randrange(16**7):07X}", f"D0{rng.randrange(16**7):07X}"))
        elif channel == "whatsapp":
            number = f"+1555{rng.randrange(10**7):07d}"  # 555: fictional numbers
            people.append((number, number))
        else:
            people.append((str(rng.randrange(10**17, 10**18)), str(rng.randrange(10**17, 10**18))))
    return people


def plan(seed: int, messages: int, run_tag: str) -> Scenario:
    """Draw ``messages`` messages from ``seed``; ``run_tag`` only makes ids unique per run."""
    if not MIN_MESSAGES <= messages <= MAX_MESSAGES:
        raise ValueError(
            f"messages must be between {MIN_MESSAGES} and {MAX_MESSAGES} "
            f"(one per story at least), got {messages}"
        )
    rng = random.Random(seed)
    people = {channel: _people(rng, channel) for channel in CHANNELS}
    crash_at = messages // 2
    early = rng.sample(range(crash_at), len(_BEFORE_RESTART))
    rest = [i for i in range(messages) if i != crash_at and i not in early]
    stories: dict[int, str] = dict(zip(early, _BEFORE_RESTART, strict=True))
    stories.update(zip(rng.sample(rest, len(_ANYWHERE)), _ANYWHERE, strict=True))
    stories[crash_at] = "interrupted"

    faults: dict[str, dict[str, list[Fault | None]]] = {c: {} for c in CHANNELS}
    blocked: dict[str, set[str]] = {c: set() for c in CHANNELS}
    planned: list[PlannedMessage] = []
    for i in range(messages):
        story = stories.get(i)
        # Telegram's wording is the one quoted in the seed issue; WhatsApp's Cloud API
        # is the one that reports statuses after accepting a message.
        channel = rng.choice(CHANNELS)
        channel = {"blocked": "telegram", "failed_after_accept": "whatsapp"}.get(
            story or "", channel
        )
        sender, conversation = rng.choice(people[channel])
        text = rng.choice(NORMAL_TEXTS)
        noise = rng.random()  # drawn for every message, so stories do not shift the stream
        inbound_id = f"{_ID_PREFIX[channel]}-{run_tag}-{i + 1:03d}"
        script: Sequence[Fault | None] = ()
        if story == "blocked":
            # Someone who wrote once, then blocked the bot before the reply went out.
            sender = conversation = str(rng.randrange(7 * 10**9, 8 * 10**9))
            blocked[channel].add(conversation)
        elif story == "too_long":
            text = LONG_REPLY_TEXT
        elif story == "enqueue_failed":
            text = IMAGE_TEXT
        elif story == "no_reply":
            text = NO_REPLY_TEXT
        elif story == "rate_limited":
            script = ["rate_limit"]
        elif story == "timed_out":
            script = ["timeout", "timeout", "timeout"]
        elif story == "retried_after_restart":
            script = ["timeout"]
        elif story is None:
            if noise < 0.10:
                script = ["rate_limit"]
            elif noise < 0.15:
                script = ["unavailable"]
            elif noise < 0.20:
                script = ["timeout"]
        if script:
            faults[channel][delivery_id_for(inbound_id)] = list(script)
        planned.append(PlannedMessage(inbound_id, channel, sender, conversation, text, story))
    return Scenario(
        seed=seed,
        before_restart=planned[:crash_at],
        crash=planned[crash_at],
        after_restart=planned[crash_at + 1:],
        faults=faults,
        blocked=blocked,
        failing_after_accept={
            m.delivery_id for m in planned if m.story == "failed_after_accept"
        },
    )
