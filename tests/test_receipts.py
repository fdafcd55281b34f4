"""Receipts: what the platform said after its API accepted a message.

Driven through the README's WhatsApp snippet (``tests/snippets/whatsapp_receipts.py``)
with the Cloud API's real payload shapes: a send answered ``{"messages": [{"id":
"wamid..."}]}``, and status webhooks whose ``statuses`` carry ``id``, ``status``,
``timestamp`` (Unix seconds, as a string), ``recipient_id`` and, when failed,
``errors[]`` with ``code``, ``title``, ``message`` and ``error_data.details``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import otel_delivery
from local_store import health, open_store, summary, trace_story, undelivered
from otel_delivery.cli import main

from .conftest import Traced, make_traced
from .snippets import whatsapp_receipts as wa

ROOT = Path(__file__).resolve().parent.parent
T0 = int(time.time()) - 600  # the statuses' timestamps: ten minutes ago, in seconds
REENGAGEMENT = {
    "code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
    "error_data": {"details": "Message failed to send because more than 24 hours have "
                              "passed since the customer last replied to this number."},
}


class CloudApi:
    """The WhatsApp Cloud API's send answer, without the network."""

    def __init__(self) -> None:
        self.n = 0

    def send_text(self, to: str, text: str) -> dict[str, Any]:
        self.n += 1
        return {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                "messages": [{"id": f"wamid.HBgL{self.n:04d}"}]}


def webhook(*statuses: dict[str, Any]) -> dict[str, Any]:
    return {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
            "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550783881",
                             "phone_number_id": "106540352242922"},
                "statuses": list(statuses)}}]}]}


def status(wamid: str, name: str, seconds_after: int, **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": name, "timestamp": str(T0 + seconds_after),
            "recipient_id": "16505551234", **extra}


@otel_delivery.inbound(channel="whatsapp", inbound_id=otel_delivery.arg("mid"))
def on_message(mid: str, api: CloudApi) -> str:
    response = wa.send_text(api, "16505551234", f"reply to {mid}")
    return str(response["messages"][0]["id"])


def _db(t: Traced) -> Any:
    t.flush()
    return open_store(t.store)


def test_the_readme_shows_the_receipts_snippet_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"<!-- tests/snippets/whatsapp_receipts.py -->\n```python\n(.*?)```",
                      readme, re.S)
    assert shown is not None
    assert shown.group(1) == (ROOT / "tests/snippets/whatsapp_receipts.py").read_text()


def test_accepted_delivered_read_joins_the_original_trace(traced: Traced) -> None:
    wamid = on_message("in-1", CloudApi())
    assert wa.on_webhook(webhook(status(wamid, "sent", 1))) == "ok"
    wa.on_webhook(webhook(status(wamid, "delivered", 2), status(wamid, "read", 30)))

    (send,) = traced.spans("deliver")
    receipts = traced.spans("receipt")
    assert [(s.attributes or {})["otel_delivery.receipt.status"] for s in receipts] == [
        "sent", "delivered", "read"]
    for r in receipts:
        assert r.context.trace_id == send.context.trace_id
        assert r.parent is not None and r.parent.span_id == send.context.span_id
        assert [link.context.span_id for link in r.links] == [send.context.span_id]
        assert (r.attributes or {})["messaging.message.id"] == wamid
        assert r.name == "receipt whatsapp" and r.kind.name == "CONSUMER"
    db = _db(traced)
    story = trace_story(db, inbound_id="in-1")
    assert [e["status"] for e in story.timeline if e["kind"] == "receipt"] == [
        "sent", "delivered", "read"]
    assert story.verdict == "delivered on attempt 1; the platform reports it read"
    (rates,) = summary(db, since_seconds=3600).receipts
    assert (rates.channel, rates.messages, rates.delivered, rates.read) == ("whatsapp", 1, 1, 1)
    db.close()


def test_statuses_out_of_order_and_twice_are_recorded_once_and_judged_by_time(
    traced: Traced,
) -> None:
    wamid = on_message("in-2", CloudApi())
    late_read = webhook(status(wamid, "read", 40))
    wa.on_webhook(late_read)  # the read arrives first
    wa.on_webhook(webhook(status(wamid, "delivered", 5)))
    wa.on_webhook(late_read)  # the platform retries its webhook
    wa.on_webhook(webhook(status(wamid, "delivered", 5)))
    rows = traced.rows("SELECT status, at_ms FROM receipts ORDER BY at_ms")
    assert rows == [{"status": "delivered", "at_ms": (T0 + 5) * 1000},
                    {"status": "read", "at_ms": (T0 + 40) * 1000}]
    db = _db(traced)
    assert trace_story(db, inbound_id="in-2").receipt_status == {
        r["delivery_id"]: "read" for r in traced.rows("SELECT delivery_id FROM attempts")}
    db.close()


def test_a_failure_after_delivered_is_undelivered_and_alerts(traced: Traced) -> None:
    wamid = on_message("in-3", CloudApi())
    wa.on_webhook(webhook(status(wamid, "sent", 1), status(wamid, "delivered", 2)))
    wa.on_webhook(webhook(status(wamid, "failed", 9, errors=[REENGAGEMENT])))

    (failed,) = [s for s in traced.spans("receipt") if s.status.status_code.name == "ERROR"]
    assert (failed.attributes or {})["error.type"] == "131047"
    db = _db(traced)
    report = undelivered(db, since_seconds=3600, grace_seconds=0)
    (item,) = [i for i in report.items if i.source == "receipt"]
    assert (item.reason, item.error_type) == ("failed_after_accept", "131047")
    assert "24 hours" in (item.error_text or "")
    story = trace_story(db, inbound_id="in-3")
    assert story.verdict.startswith(
        "accepted by the API on attempt 1, then failed on the platform: 131047 (Re-engagement")
    assert [r.failed for r in summary(db, since_seconds=3600).receipts] == [1]
    verdict = health(db, since_seconds=3600, grace_seconds=0)
    assert not verdict.ok and verdict.failed_after_accept == 1
    assert any("accepted by the API then reported failed" in r for r in verdict.reasons)
    db.close()
    out = CliRunner().invoke(main, ["undelivered", "--store", str(traced.store), "--since",
                                    "1h", "--grace", "0s"])
    assert "failed_after_accept" in out.output and "1 message failed after" in out.output


def test_a_receipt_for_an_unknown_message_is_kept_and_counted(traced: Traced) -> None:
    wa.on_webhook(webhook(status("wamid.UNKNOWN", "delivered", 3)))
    (row,) = traced.rows("SELECT provider_message_id, status, attempt_span_id FROM receipts")
    assert row == {"provider_message_id": "wamid.UNKNOWN", "status": "delivered",
                   "attempt_span_id": None}
    db = _db(traced)
    assert summary(db, since_seconds=3600).unmatched_receipts == 1
    assert health(db, since_seconds=3600).unmatched_receipts == 1
    (view,) = list(db.query("SELECT matched FROM v_receipts"))
    assert view["matched"] == 0
    db.close()


def test_a_receipt_before_its_attempt_row_still_joins(traced: Traced) -> None:
    wa.on_webhook(webhook(status("wamid.HBgL0001", "delivered", 2)))  # before the send's row
    wamid = on_message("in-5", CloudApi())
    assert wamid == "wamid.HBgL0001"
    db = _db(traced)
    assert summary(db, since_seconds=3600).unmatched_receipts == 0
    story = trace_story(db, inbound_id="in-5")
    assert story.verdict == "delivered on attempt 1; the platform reports it delivered"
    db.close()


def test_receipt_recipients_are_pseudonymised(tmp_path: Path) -> None:
    t = make_traced(tmp_path / "d.db", pseudonymize_key="k" * 32)
    try:
        wa.on_webhook(webhook(status("wamid.X", "sent", 1)))
        (row,) = t.rows("SELECT recipient FROM receipts")
        assert row["recipient"].startswith("p:")
        (span,) = t.spans("receipt")
        assert (span.attributes or {})["otel_delivery.recipient"] == row["recipient"]
        t.handle.shutdown()
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("d.db*"))
        assert b"16505551234" not in stored
    finally:
        t.handle.shutdown()


@pytest.mark.parametrize("payload", [None, {}, {"entry": "junk"}, webhook({"id": "x"})])
def test_a_malformed_webhook_records_nothing_and_the_handler_still_runs(
    traced: Traced, payload: Any
) -> None:
    assert wa.on_webhook(payload) == "ok"
    assert traced.rows("SELECT COUNT(*) AS n FROM receipts") == [{"n": 0}]


def test_prune_keeps_failed_receipts_as_long_as_failures(tmp_path: Path) -> None:
    from local_store import prune

    t = make_traced(tmp_path / "d.db")
    day = 86400
    try:
        old = int(time.time()) - 40 * day
        wa.on_webhook(webhook(
            {"id": "wamid.A", "status": "delivered", "timestamp": str(old)},
            {"id": "wamid.B", "status": "failed", "timestamp": str(old),
             "errors": [REENGAGEMENT]},
            {"id": "wamid.C", "status": "read", "timestamp": str(int(time.time()))},
        ))
        t.flush()
    finally:
        t.handle.shutdown()
    db = open_store(tmp_path / "d.db")
    try:
        result = prune(db, older_than_seconds=30 * day, keep_failed_for_seconds=90 * day)
        assert result.deleted["receipts"] == 1
        kept = [r["provider_message_id"] for r in db.query(
            "SELECT provider_message_id FROM receipts ORDER BY id")]
        assert kept == ["wamid.B", "wamid.C"]
    finally:
        db.close()
