import otel_delivery
from otel_delivery import arg


def statuses(payload):
    """Every status in a WhatsApp Cloud API webhook payload."""
    return [status for entry in payload.get("entry", [])
            for change in entry.get("changes", [])
            for status in change.get("value", {}).get("statuses", [])]


@otel_delivery.deliver(channel="whatsapp", recipient=arg("to"),
                       message_id=lambda response: response["messages"][0]["id"])
def send_text(client, to, text):
    return client.send_text(to, text)  # the Cloud API answers {"messages": [{"id": "wamid..."}]}


@otel_delivery.receipt(channel="whatsapp", receipts=statuses)
def on_webhook(payload):
    return "ok"  # your handler runs unchanged; the statuses are recorded first
