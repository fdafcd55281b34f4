"""Which delivery an attempt belongs to, when the gateway gives no ``delivery_id``.

A gateway's reply rarely has an id of its own, yet its retries must be one delivery
numbered 1..k. The rule, in order:

1. an explicit ``delivery_id=`` wins;
2. else, with a ``carrier=``: the first attempt writes a new delivery key into the
   carrier (``otel-delivery-delivery-id``) before it sends, and every later attempt
   given that carrier (the same dict, or a copy saved after the first attempt) joins
   the same delivery, until one delivers (the key is then taken out of the carrier, so
   the next reply sent with it is a new delivery);
3. else, attempts under the same parent span (the run, or the inbound handler) to the
   same channel and recipient are one delivery: a hash of those four;
4. else (no trace context at all) the attempt is a delivery of its own, counted as
   ``orphan_send``.

``part=`` tells apart several messages sent for one reply (a long reply split in
parts, a file and its caption): each part is a delivery of its own, ``<key>.<part>``,
under rules 2 and 3 alike.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry.trace import SpanContext

from . import _attributes as A

__all__ = ["delivery_key"]

_KEY_CHARS = frozenset("0123456789abcdef")


def _valid_key(value: Any) -> bool:
    return isinstance(value, str) and 8 <= len(value) <= 32 and set(value) <= _KEY_CHARS


def _new_key() -> str:
    # Not the random module: an application (or a test framework) may seed it, and a
    # forked child inherits its state, which would hand two replies the same key.
    return os.urandom(8).hex()


def delivery_key(
    carrier: Mapping[str, Any] | None,
    parent: SpanContext | None,
    channel: Any,
    recipient: Any,
) -> tuple[str, str]:
    """The delivery key for an attempt without an explicit id, and the rule that gave
    it (``carrier``, ``parent`` or ``orphan``).

    May write the key into ``carrier`` (rule 2); the caller appends ``part``.
    """
    if carrier is not None:
        found = carrier.get(A.CARRIER_DELIVERY_ID)
        if _valid_key(found):
            return str(found), "carrier"
        if isinstance(carrier, MutableMapping):
            key = _new_key()
            carrier[A.CARRIER_DELIVERY_ID] = key
            return key, "carrier"
    if parent is not None and parent.is_valid:
        digest = hashlib.blake2b(digest_size=8)
        for part in (
            format(parent.trace_id, "032x"), format(parent.span_id, "016x"),
            str(channel), str(recipient),
        ):
            digest.update(part.encode("utf-8", "replace"))
            digest.update(b"\x00")
        return digest.hexdigest(), "parent"
    return _new_key(), "orphan"
