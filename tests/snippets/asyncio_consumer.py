import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

import otel_delivery
from otel_delivery import arg

MAX_ATTEMPTS = 3


@dataclass
class Outgoing:
    id: str
    chat_id: str
    text: str
    trace: dict[str, str]  # otel_delivery.carry(): the trace travels with the entry


@otel_delivery.inbound(channel="webchat", inbound_id=arg("msg_id"), sender=arg("chat_id"))
async def on_message(outbox: asyncio.Queue[Outgoing], msg_id: str, chat_id: str,
                     text: str) -> None:
    reply = await run_agent(text)
    await enqueue_reply(outbox, f"reply-{msg_id}", chat_id, reply)


@otel_delivery.ai_run(agent="support-bot")
async def run_agent(text: str) -> str:
    return f"You said: {text}"  # your agent


@otel_delivery.enqueue(channel="webchat", delivery_id=arg("reply_id"), recipient=arg("chat_id"))
async def enqueue_reply(outbox: asyncio.Queue[Outgoing], reply_id: str, chat_id: str,
                        text: str) -> None:
    await outbox.put(Outgoing(reply_id, chat_id, text, trace=otel_delivery.carry()))


@otel_delivery.deliver(channel="webchat", recipient=arg("item.chat_id"),
                       delivery_id=arg("item.id"), max_attempts=MAX_ATTEMPTS,
                       carrier=arg("item.trace"))
async def send_once(http: httpx.AsyncClient, url: str, item: Outgoing) -> Any:
    response = await http.post(url, json={"chat_id": item.chat_id, "text": item.text})
    response.raise_for_status()  # 4xx permanent, 429/5xx transient, Retry-After recorded
    return response.json()


async def sender(outbox: asyncio.Queue[Outgoing], http: httpx.AsyncClient, url: str,
                 backoff_seconds: float = 1.0) -> None:
    while True:  # the consumer task
        item = await outbox.get()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                await send_once(http, url, item)
                break
            except Exception as exc:
                if otel_delivery.default_classifier(exc) == "permanent":
                    break
                if attempt < MAX_ATTEMPTS:
                    hint = otel_delivery.retry_after_seconds(exc)
                    await asyncio.sleep(backoff_seconds * 2 ** attempt if hint is None else hint)
        outbox.task_done()
