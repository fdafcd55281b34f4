"""The decorators wrap sync and async functions and methods without changing them."""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any, ClassVar

import pytest

import otel_delivery
from otel_delivery import arg
from tests import rawdb

from .conftest import Traced, span_dict


class SendError(Exception):
    pass


@otel_delivery.deliver(channel="telegram", recipient=arg("chat_id"))
def send_sync(chat_id: int, text: str, *, silent: bool = False) -> dict[str, Any]:
    """Send one message."""
    return {"message_id": 101, "chat_id": chat_id, "text": text, "silent": silent}


@otel_delivery.deliver(channel="slack", recipient=arg("channel_id"))
async def send_async(channel_id: str, text: str) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"ok": True, "ts": "1700000000.000100", "channel": channel_id}


class Sender:
    def __init__(self) -> None:
        self.sent: list[str] = []

    @otel_delivery.deliver(channel="discord", recipient=arg("to"))
    def send(self, to: str, text: str) -> str:
        self.sent.append(text)
        return "ok"

    @otel_delivery.deliver(channel="discord", recipient=arg("to"))
    async def asend(self, to: str, text: str) -> str:
        self.sent.append(text)
        return "ok"

    @otel_delivery.deliver(channel="discord")
    @classmethod
    def cls_send(cls, text: str) -> str:
        return f"{cls.__name__}:{text}"

    @otel_delivery.deliver(channel="discord")
    @staticmethod
    def static_send(text: str) -> str:
        return text.upper()


def test_sync_result_and_signature_unchanged(traced: Traced) -> None:
    assert send_sync(42, "hi", silent=True) == {
        "message_id": 101, "chat_id": 42, "text": "hi", "silent": True,
    }
    assert send_sync.__name__ == "send_sync"
    assert send_sync.__doc__ == "Send one message."
    assert inspect.signature(send_sync) == inspect.signature(send_sync.__wrapped__)  # type: ignore[attr-defined]
    (span,) = traced.spans("deliver")
    d = span_dict(span)
    assert d["name"] == "send telegram"
    assert d["kind"] == "CLIENT"
    assert d["attributes"]["otel_delivery.recipient"] == "42"
    assert d["attributes"]["otel_delivery.outcome"] == "delivered"
    assert d["attributes"]["otel_delivery.provider_message_id"] == "101"
    assert d["attributes"]["messaging.operation.type"] == "send"


def test_async_function_stays_a_coroutine_function(traced: Traced) -> None:
    assert inspect.iscoroutinefunction(send_async)
    result = asyncio.run(send_async("C1", "hello"))
    assert result == {"ok": True, "ts": "1700000000.000100", "channel": "C1"}
    (span,) = traced.spans("deliver")
    assert span.attributes is not None
    assert span.attributes["otel_delivery.provider_message_id"] == "1700000000.000100"
    assert span.attributes["otel_delivery.channel"] == "slack"


def test_methods_classmethods_and_staticmethods(traced: Traced) -> None:
    s = Sender()
    assert s.send("u1", "a") == "ok"
    assert asyncio.run(s.asend("u2", "b")) == "ok"
    assert Sender.cls_send("c") == "Sender:c"
    assert s.cls_send("d") == "Sender:d"
    assert Sender.static_send("e") == "E"
    assert s.sent == ["a", "b"]
    recipients = [(sp.attributes or {}).get("otel_delivery.recipient") for sp in traced.spans()]
    assert recipients == ["u1", "u2", None, None, None]


def test_exception_passes_through_unchanged_and_marks_span(traced: Traced) -> None:
    boom = SendError("Bad Request: chat not found")

    @otel_delivery.deliver(channel="telegram", delivery_id="d-1", max_attempts=3)
    def send() -> None:
        raise boom

    with pytest.raises(SendError) as info:
        send()
    assert info.value is boom
    (span,) = traced.spans("deliver")
    d = span_dict(span)
    assert d["status"] == "ERROR"
    assert d["attributes"]["error.type"] == f"{__name__}.SendError"
    assert d["attributes"]["otel_delivery.failure_class"] == "permanent"
    assert d["attributes"]["otel_delivery.final"] is True
    assert d["attributes"]["otel_delivery.outcome"] == "failed"
    (row,) = traced.rows("SELECT * FROM attempts")
    assert row["status"] == "failed"
    assert row["error_text"] == "Bad Request: chat not found"
    assert row["final"] == 1


@pytest.mark.parametrize(
    ("exc", "failure_class", "final"),
    [
        (TimeoutError("read timed out"), "transient", False),
        (ConnectionResetError("reset by peer"), "transient", False),
        (SendError("Too Many Requests: retry after 3"), "transient", False),
        (SendError("Forbidden: bot was blocked by the user"), "permanent", True),
        (SendError("Bad Request: message is too long"), "permanent", True),
    ],
)
def test_failures_are_classified_and_final_follows_attempts(
    traced: Traced, exc: Exception, failure_class: str, final: bool
) -> None:
    @otel_delivery.deliver(channel="telegram", attempt=1, max_attempts=3)
    def send() -> None:
        raise exc

    with pytest.raises(type(exc)):
        send()
    (span,) = traced.spans("deliver")
    assert span.attributes is not None
    assert span.attributes["otel_delivery.failure_class"] == failure_class
    assert span.attributes["otel_delivery.final"] is final


def test_last_transient_attempt_is_final(traced: Traced) -> None:
    @otel_delivery.deliver(channel="telegram", attempt=arg("n"), max_attempts=3)
    def send(n: int) -> None:
        raise TimeoutError("timed out")

    for n in (1, 2, 3):
        with pytest.raises(TimeoutError):
            send(n)
    finals = [(s.attributes or {})["otel_delivery.final"] for s in traced.spans("deliver")]
    assert finals == [False, False, True]


def test_custom_classifier_wins_and_none_falls_back(traced: Traced) -> None:
    def classify(exc: BaseException) -> str | None:
        return "permanent" if "quota" in str(exc) else None

    @otel_delivery.deliver(channel="x", classifier=classify)  # type: ignore[arg-type]
    def send(msg: str) -> None:
        raise RuntimeError(msg)

    for msg in ("quota exceeded", "timed out"):
        with pytest.raises(RuntimeError):
            send(msg)
    classes = [(s.attributes or {})["otel_delivery.failure_class"] for s in traced.spans()]
    assert classes == ["permanent", "transient"]


def test_long_error_text_is_truncated_to_the_limit(tmp_path: Any) -> None:
    from .conftest import make_traced

    t = make_traced(tmp_path / "d.db", error_text_limit=64)
    try:
        @otel_delivery.deliver(channel="x")
        def send() -> None:
            raise RuntimeError("x" * 10_000)

        with pytest.raises(RuntimeError):
            send()
        (row,) = t.rows("SELECT error_text FROM attempts")
        assert len(row["error_text"]) == 64
        assert row["error_text"].endswith("…")
    finally:
        t.handle.shutdown()


def test_failing_or_junk_extractors_never_stop_the_call(traced: Traced) -> None:
    def explode(*args: Any, **kwargs: Any) -> str:
        raise KeyError("no such field")

    @otel_delivery.deliver(
        channel="telegram",
        recipient=explode,
        delivery_id=lambda chat_id: object(),  # junk: not a string or number
        attempt=lambda chat_id: "three",  # junk: not an integer
    )
    def send(chat_id: int) -> int:
        return chat_id * 2

    assert send(21) == 42
    (span,) = traced.spans("deliver")
    attributes = span.attributes or {}
    assert "otel_delivery.recipient" not in attributes
    assert attributes["otel_delivery.outcome"] == "delivered"
    stats = traced.handle.stats()
    assert stats["extractor_error"] == 1
    assert stats["extractor_junk"] == 2
    drops = {r["reason"]: r["count"] for r in traced.rows("SELECT reason, count FROM drops")}
    assert drops["extractor_error"] == 1
    assert drops["extractor_junk"] == 2


def test_arg_naming_a_missing_parameter_fails_at_decoration() -> None:
    with pytest.raises(ValueError, match="has no parameter 'chat'"):

        @otel_delivery.deliver(recipient=arg("chat.id"))
        def send(chat_id: int) -> None: ...


def test_arg_paths_follow_attributes_keys_and_defaults(traced: Traced) -> None:
    class Chat:
        id = 77

    class Message:
        chat = Chat()
        meta: ClassVar[dict[str, str]] = {"conv": "c-9"}

    @otel_delivery.inbound(
        channel=arg("channel"), sender=arg("msg.chat.id"), conversation=arg("msg.meta.conv")
    )
    def handle(msg: Message, channel: str = "signal") -> None:
        return None

    handle(Message())
    (span,) = traced.spans("inbound")
    attributes = span.attributes or {}
    assert attributes["otel_delivery.sender"] == "77"
    assert attributes["otel_delivery.conversation"] == "c-9"
    assert attributes["otel_delivery.channel"] == "signal"
    assert span.name == "process signal"


def test_partial_and_unawaited_coroutines(traced: Traced) -> None:
    async def raw(to: str, text: str) -> str:
        return f"{to}:{text}"

    send = otel_delivery.deliver(channel="email")(functools.partial(raw, "bob"))
    assert asyncio.run(send("hi")) == "bob:hi"
    coro = send("never awaited")
    coro.close()  # a coroutine that never runs starts no span and leaks no context
    assert len(traced.spans("deliver")) == 1


def test_decorators_without_configure_are_harmless() -> None:
    # No configure(): the global (no-op) provider is used and nothing is written.
    assert send_sync(1, "x") == {"message_id": 101, "chat_id": 1, "text": "x", "silent": False}


def test_instrumentation_failure_never_reaches_the_caller(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otel_delivery import _decorators

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("instrumentation bug")

    monkeypatch.setattr(_decorators._Plan, "begin", broken)
    assert send_sync(5, "still works")["chat_id"] == 5
    assert traced.handle.stats()["instrumentation_error"] == 1


def test_pseudonymised_recipients_are_stable_and_unreadable(tmp_path: Any) -> None:
    from .conftest import make_traced

    t = make_traced(tmp_path / "d.db", pseudonymize_key="k" * 32)
    try:
        send_sync(123456789, "a")
        send_sync(123456789, "b")
        rows = t.rows("SELECT recipient FROM attempts")
        assert rows[0]["recipient"] == rows[1]["recipient"]
        assert rows[0]["recipient"].startswith("p:")
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("d.db*"))
        assert b"123456789" not in stored
    finally:
        t.handle.shutdown()


def test_head_sampled_out_calls_are_stored_but_not_exported(tmp_path: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider = TracerProvider(sampler=ALWAYS_OFF)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel = otel_delivery.configure(store=tmp_path / "d.db", tracer_provider=provider)
    try:
        assert send_sync(1, "x")["chat_id"] == 1
        assert otel.force_flush()
        assert exporter.get_finished_spans() == ()
        db = rawdb.connect(tmp_path / "d.db")
        assert db.execute("SELECT status FROM attempts").fetchall() == [("delivered",)]
        db.close()
        assert "not_recorded" not in otel.stats()
    finally:
        otel.shutdown()


def test_message_body_and_raw_ids_are_scrubbed_from_error_texts(tmp_path: Any) -> None:
    from .conftest import make_traced

    t = make_traced(tmp_path / "d.db", pseudonymize_key="k" * 32)
    body = "my secret message about the quarterly numbers, which must never be stored"
    try:
        @otel_delivery.deliver(channel="telegram", recipient=arg("chat_id"), body=arg("text"))
        def send(chat_id: int, text: str) -> None:
            raise RuntimeError(f"Bad Request: chat {chat_id} rejected {text!r} ({text[:40]})")

        with pytest.raises(RuntimeError):
            send(987654321, body)
        (row,) = t.rows("SELECT recipient, error_text FROM attempts")
        assert "[message body]" in row["error_text"]
        assert row["recipient"] in row["error_text"]  # the pseudonym replaces the raw id
        t.handle.shutdown()
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("d.db*"))
        assert b"987654321" not in stored
        assert body[:32].encode() not in stored
        assert b"quarterly" not in stored
    finally:
        t.handle.shutdown()
