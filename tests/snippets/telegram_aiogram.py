from aiogram import Bot, Router
from aiogram.types import Message

import otel_delivery
from otel_delivery import arg

router = Router()


@router.message()
@otel_delivery.inbound(channel="telegram", inbound_id=arg("message.message_id"),
                       sender=arg("message.from_user.id"), conversation=arg("message.chat.id"))
async def on_message(message: Message, bot: Bot) -> None:
    reply = await run_agent(message.text or "")
    await send_reply(bot, message.chat.id, reply)


@otel_delivery.ai_run(agent="support-bot")
async def run_agent(text: str) -> str:
    return f"You said: {text}"  # your agent


@otel_delivery.deliver(channel="telegram", recipient=arg("chat_id"))
async def send_reply(bot: Bot, chat_id: int, text: str) -> Message:
    return await bot.send_message(chat_id=chat_id, text=text)
