"""Calls shaped to fool the decorators: awaitables in disguise, raising or huge carriers,
bodies echoed back escaped. The outcome recorded is the one the caller saw; nothing
private reaches the store or the exported spans."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import otel_delivery
from otel_delivery import arg

from .conftest import Traced, make_traced


class Refused(Exception):
    pass


def _statuses(t: Traced) -> list[tuple[str, str | None]]:
    return [(r["status"], r["error_type"]) for r in
            t.rows("SELECT status, error_type FROM attempts ORDER BY id")]


# -- awaitables in disguise -------------------------------------------------------------


def test_a_callable_object_with_an_async_call_records_the_real_failure(traced: Traced) -> None:
    class Sender:
        async def __call__(self, chat_id: int) -> None:
            raise Refused("nope")

    send = otel_delivery.deliver(channel="x", recipient=arg("chat_id"))(Sender())
    with pytest.raises(Refused):
        asyncio.run(send(1))
    assert _statuses(traced) == [("failed", "tests.test_hostile_calls.Refused")]


def test_a_sync_function_returning_a_coroutine_is_judged_when_awaited(traced: Traced) -> None:
    async def api_send(chat_id: int) -> dict[str, int]:
        if chat_id == 2:
            raise Refused("blocked")
        return {"message_id": chat_id}

    @otel_delivery.deliver(channel="x", recipient=arg("chat_id"))
    def send(chat_id: int) -> Any:
        return api_send(chat_id)  # no await: the caller awaits

    async def main() -> None:
        assert await send(1) == {"message_id": 1}
        with pytest.raises(Refused):
            await send(2)

    asyncio.run(main())
    refused = ("failed", "tests.test_hostile_calls.Refused")
    assert _statuses(traced) == [("delivered", None), refused]


def test_a_returned_task_is_returned_as_is_and_judged_when_done(traced: Traced) -> None:
    async def api_send() -> None:
        raise Refused("late")

    @otel_delivery.deliver(channel="x")
    def send() -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(api_send())

    async def main() -> None:
        task = send()
        assert isinstance(task, asyncio.Task)
        with pytest.raises(Refused):
            await task

    asyncio.run(main())
    assert _statuses(traced) == [("failed", "tests.test_hostile_calls.Refused")]


def test_generators_are_refused_when_decorated() -> None:
    async def agen() -> Any:
        yield 1

    def gen() -> Iterator[int]:
        yield 1

    for fn in (agen, gen):
        with pytest.raises(TypeError, match="generator"):
            otel_delivery.deliver(channel="x")(fn)


# -- hostile carriers --------------------------------------------------------------------


class RaisingCarrier(Mapping[str, str]):
    def __getitem__(self, key: str) -> str:
        raise RuntimeError("carrier exploded")

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("carrier exploded")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("carrier exploded")

    def __len__(self) -> int:
        return 1


def test_a_carrier_that_raises_is_ignored_and_the_attempt_kept(traced: Traced) -> None:
    @otel_delivery.deliver(channel="x", recipient=arg("to"), carrier=arg("meta"))
    def send(to: str, meta: Any) -> dict[str, str]:
        return {"id": to}

    assert send("a", RaisingCarrier()) == {"id": "a"}
    assert _statuses(traced) == [("delivered", None)]
    assert traced.handle.stats()["carrier_error"] >= 1


def test_carried_values_get_the_same_cut_as_any_attribute(traced: Traced) -> None:
    huge = "c" * 1_000_000

    @otel_delivery.deliver(channel="x", carrier=arg("meta"))
    def send(meta: dict[str, str]) -> None:
        return None

    send({"otel-delivery-conversation": huge, "otel-delivery-inbound-id": "i" * 5000})
    (span,) = traced.spans("deliver")
    attrs = span.attributes or {}
    assert len(attrs["otel_delivery.conversation"]) == 256  # type: ignore[arg-type]
    (row,) = traced.rows("SELECT inbound_id FROM attempts")
    assert len(row["inbound_id"]) == 256


# -- privacy: escaped bodies, conversations -----------------------------------------------

BODY = 'Zoë said:\n"meet me at 5, the usual place" & bring the keys'


@pytest.mark.parametrize(
    "echo",
    [
        lambda b: f"400 Bad Request: {json.dumps({'text': b})}",  # JSON, \\u00eb and \\n
        lambda b: f"rejected {json.dumps(b, ensure_ascii=False)}",
        lambda b: f"bad message {b!r}",  # repr: an escaped newline
        lambda b: f"GET /send?text={urllib.parse.quote_plus(b)} failed",
        lambda b: f"GET /send?text={urllib.parse.quote(b)} failed",
        lambda b: f"too long: {json.dumps(b)[1:40]}...",  # the start of an escaped form
    ],
)
def test_an_echoed_body_is_scrubbed_in_its_escaped_forms(tmp_path: Path, echo: Any) -> None:
    t = make_traced(tmp_path / "d.db", pseudonymize_key="k" * 32)
    try:
        @otel_delivery.deliver(channel="x", recipient=arg("to"), body=arg("text"))
        def send(to: str, text: str) -> None:
            raise Refused(echo(text))

        with pytest.raises(Refused):
            send("+15550100", BODY)
        (span,) = t.spans("deliver")
        exported = json.dumps(dict(span.attributes or {})) + json.dumps(
            [dict(e.attributes or {}) for e in span.events]
        )
        t.handle.shutdown()
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("d.db*"))
        for secret in ("meet me", "usual place", "meet+me", "meet%20me"):
            assert secret not in exported
            assert secret.encode() not in stored
        assert "[message body]" in exported
    finally:
        t.handle.shutdown()


def test_conversation_ids_are_pseudonymised_with_the_same_key(tmp_path: Path) -> None:
    t = make_traced(tmp_path / "d.db", pseudonymize_key="k" * 32)
    try:
        @otel_delivery.inbound(channel="telegram", inbound_id=arg("mid"),
                               sender=arg("chat"), conversation=arg("chat"))
        def on_message(mid: str, chat: int) -> None:
            send(chat)

        @otel_delivery.deliver(channel="telegram", recipient=arg("chat"))
        def send(chat: int) -> None:
            return None

        on_message("m1", 123456789)
        (inbound,) = t.rows("SELECT sender, conversation FROM inbound_messages")
        assert inbound["conversation"] == inbound["sender"]  # same key, same pseudonym
        assert inbound["conversation"].startswith("p:")
        t.handle.shutdown()
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("d.db*"))
        assert b"123456789" not in stored
    finally:
        t.handle.shutdown()


def test_a_huge_error_text_is_cut_before_it_is_scrubbed(tmp_path: Path) -> None:
    t = make_traced(tmp_path / "d.db", pseudonymize_key="k" * 32)
    try:
        @otel_delivery.deliver(channel="x", recipient=arg("to"), body=arg("text"))
        def send(to: str, text: str, size: int) -> None:
            raise Refused(f"rejected {text!r} " + "x" * size)

        for size in (1_000, 20_000_000):
            with pytest.raises(Refused):
                send("+15550100", BODY, size)
        rows = t.rows("SELECT error_text FROM attempts ORDER BY id")
        assert all(len(r["error_text"]) <= 512 and "meet me" not in r["error_text"]
                   for r in rows)
        assert all("[message body]" in r["error_text"] for r in rows)
    finally:
        t.handle.shutdown()
