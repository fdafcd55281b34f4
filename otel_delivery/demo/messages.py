"""What travels between the gateway's tasks: the message, not the current context.

Each stage runs in its own asyncio task, so the trace context rides along in
``metadata``, the dict real gateways already attach to a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["InboundMessage", "Reply"]


@dataclass
class InboundMessage:
    """A user's message, as a receiver parsed it from the platform's update."""

    id: str
    channel: str
    sender: str
    conversation: str
    text: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Reply:
    """What the agent wants delivered back to the conversation."""

    delivery_id: str
    inbound_id: str
    channel: str
    recipient: str
    text: str
    metadata: dict[str, str]
    # Raw bytes from an image tool. The queue cannot serialise them: that is the
    # enqueue failure the demo's gateway swallows.
    attachment: bytes | None = None
