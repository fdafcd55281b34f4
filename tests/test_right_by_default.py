"""The one-line form records correct deliveries in the shapes real gateways have.

Each test drives the real decorators, SDK and store through a gateway shape seen in the
wild: a retry helper outside the per-attempt function, metadata copied from the inbound
message, a send function that also carries typing events, a head sampler, no
``configure()`` at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_delivery
from local_store import open_store, summary, trace_story
from otel_delivery import arg
from otel_delivery.cli import main

from .conftest import Traced, make_traced

MINUTE_MS = 60_000


class SendError(Exception):
    """What a channel API raises for a server-side hiccup."""


@dataclass
class Inbound:
    id: str
    chat_id: int
    text: str
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class Reply:
    chat_id: int
    text: str
    kind: str = "text"
    meta: dict[str, str] = field(default_factory=dict)


def _now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def _story(t: Traced, **selector: Any) -> Any:
    t.flush()
    db = open_store(t.store)
    try:
        return trace_story(db, **selector)
    finally:
        db.close()


# -- identity without delivery_id, and giving up ------------------------------------


def _outside_retry_gateway(retryable: Any = None) -> tuple[Any, Any]:
    """The common shape: the inbound handler copies its metadata into the reply, and a
    retry helper calls a per-attempt function three times, then gives up."""
    extra = {} if retryable is None else {"retryable": retryable}

    @otel_delivery.inbound(channel="telegram", inbound_id=arg("msg.id"), carrier=arg("msg.meta"))
    def on_message(msg: Inbound) -> Reply:
        return Reply(msg.chat_id, f"echo {msg.text}", meta=dict(msg.meta))

    @otel_delivery.deliver(channel="telegram", recipient=arg("reply.chat_id"),
                           carrier=arg("reply.meta"), **extra)
    def send_once(reply: Reply) -> dict[str, int]:
        raise SendError("502 Bad Gateway")

    def deliver_with_retries(reply: Reply, tries: int = 3) -> None:
        for _ in range(tries):
            try:
                send_once(reply)
                return
            except SendError:
                continue

    return on_message, deliver_with_retries


def test_an_outside_retry_loop_is_one_delivery_numbered_1_to_3_then_abandoned(
    traced: Traced,
) -> None:
    on_message, deliver_with_retries = _outside_retry_gateway()
    reply = on_message(Inbound("m-1", 42, "hi"))
    deliver_with_retries(reply)

    rows = traced.rows("SELECT delivery_id, attempt, status, final FROM attempts ORDER BY id")
    assert [(r["attempt"], r["status"], r["final"]) for r in rows] == [
        (1, "failed", 0), (2, "failed", 0), (3, "failed", 0),
    ]
    assert len({r["delivery_id"] for r in rows}) == 1
    (delivery,) = _story(traced, inbound_id="m-1").deliveries
    assert delivery.outcome == "pending_retry"  # within the retry window
    later = _story(traced, inbound_id="m-1", now_ms=_now_ms() + 11 * MINUTE_MS)
    assert later.deliveries[0].outcome == "abandoned"
    assert later.verdict.startswith("abandoned: no retry after 3 attempts")


def test_the_gateways_own_retry_predicate_makes_the_failure_final_at_once(
    traced: Traced,
) -> None:
    on_message, deliver_with_retries = _outside_retry_gateway(
        retryable=lambda exc, reply: False  # the gateway's "don't retry this"
    )
    reply = on_message(Inbound("m-2", 42, "hi"))
    deliver_with_retries(reply, tries=1)
    (row,) = traced.rows("SELECT attempt, final, failure_class FROM attempts")
    assert (row["attempt"], row["final"], row["failure_class"]) == (1, 1, "permanent")
    story = _story(traced, inbound_id="m-2")
    assert story.deliveries[0].outcome == "failed"
    assert story.verdict.startswith("failed permanently")


def test_a_retry_predicate_that_raises_falls_back_to_the_classifier(traced: Traced) -> None:
    on_message, deliver_with_retries = _outside_retry_gateway(
        retryable=lambda exc, reply: 1 / 0
    )
    deliver_with_retries(on_message(Inbound("m-3", 42, "hi")), tries=1)
    (row,) = traced.rows("SELECT failure_class, final FROM attempts")
    assert (row["failure_class"], row["final"]) == ("transient", 0)  # 502: transient
    assert traced.handle.stats()["classifier_error"] == 1


def test_parts_of_one_reply_are_separate_deliveries_and_retries_join_their_part(
    traced: Traced,
) -> None:
    @otel_delivery.inbound(channel="slack", inbound_id=arg("msg.id"))
    def on_message(msg: Inbound) -> None:
        for part in ("text", "file"):
            for _ in range(2):  # each part fails once, then goes through
                try:
                    send(msg.chat_id, part)
                    break
                except SendError:
                    continue

    failing: set[str] = {"text", "file"}

    @otel_delivery.deliver(channel="slack", recipient=arg("chat_id"), part=arg("part"))
    def send(chat_id: int, part: str) -> dict[str, str]:
        if part in failing:
            failing.discard(part)
            raise SendError("503 Service Unavailable")
        return {"ts": part}

    on_message(Inbound("m-4", 7, "two parts"))
    rows = traced.rows("SELECT delivery_id, attempt, status FROM attempts ORDER BY id")
    by_delivery: dict[str, list[tuple[int, str]]] = {}
    for r in rows:
        by_delivery.setdefault(r["delivery_id"], []).append((r["attempt"], r["status"]))
    assert sorted(by_delivery.values()) == [[(1, "failed"), (2, "delivered")]] * 2
    assert {d.rsplit(".", 1)[1] for d in by_delivery} == {"text", "file"}


# -- a retry helper in another task, metadata copied before the run ---------------------


def test_a_staticmethod_sender_in_another_task_continues_from_the_run(traced: Traced) -> None:
    class Gateway:
        def __init__(self) -> None:
            self.outbox: asyncio.Queue[Reply] = asyncio.Queue()
            self.fails_left = {1: 2, 2: 0}

        @otel_delivery.inbound(channel="telegram", inbound_id=arg("msg.id"),
                               carrier=arg("msg.meta"))
        async def on_message(self, msg: Inbound) -> None:
            reply = Reply(msg.chat_id, "", meta=dict(msg.meta))  # copied before the run
            await self.run_agent(msg, reply)
            await self.outbox.put(reply)

        @otel_delivery.ai_run(agent="bot", provider="openai", carrier=arg("msg.meta"),
                              reply_carrier=arg("reply.meta"))
        async def run_agent(self, msg: Inbound, reply: Reply) -> str:
            reply.text = f"echo {msg.text}"
            return reply.text

        @staticmethod
        @otel_delivery.deliver(channel="telegram", recipient=arg("reply.chat_id"),
                               carrier=arg("reply.meta"))
        async def send_once(api: dict[int, int], reply: Reply) -> dict[str, int]:
            if api[reply.chat_id] > 0:
                api[reply.chat_id] -= 1
                raise SendError("429 Too Many Requests")
            return {"message_id": reply.chat_id}

        async def sender(self) -> None:  # the retry helper, on its own task
            while True:
                reply = await self.outbox.get()
                for _ in range(3):
                    try:
                        await Gateway.send_once(self.fails_left, reply)
                        break
                    except SendError:
                        await asyncio.sleep(0)
                self.outbox.task_done()

    async def main_loop() -> None:
        gw = Gateway()
        task = asyncio.create_task(gw.sender())
        await asyncio.gather(
            gw.on_message(Inbound("in-1", 1, "a")), gw.on_message(Inbound("in-2", 2, "b"))
        )
        await gw.outbox.join()
        task.cancel()

    asyncio.run(main_loop())
    runs = {
        (s.attributes or {})["otel_delivery.inbound_id"]: s for s in traced.spans("ai_run")
    }
    sends = traced.spans("deliver")
    assert len(sends) == 4  # three attempts for in-1, one for in-2
    for s in sends:
        inbound_id = (s.attributes or {})["otel_delivery.inbound_id"]
        run = runs[inbound_id]
        assert s.context.trace_id == run.context.trace_id
        assert s.parent is not None and s.parent.span_id == run.context.span_id
    assert (runs["in-1"].attributes or {})["gen_ai.provider.name"] == "openai"
    rows = traced.rows(
        "SELECT inbound_id, COUNT(DISTINCT delivery_id) AS d, GROUP_CONCAT(attempt) AS n, "
        "MAX(status = 'delivered') AS ok FROM attempts GROUP BY inbound_id ORDER BY inbound_id"
    )
    assert [(r["inbound_id"], r["d"], r["n"], r["ok"]) for r in rows] == [
        ("in-1", 1, "1,2,3", 1), ("in-2", 1, "1", 1),
    ]


# -- record_if ----------------------------------------------------------------------------


def test_record_if_leaves_typing_and_progress_events_unrecorded(traced: Traced) -> None:
    sent: list[str] = []

    @otel_delivery.deliver(channel="discord", recipient=arg("chat_id"),
                           record_if=lambda chat_id, event: event["type"] == "reply")
    def send_event(chat_id: int, event: dict[str, str]) -> dict[str, str]:
        sent.append(event["type"])
        return {"id": event["type"]}

    for kind in ("typing", "progress", "reply", "typing"):
        assert send_event(9, {"type": kind}) == {"id": kind}
    assert sent == ["typing", "progress", "reply", "typing"]  # every call still ran
    rows = traced.rows("SELECT provider_message_id FROM attempts")
    assert [r["provider_message_id"] for r in rows] == ["reply"]
    assert [s.name for s in traced.spans()] == ["send discord"]


# -- head sampling ------------------------------------------------------------------------


def _sampled_world(tmp_path: Path) -> tuple[otel_delivery.Instrumentation, InMemorySpanExporter]:
    provider = TracerProvider()  # reads OTEL_TRACES_SAMPLER, as any SDK app does
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return otel_delivery.configure(store=tmp_path / "d.db", tracer_provider=provider), exporter


@otel_delivery.inbound(channel="webchat", inbound_id=arg("msg.id"), carrier=arg("msg.meta"))
def _receive(msg: Inbound) -> None:
    _answer(msg)


@otel_delivery.ai_run(agent="bot", carrier=arg("msg.meta"))
def _answer(msg: Inbound) -> str:
    try:
        _send(msg.chat_id)
    except SendError:
        pass
    return "reply"


@otel_delivery.deliver(channel="webchat", recipient=arg("chat_id"))
def _send(chat_id: int) -> None:
    raise SendError("500 Internal Server Error")


def test_a_one_percent_head_sampler_keeps_every_row_and_exports_about_one_percent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    otel, exporter = _sampled_world(tmp_path)
    n = 2000
    try:
        for i in range(n):
            _receive(Inbound(f"w-{i}", i, "x"))
        assert otel.force_flush()
        db = open_store(tmp_path / "d.db")
        counts = [
            db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("inbound_messages", "ai_runs", "attempts")
        ]
        db.close()
        assert counts == [n, n, n]  # 100 % of rows in the store
        exported_traces = {s.context.trace_id for s in exporter.get_finished_spans()}
        # 1 % of 2000 is 20; binomial sd ~4.5, so [4, 45] fails about once in 10^5 runs.
        assert 4 <= len(exported_traces) <= 45
        assert len(exporter.get_finished_spans()) == 3 * len(exported_traces)  # whole traces
    finally:
        otel.shutdown()


def test_an_unsampled_inbound_traceparent_keeps_its_trace_id_and_every_row(
    tmp_path: Path,
) -> None:
    otel, exporter = _sampled_world(tmp_path)
    upstream = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        msg = Inbound("flag-00", 1, "x", meta={"traceparent": f"00-{upstream}-00f067aa0ba902b7-00"})
        _receive(msg)
        assert otel.force_flush()
        assert exporter.get_finished_spans() == ()  # export follows the parent's decision
        db = open_store(tmp_path / "d.db")
        traces = {
            t: db.execute(f"SELECT trace_id FROM {t}").fetchall()
            for t in ("inbound_messages", "ai_runs", "attempts")
        }
        db.close()
        assert traces == {t: [(upstream,)] for t in traces}
        assert "not_recorded" not in otel.stats()
    finally:
        otel.shutdown()


# -- misuse, made visible once -------------------------------------------------------------

_UNCONFIGURED = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    import otel_delivery
    from otel_delivery import arg
    from otel_delivery._state import current

    @otel_delivery.deliver(channel="sms", recipient=arg("to"))
    def send(to):
        return {"id": to}

    for i in range(5):
        assert send(f"+1555{i}") == {"id": f"+1555{i}"}
    print(current().counters.snapshot()["unconfigured_call"])

    class Boom(Exception):
        pass

    from otel_delivery._classify import error_type_name
    print(error_type_name(Boom()))
    """
)


def test_decorators_used_without_configure_warn_exactly_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _UNCONFIGURED], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert done.returncode == 0, done.stderr
    warnings = [
        line for line in done.stderr.splitlines() if "before otel_delivery.configure" in line
    ]
    assert len(warnings) == 1
    count, error_type = done.stdout.split()
    assert count == "5"
    assert error_type == "__main__.Boom"  # qualified like every other class


def test_an_orphan_send_and_a_none_carrier_are_counted_and_health_reports_them(
    tmp_path: Path,
) -> None:
    t = make_traced(tmp_path / "d.db")
    try:
        @otel_delivery.deliver(channel="sms", recipient=arg("to"), carrier=arg("meta"))
        def send(to: str, meta: dict[str, str] | None) -> dict[str, str]:
            return {"id": to}

        send("+15550001", None)  # no carrier, no current span: a trace of its own
        stats = t.handle.stats()
        assert (stats["orphan_send"], stats["carrier_missing"]) == (1, 1)
        t.flush()
    finally:
        t.handle.shutdown()
    result = CliRunner().invoke(main, ["health", "--store", str(tmp_path / "d.db")])
    assert result.exit_code == 1
    (line,) = [ln for ln in result.output.splitlines() if "lost their trace link" in ln]
    assert "orphan_send: 1" in line and "carrier_missing: 1" in line
    ok = CliRunner().invoke(main, ["health", "--store", str(tmp_path / "d.db"), "--max-misuse",
                                   "2"])
    assert ok.exit_code == 0, ok.output


# -- one definition of the totals ----------------------------------------------------------


def test_summary_totals_are_the_same_whatever_the_grouping(traced: Traced) -> None:
    on_message, deliver_with_retries = _outside_retry_gateway()
    deliver_with_retries(on_message(Inbound("s-1", 1, "x")))

    @otel_delivery.deliver(channel="slack", recipient=arg("to"), delivery_id=arg("d"))
    def ok(to: str, d: str) -> dict[str, str]:
        return {"ts": d}

    ok("c1", "d-ok-1")
    ok("c2", "d-ok-2")
    traced.flush()
    totals = []
    for by in ("channel", "error", "status"):
        out = CliRunner().invoke(
            main, ["summary", "--store", str(traced.store), "--by", by, "--json"]
        )
        assert out.exit_code == 0, out.output
        data = json.loads(out.output)
        assert sum(g["attempts"] for g in data["groups"]) == data["total"]["attempts"]
        totals.append((data["total"]["attempts"], data["total"]["deliveries"]))
    assert totals[0] == totals[1] == totals[2]
    assert totals[0][0] == 5
    db = open_store(traced.store)
    try:
        s = summary(db, since_seconds=3600, now_ms=_now_ms() + 11 * MINUTE_MS)
    finally:
        db.close()
    assert (s.total.deliveries["delivered"], s.total.deliveries["abandoned"]) == (2, 1)



def test_a_carrier_shared_by_two_replies_gives_two_deliveries(traced: Traced) -> None:
    meta: dict[str, str] = {}  # the inbound message's own metadata, used for every reply
    calls = {"n": 0}

    @otel_delivery.deliver(channel="telegram", recipient=arg("chat"), carrier=arg("meta"))
    def send(chat: int, text: str, meta: dict[str, str]) -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise SendError("502 Bad Gateway")
        return {"message_id": calls["n"]}

    for text in ("thinking…", "the answer"):
        for _ in range(2):
            try:
                send(7, text, meta)
                break
            except SendError:
                continue
    rows = traced.rows("SELECT delivery_id, attempt, status FROM attempts ORDER BY id")
    assert [(r["attempt"], r["status"]) for r in rows] == [
        (1, "failed"), (2, "delivered"), (1, "delivered"),
    ]
    assert rows[0]["delivery_id"] == rows[1]["delivery_id"] != rows[2]["delivery_id"]
