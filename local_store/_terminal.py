"""Stored text as it may be shown to an operator: on a terminal, and as JSON.

Anything in the store may have come from outside: an API's error text, a recipient
or inbound id, a conversation value. Printed raw, a control sequence in one can
clear the screen, set the window title, or move the cursor up and erase the rows
above, hiding what an operator needs to see. :func:`visible` shows every such
character as an escape instead.

JSON output keeps every value exactly (``json`` escapes control characters itself)
but must stay valid JSON, which has no infinities: :func:`json_safe` writes them as
the strings ``"Infinity"``, ``"-Infinity"`` and ``"NaN"``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["json_safe", "visible"]

# C0 controls, DEL and C1 controls; the Unicode line and paragraph separators; and
# the bidirectional overrides and isolates, which reorder what follows them.
_HIDDEN = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029,
           *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {
    code: (f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}") for code in _HIDDEN
}


def visible(text: str) -> str:
    r"""``text`` with each control character written as its escape.

    >>> visible("ok\x1b[2J\x9b1A\u202e")
    'ok\\x1b[2J\\x9b1A\\u202e'
    """
    return text.translate(_ESCAPES)


def json_safe(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (inf, -inf, nan) as a string;
    lists, tuples and dicts are walked. Everything else is returned as it is.

    >>> json_safe({"a": [1.5, float("inf")], "b": float("nan")})
    {'a': [1.5, 'Infinity'], 'b': 'NaN'}
    """
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
