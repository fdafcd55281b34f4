"""Checked by mypy in CI (never run): the decorators keep signatures and return types."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from typing_extensions import assert_type

import otel_delivery
from otel_delivery import arg


@otel_delivery.deliver(channel="telegram", recipient=arg("chat_id"))
def send(chat_id: int, text: str) -> dict[str, int]:
    return {"message_id": chat_id}


@otel_delivery.inbound
async def handle(message: str) -> None: ...


class Bot:
    @otel_delivery.ai_run(agent="bot")
    async def run(self, prompt: str) -> str:
        return prompt


assert_type(send(1, "hi"), dict[str, int])
pending = handle("x")
_checked = assert_type(pending, Coroutine[Any, Any, None])
pending.close()
send("not an int", "hi")  # type: ignore[arg-type]
send(1)  # type: ignore[call-arg]


async def use(bot: Bot) -> None:
    assert_type(await bot.run("hello"), str)
    await bot.run(3)  # type: ignore[arg-type]
