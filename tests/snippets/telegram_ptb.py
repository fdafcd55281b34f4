from telegram import Bot, Message, Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters

import otel_delivery
from otel_delivery import arg


@otel_delivery.inbound(channel="telegram", inbound_id=arg("update.update_id"),
                       sender=arg("update.effective_user.id"),
                       conversation=arg("update.effective_chat.id"))
async def on_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    reply = await run_agent(update.effective_message.text)
    await send_reply(context.bot, update.effective_chat.id, reply)


@otel_delivery.ai_run(agent="support-bot")
async def run_agent(text: str) -> str:
    return f"You said: {text}"  # your agent


@otel_delivery.deliver(channel="telegram", recipient=arg("chat_id"))
async def send_reply(bot: Bot, chat_id: int, text: str) -> Message:
    return await bot.send_message(chat_id=chat_id, text=text)


def build_application(token: str, base_url: str = "https://api.telegram.org/bot") -> Application:
    app = Application.builder().token(token).base_url(base_url).build()
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, on_message))
    return app
