from typing import Any

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.web import SlackResponse

import otel_delivery
from otel_delivery import arg


@otel_delivery.inbound(channel="slack", inbound_id=arg("event.ts"), sender=arg("event.user"),
                       conversation=arg("event.channel"))
def on_message(event: dict[str, Any], client: WebClient) -> None:
    reply = run_agent(event["text"])
    send_reply(client, event["channel"], reply)


@otel_delivery.ai_run(agent="support-bot")
def run_agent(text: str) -> str:
    return f"You said: {text}"  # your agent


@otel_delivery.deliver(channel="slack", recipient=arg("channel"))
def send_reply(client: WebClient, channel: str, text: str) -> SlackResponse:
    return client.chat_postMessage(channel=channel, text=text)


def build_app(client: WebClient, signing_secret: str, **options: Any) -> App:
    app = App(client=client, signing_secret=signing_secret, **options)
    app.event("message")(on_message)
    return app
